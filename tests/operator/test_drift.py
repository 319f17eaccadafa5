"""Drift detection, merge patches, spec-change settling and quantities (pure helpers of the reconciler)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkrl.operator.children import with_hash
from forkrl.operator.drift import is_subset, merge_diff, needs_apply, summarize
from forkrl.operator.quantity import QuantityError, format_bytes, format_cpu, parse_quantity, quantities_equal
from forkrl.operator.spec_changes import changed_paths, rollable, settle

DESIRED = with_hash(
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "exp-rollout", "namespace": "t", "labels": {"forkrl.dev/job": "exp"}},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "rollout",
                            "resources": {"limits": {"cpu": "1.5", "memory": "1024Mi"}},
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ],
                    "volumes": [{"name": "storage", "emptyDir": {}}],
                }
            },
        },
    }
)


def live_copy() -> dict[str, Any]:
    """What the API server returns for DESIRED: server defaults added, quantities canonical."""
    live = copy.deepcopy(DESIRED)
    live["metadata"].update(
        {"uid": "u", "resourceVersion": "7", "generation": 1, "managedFields": [{"manager": "forkrl-operator"}]}
    )
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"] = {"cpu": "1500m", "memory": "1Gi"}
    container["ports"][0]["protocol"] = "TCP"
    container["terminationMessagePath"] = "/dev/termination-log"
    live["status"] = {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1, "conditions": [{"type": "x"}]}
    return live


def test_server_defaults_and_canonical_quantities_are_not_drift() -> None:
    assert is_subset(DESIRED, live_copy())
    assert not needs_apply(DESIRED, summarize(live_copy()))


def test_hand_edits_and_new_manifests_are_drift() -> None:
    scaled = live_copy()
    scaled["spec"]["replicas"] = 5
    assert needs_apply(DESIRED, summarize(scaled))
    extra_container = live_copy()
    extra_container["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert needs_apply(DESIRED, summarize(extra_container))
    stale_hash = live_copy()
    stale_hash["metadata"]["annotations"]["forkrl.dev/desired-hash"] = "old"
    assert needs_apply(DESIRED, summarize(stale_hash))
    assert needs_apply(DESIRED, None)


def test_summary_keeps_only_what_the_reconciler_reads() -> None:
    summary = summarize(live_copy())
    assert "managedFields" not in summary["metadata"]
    assert summary["status"] == {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1}
    assert summary["metadata"]["resourceVersion"] == "7"


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, written independently of merge_diff."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
    max_leaves=12,
)
objects = st.dictionaries(st.sampled_from("abcdef"), json_values.filter(lambda v: v is not None), max_size=5)


@given(objects, objects)
def test_merge_diff_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    # Merge patches cannot set a null inside an object; the operator never writes one.
    def no_nulls(value: Any) -> bool:
        if isinstance(value, dict):
            return all(v is not None and no_nulls(v) for v in value.values())
        return not isinstance(value, list) or all(no_nulls(v) for v in value)

    if not no_nulls(new):
        return
    patch = merge_diff(old, new)
    assert apply_merge_patch(old, patch) == new
    assert (patch == {}) == (old == new)


def test_settle_takes_rollable_changes_and_refuses_the_others() -> None:
    accepted = {
        "rollout": {"replicas": 2, "engine": "vllm"},
        "learner": {"parallel": {"tensor_parallel": 2}},
        "cluster": {"verifier": {"replicas": 1}, "learner": {"ranks_per_pod": 8}},
        "suspend": False,
    }
    current = copy.deepcopy(accepted)
    current["rollout"]["replicas"] = 4
    current["cluster"]["verifier"]["replicas"] = 3
    current["suspend"] = True
    current["learner"]["parallel"]["tensor_parallel"] = 4
    effective, refused = settle(accepted, current)
    assert effective["rollout"]["replicas"] == 4 and effective["cluster"]["verifier"]["replicas"] == 3
    assert effective["suspend"] is True
    assert effective["learner"]["parallel"]["tensor_parallel"] == 2
    assert refused == ["learner.parallel.tensor_parallel (2 -> 4)"]
    assert settle(accepted, accepted) == (accepted, [])
    assert settle(None, current) == (current, [])
    assert changed_paths({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c"]
    assert rollable("cluster.rollout.gpus") and not rollable("rollout.engine") and not rollable("cluster.env.X")

    # Map keys with dots (node selector labels) are one key, not a path: the change rolls as it is.
    placed = {**accepted, "cluster": {"rollout": {"node_selector": {"kubernetes.io/hostname": "a"}}}}
    moved = {**accepted, "cluster": {"rollout": {"node_selector": {"kubernetes.io/hostname": "b"}}}}
    effective, refused = settle(placed, moved)
    assert refused == [] and effective == moved
    assert changed_paths(placed, moved) == ["cluster.rollout.node_selector.kubernetes.io/hostname"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("16Gi", Decimal(16 * 2**30)),
        ("1536Mi", Decimal(1536 * 2**20)),
        ("1e3", Decimal(1000)),
        ("2k", Decimal(2000)),
        ("100M", Decimal(10**8)),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_quantity_formatting_and_equality() -> None:
    assert format_bytes(Decimal(64 * 2**30)) == "64Gi"
    assert format_bytes(Decimal(1536 * 2**20)) == "1536Mi"
    assert format_bytes(Decimal(1000)) == "1000"
    assert format_cpu(Decimal("12")) == "12" and format_cpu(Decimal("1.25")) == "1250m"
    assert quantities_equal("1Gi", "1024Mi") and quantities_equal("0.5", "500m")
    assert not quantities_equal("1G", "1Gi") and not quantities_equal("abc", "abc ")
    with pytest.raises(QuantityError):
        parse_quantity("12 cores")
