"""Deleting jobs on the real control plane, with the operator up, down, with and without its finalizer,
and the operator's start-up sweep of children whose job is gone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from forkrl.operator.__main__ import parse_args
from forkrl.operator.cleanup import orphans
from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import OperatorProcess, children, claim, get_job, rlvrjob
from tests.operator.test_reconcile import apply, expected, wait_children

NO_FINALIZER = ("--standalone", "--no-finalizer", "--resync-seconds=2")
RETAINED = {"forkrl.dev/retained": "true"}


def child(kind: str, namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"namespace": namespace, "name": name, "labels": labels}}


def made_by_operator(job: str, **extra: str) -> dict[str, str]:
    return {"forkrl.dev/job": job, "app.kubernetes.io/managed-by": "forkrl-operator", **extra}


def test_orphans_are_children_of_missing_jobs_made_by_the_operator_and_never_retained_claims() -> None:
    listed = [
        child("Deployment", "a", "gone-rollout", made_by_operator("gone")),
        child("Deployment", "a", "live-rollout", made_by_operator("live")),
        child("Deployment", "b", "live-rollout", made_by_operator("live")),  # same name, other namespace
        child("PersistentVolumeClaim", "a", "gone-checkpoints", made_by_operator("gone", **RETAINED)),
        child("ConfigMap", "a", "users-own", {"forkrl.dev/job": "gone"}),  # labelled by hand, not ours
    ]
    deleting = child("Service", "a", "gone-rollout", made_by_operator("gone"))
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    found = orphans([*listed, deleting], [("a", "live")])
    assert [(c["kind"], c["metadata"]["namespace"], c["metadata"]["name"]) for c in found] == [
        ("Deployment", "a", "gone-rollout"),
        ("Deployment", "b", "live-rollout"),
    ]


def test_no_finalizer_needs_standalone() -> None:
    assert parse_args(["--standalone", "--no-finalizer"]).finalizer is False
    assert parse_args([]).finalizer is True
    with pytest.raises(SystemExit):
        parse_args(["--no-finalizer"])


def finalizers(cluster: ControlPlane, namespace: str, name: str) -> list[str]:
    return get_job(cluster, namespace, name)["metadata"].get("finalizers") or []


def test_without_the_finalizer_a_job_deleted_while_the_operator_is_down_goes_with_its_children(
    forkrl_cluster: ControlPlane, k8s_namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    # A job made under the finalizer...
    with_finalizer = start_operator("--standalone", "--resync-seconds=2")
    apply(cluster, rlvrjob("exp", ns))
    wait_children(cluster, ns, "exp", expected("exp"))
    assert finalizers(cluster, ns, "exp") == ["forkrl.dev/finalizer"]
    with_finalizer.stop()
    # ...loses it to an operator running without one.
    without = start_operator(*NO_FINALIZER)
    cluster.wait_for(lambda: finalizers(cluster, ns, "exp") == [], "the operator to remove its finalizer", 30)
    # kopf's timers would add a finalizer; the operator's own resync loop still repairs what no event reports.
    edited = {"data": {"spec.yaml": "edited: by hand\n"}}
    cluster.kubectl("patch", "configmap", "exp-config", "-n", ns, "--type=merge", "-p", json.dumps(edited))
    cluster.wait_for(
        lambda: "edited" not in cluster.kubectl_json("get", "configmap", "exp-config", "-n", ns)["data"]["spec.yaml"],
        "the resync to revert the hand edit",
        30,
    )
    assert finalizers(cluster, ns, "exp") == []

    without.stop()
    cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=true", "--timeout=20s")
    # The garbage collector deletes the children through their owner references.
    cluster.wait_for(lambda: children(cluster, ns, "exp") == {}, "the garbage collector to delete the children", 60)


def test_with_the_finalizer_a_deletion_waits_for_the_operator_and_completes_when_it_is_back(
    forkrl_cluster: ControlPlane, k8s_namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    operator = start_operator("--standalone", "--resync-seconds=2")
    apply(cluster, rlvrjob("exp", ns))
    before = wait_children(cluster, ns, "exp", expected("exp"))
    operator.stop()
    cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=false")
    time.sleep(5)
    waiting = get_job(cluster, ns, "exp")["metadata"]
    assert waiting["deletionTimestamp"] and waiting["finalizers"] == ["forkrl.dev/finalizer"]
    assert set(children(cluster, ns, "exp")) == set(before)  # the garbage collector waits for the owner
    start_operator("--standalone", "--resync-seconds=2")
    cluster.wait_for(
        lambda: cluster.kubectl("get", "rlvr", "exp", "-n", ns, "--ignore-not-found", "-o", "name").stdout == "",
        "the deletion to complete once the operator is back",
        60,
    )
    cluster.wait_for(lambda: children(cluster, ns, "exp") == {}, "the children to be deleted", 60)


def test_at_start_the_operator_deletes_children_of_deleted_jobs_but_never_a_retained_claim(
    forkrl_cluster: ControlPlane,
    k8s_namespace: str,
    checkpoint_volume: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    operator = start_operator(*NO_FINALIZER)
    apply(cluster, rlvrjob("exp", ns, {"cluster": {"storage": {"create_claim": {"size": "1Gi"}}}}))
    wait_children(cluster, ns, "exp", expected("exp"))
    kept = claim(cluster, ns)
    assert kept is not None
    operator.stop()
    # The job goes while the operator is down and the garbage collector is not running (or behind).
    cluster.stop_component("kube-controller-manager")
    try:
        cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=true", "--timeout=20s")
        # A child that lost its owner reference, and an object a user labelled with the job's name.
        lost = {"forkrl.dev/job": "exp", "app.kubernetes.io/managed-by": "forkrl-operator"}
        for name, labels in (("exp-lost", lost), ("users-own", {"forkrl.dev/job": "exp"})):
            meta = {"name": name, "namespace": ns, "labels": labels}
            cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
        time.sleep(3)
        left = set(children(cluster, ns, "exp"))
        assert expected("exp") | {("ConfigMap", "exp-lost"), ("ConfigMap", "users-own")} <= left  # nobody cleaned up

        start_operator(*NO_FINALIZER)
        cluster.wait_for(
            lambda: set(children(cluster, ns, "exp")) == {("ConfigMap", "users-own")},
            "the operator to delete the children of the deleted job",
            60,
        )
        still = claim(cluster, ns)
        assert still is not None and still["metadata"]["uid"] == kept["metadata"]["uid"]
        assert "deletionTimestamp" not in still["metadata"]
    finally:
        cluster.start_controller_manager()
