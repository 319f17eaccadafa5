"""The CRD (schema + CEL) accepts exactly what the pydantic model accepts.

Hundreds of specs around the edges of every constraint are sent to the real API server (server-side
dry run, strict field validation) and to `RLVRJobResourceSpec`; the two verdicts must agree. The cases
are generated from pydantic's own JSON schema (bounds, enums, patterns), independently of the
converter under test, plus hand-written cases on both sides of every cross-field rule.

Known, documented differences are checked as such, not skipped:
- `learner.reference.enabled` (`bool | "auto"`) has no structural form, so the API server accepts any
  value there and the operator reports a bad one (phase Failed, reason InvalidSpec).
- A null for a field whose default is not None and that is not Optional is dropped (then defaulted) by
  the API server, as for every Kubernetes object; pydantic would reject None. Not generated here.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from forkrl.operator.kube import Kube, KubeError, object_path
from forkrl.operator.resource import RLVRJobResourceSpec
from tests.cluster.controlplane import ControlPlane

BASE: dict[str, Any] = {
    "model": {"path": "/models/m"},
    "data": {"train": [{"name": "train", "path": "/data/t.jsonl"}]},
    "eval": {"datasets": [{"name": "aime", "path": "/data/aime.jsonl"}], "samples_per_problem": 4, "pass_k": [1, 4]},
    "cold_start": {"dataset": {"name": "warm", "arithmetic": {}, "count": 10}},
    "resources": {"learner_ranks": 8},
    "learner": {"parallel": {"tensor_parallel": 2, "pipeline_parallel": 2}},
    "schedule": {"train_batch_size": 8, "mini_batch_size": 4, "samples_per_prompt": 8},
}
Case = tuple[str, dict[str, Any]]
Edit = tuple[str, list[str | int], Any, dict[str, Any]]  # label, path, value, the edited spec


def set_path(spec: dict[str, Any], path: list[str | int], value: Any) -> None:
    node: Any = spec
    for part, following in itertools.pairwise(path):
        if isinstance(part, int):
            node = node[part]
            continue
        if part not in node or node[part] is None:
            node[part] = [{}] if isinstance(following, int) else {}
        node = node[part]
    node[path[-1]] = value


def prepare(spec: dict[str, Any], path: list[str | int]) -> None:
    """Make the surroundings of `path` valid so the mutated field decides the verdict."""
    dotted = ".".join(str(p) for p in path)
    if dotted.startswith("model.tiny"):
        spec["model"] = {"tiny": {}}
        spec.setdefault("cluster", {})["storage"] = {"claim_name": "shared"}
    if dotted.startswith("data.train.0.arithmetic"):
        spec["data"]["train"][0] = {"name": "train", "arithmetic": {}, "count": 10}
    if dotted.startswith("rollout.sampling.dual_temperature"):
        spec["rollout"] = {"sampling": {"dual_temperature": {}}}
    if dotted.startswith("cluster.storage.create_claim"):
        spec.setdefault("cluster", {})["storage"] = {"create_claim": {}}


def resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {**defs[schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            return {**resolve(branches[0], defs), **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


def edge_values(field: dict[str, Any]) -> list[Any]:
    """Values on both sides of a scalar field's bounds, enum and pattern (from pydantic's schema)."""
    kind = field.get("type")
    values: list[Any] = []
    if "enum" in field or "const" in field:
        values += [*list(field.get("enum", [field.get("const")])), "not-a-choice"]
    elif kind in ("integer", "number"):
        step = 1 if kind == "integer" else 1e-6
        for key, inside, outside in (("minimum", 0, -step), ("maximum", 0, step)):
            if key in field:
                values += [field[key] + inside, field[key] + outside]
        if "exclusiveMinimum" in field:
            values += [field["exclusiveMinimum"], field["exclusiveMinimum"] + step]
        if "exclusiveMaximum" in field:
            values += [field["exclusiveMaximum"], field["exclusiveMaximum"] - step]
        if kind == "integer":
            values = [int(v) for v in values if float(v).is_integer()]
    elif kind == "boolean":
        values += [True, False]
    elif kind == "string":
        if "pattern" in field:
            values += ["Not Valid!", "a"]
        if "maxLength" in field:
            values += ["a" * field["maxLength"], "a" * (field["maxLength"] + 1)]
        if "minLength" in field and field["minLength"] > 0:
            values += [""]
    return values


def field_edits(
    schema: dict[str, Any], defs: dict[str, Any], path: list[str | int], base: dict[str, Any]
) -> Iterator[Edit]:
    """One edit per edge value of every scalar field (objective variants: each with its own fields)."""
    schema = resolve(schema, defs)
    if "oneOf" in schema:  # the objective union: every variant's own fields
        for ref in schema["oneOf"]:
            variant = resolve(ref, defs)
            tag = variant["properties"]["name"]["const"]
            start = copy.deepcopy(base)
            set_path(start, path, {"name": tag})
            yield f"{'.'.join(map(str, path))}={tag}", path, {"name": tag}, start
            for name, prop in variant["properties"].items():
                if name != "name":
                    yield from field_edits(prop, defs, [*path, name], start)
        return
    if schema.get("type") == "object" and "properties" in schema:
        for name, prop in schema["properties"].items():
            yield from field_edits(prop, defs, [*path, name], base)
        return
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        items = resolve(schema["items"], defs)
        if items.get("type") == "object":
            yield from field_edits(items, defs, [*path, 0], base)
        return
    for value in edge_values(schema):
        spec = copy.deepcopy(base)
        prepare(spec, path)
        set_path(spec, path, value)
        yield f"{'.'.join(map(str, path))}={value!r}", path, value, spec


def sibling_pairs(edits: list[Edit], per_group: int = 48) -> Iterator[Case]:
    """A switch (an enum or boolean value) together with every edit of a sibling field: what a model's
    own validators typically compare (e.g. `mode` against `max_staleness`)."""
    by_parent: dict[tuple[str | int, ...], list[Edit]] = {}
    for edit in edits:
        by_parent.setdefault(tuple(edit[1][:-1]), []).append(edit)
    for group in by_parent.values():
        # Per sibling field its lowest and highest edge (a validator compares against a bound).
        per_field: dict[str | int, list[Edit]] = {}
        for edit in group:
            per_field.setdefault(edit[1][-1], []).append(edit)
        partners = [edit for edits in per_field.values() for edit in {id(e): e for e in (edits[0], edits[-1])}.values()]
        switches = [e for e in group if isinstance(e[2], bool) or (isinstance(e[2], str) and e[2] != "not-a-choice")]
        combos = [(switch, partner) for switch in switches for partner in partners if partner[1][-1] != switch[1][-1]]
        if len(combos) > per_group:  # the objective's many enums: a fixed sample
            combos = random.Random(len(combos)).sample(combos, per_group)
        for (label, _, _, spec), (other_label, other_path, other_value, _) in combos:
            merged = copy.deepcopy(spec)
            prepare(merged, other_path)
            set_path(merged, other_path, other_value)
            yield f"{label} & {other_label}", merged


CROSS_FIELD: list[tuple[str, dict[str, Any]]] = [
    ("tp x pp = 8 divides 8", {"learner": {"parallel": {"tensor_parallel": 4, "pipeline_parallel": 2}}}),
    ("tp x pp = 6 does not divide 8", {"learner": {"parallel": {"tensor_parallel": 3, "pipeline_parallel": 2}}}),
    ("mini 3 does not divide train 8", {"schedule": {"mini_batch_size": 3}}),
    (
        "dp 8 does not divide 4 x 3",
        {
            "learner": {"parallel": {"tensor_parallel": 1, "pipeline_parallel": 1}},
            "schedule": {"samples_per_prompt": 3},
        },
    ),
    (
        "dp 8 divides 4 x 2",
        {
            "learner": {"parallel": {"tensor_parallel": 1, "pipeline_parallel": 1}},
            "schedule": {"samples_per_prompt": 2},
        },
    ),
    ("off-policy without staleness", {"schedule": {"mode": "one_step_off_policy", "max_staleness": 0}}),
    ("cache 300 > 256 tokens", {"overlong": {"cache_tokens": 300}}),
    ("cache 256 = 256 tokens", {"overlong": {"cache_tokens": 256}}),
    ("cache 300, overlong off", {"overlong": {"cache_tokens": 300, "enabled": False}}),
    ("pass@5 > 4 samples", {"eval": {"pass_k": [1, 5]}}),
    ("pass@0", {"eval": {"pass_k": [0]}}),
    ("cold start without data", {"cold_start": {"enabled": True, "dataset": None}}),
    ("cosine without decay_steps", {"learner": {"optimizer": {"decay_style": "cosine"}}}),
    (
        "decay_steps = warmup",
        {"learner": {"optimizer": {"decay_style": "linear", "decay_steps": 5, "warmup_steps": 5}}},
    ),
    ("min_lr > lr", {"learner": {"optimizer": {"lr": 1e-6, "min_lr": 2e-6}}}),
    (
        "virtual pipeline with pp 1",
        {"learner": {"parallel": {"pipeline_parallel": 1, "tensor_parallel": 2, "virtual_pipeline": 2}}},
    ),
    ("sequence parallel with tp 1", {"learner": {"parallel": {"tensor_parallel": 1, "sequence_parallel": True}}}),
    ("no rollout replicas, no endpoints", {"rollout": {"replicas": 0}}),
    ("no rollout replicas, an endpoint", {"rollout": {"replicas": 0, "endpoints": ["http://r:8000"]}}),
    ("dual temperature and temperature", {"rollout": {"sampling": {"temperature": 1.0, "dual_temperature": {}}}}),
    ("learner temperature 0.7, rollout 1.0", {"learner": {"temperature": 0.7}}),
    ("learner and rollout at 0.7", {"learner": {"temperature": 0.7}, "rollout": {"sampling": {"temperature": 0.7}}}),
    ("rollout temperature unset", {"rollout": {"sampling": {"top_p": 0.9}}}),
    (
        "dual temperature, learner at t_low",
        {"learner": {"temperature": 0.8}, "rollout": {"sampling": {"dual_temperature": {"t_high": 1.2, "t_low": 0.8}}}},
    ),
    (
        "dual temperature, learner at t_high",
        {"learner": {"temperature": 1.2}, "rollout": {"sampling": {"dual_temperature": {"t_high": 1.2}}}},
    ),
    ("clip_cov bounds crossed", {"objective": {"name": "clip_cov", "cov_lower": 5.0, "cov_upper": 1.0}}),
    ("clip_cov lower above default upper", {"objective": {"name": "clip_cov", "cov_lower": 6.0}}),
    (
        "arithmetic min > max ops",
        {"cold_start": {"dataset": {"name": "w", "count": 3, "arithmetic": {"min_ops": 3, "max_ops": 2}}}},
    ),
    (
        "dataset with path and arithmetic",
        {"data": {"train": [{"name": "x", "path": "/p", "arithmetic": {}, "count": 3}]}},
    ),
    ("dataset arithmetic without count", {"data": {"train": [{"name": "x", "arithmetic": {}}]}}),
    ("model with path and tiny", {"model": {"path": "/m", "tiny": {}}}),
    ("model with neither", {"model": {"max_prompt_tokens": 10}}),
    ("tiny model without shared storage", {"model": {"tiny": {}}}),
    (
        "12 ranks, 8 per pod",
        {
            "resources": {"learner_ranks": 12},
            "learner": {"parallel": {"tensor_parallel": 1, "pipeline_parallel": 1}},
            "schedule": {"samples_per_prompt": 12},
        },
    ),
    ("kueue without queue", {"cluster": {"scheduling": {"batch_scheduler": "kueue"}}}),
    ("claim and uri", {"cluster": {"storage": {"claim_name": "a", "uri": "s3://b/c"}}}),
]


def cases() -> list[Case]:
    schema = RLVRJobResourceSpec.model_json_schema()
    edits = [
        edit
        for edit in field_edits(schema, schema["$defs"], [], BASE)
        if not edit[0].startswith(("name=", "learner.reference.enabled"))
    ]
    generated = [(label, spec) for label, _, _, spec in edits]
    pairs = list(sibling_pairs(edits))
    rng = random.Random(7)
    combined = []
    for index in range(120):  # pairs of edits: rules that only fail together
        (first, a), (second, b) = rng.sample(generated, 2)
        merged = copy.deepcopy(a)
        for path, value in _leaves(b, BASE):
            set_path(merged, path, value)
        combined.append((f"pair{index}: {first} & {second}", merged))
    cross = []
    for label, override in CROSS_FIELD:
        spec = copy.deepcopy(BASE)
        for path, value in _leaves(override, {}):
            set_path(spec, path, value)
        cross.append((label, spec))
    return generated + pairs + cross + combined


def _leaves(spec: Any, base: Any, prefix: list[str | int] | None = None) -> Iterator[tuple[list[str | int], Any]]:
    """Paths where `spec` differs from `base` (dicts recursed, other values whole)."""
    prefix = prefix or []
    if isinstance(spec, dict) and isinstance(base, dict) and spec:
        for key, value in spec.items():
            if key not in base or base[key] != value:
                yield from _leaves(value, base.get(key), [*prefix, key])
        return
    yield prefix, spec


def pydantic_accepts(spec: dict[str, Any]) -> bool:
    try:
        RLVRJobResourceSpec.model_validate({**spec, "name": "parity"})
    except ValidationError:
        return False
    return True


def server_accepts(kube: Kube, namespace: str, spec: dict[str, Any]) -> tuple[bool, str]:
    body = {
        "apiVersion": "forkrl.dev/v1alpha1",
        "kind": "RLVRJob",
        "metadata": {"name": "parity", "namespace": namespace},
        "spec": spec,
    }
    try:
        kube.request(
            "POST", object_path("RLVRJob", namespace), body, [("dryRun", "All"), ("fieldValidation", "Strict")]
        )
    except KubeError as err:
        if err.status not in (400, 422):
            raise
        return False, str(err)
    return True, ""


def test_api_server_and_pydantic_agree_on_every_edge(forkrl_cluster: ControlPlane, k8s_namespace: str) -> None:
    all_cases = cases()
    assert len(all_cases) > 400
    kube = Kube.connect(str(forkrl_cluster.kubeconfig))
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            verdicts = list(pool.map(lambda case: server_accepts(kube, k8s_namespace, case[1]), all_cases))
    finally:
        kube.close()
    disagreements = []
    accepted = 0
    for (label, spec), (server, message) in zip(all_cases, verdicts, strict=True):
        model = pydantic_accepts(spec)
        accepted += model
        if model != server:
            disagreements.append(
                f"{label}: pydantic {'accepts' if model else 'rejects'}, API server "
                f"{'accepts' if server else 'rejects: ' + message[:300]}"
            )
    assert not disagreements, "\n".join(disagreements[:30])
    # Both verdicts occur often: the cases sit on the edges, not all on one side.
    assert 0.25 < accepted / len(all_cases) < 0.75


def test_the_reference_rule_is_left_to_the_operator(forkrl_cluster: ControlPlane, k8s_namespace: str) -> None:
    spec = copy.deepcopy(BASE)
    spec["objective"] = {"name": "archer"}
    spec["learner"]["reference"] = {"enabled": False}
    kube = Kube.connect(str(forkrl_cluster.kubeconfig))
    try:
        assert server_accepts(kube, k8s_namespace, spec)[0] is True
        spec["learner"]["reference"] = {"enabled": 5}
        assert server_accepts(kube, k8s_namespace, spec)[0] is True
    finally:
        kube.close()
    assert not pydantic_accepts(spec)
