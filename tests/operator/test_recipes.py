"""Chart `rlvrjob`'s one-value experiments: every recipe and every model size renders, passes the API
server's schema and rules, and is reconciled by the operator into pods of the sizes it promises; a value the
release sets wins over the recipe; the size files agree with `forkrl plan` run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forkrl.operator.recipes import GPUS_PER_NODE, MODEL_SIZES, OBJECTIVE_RECIPES, PROMPT_TOKENS, RESPONSE_TOKENS
from forkrl.operator.resource import RLVRJobResourceSpec
from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import REPO, OperatorProcess, children, get_job
from tests.operator.test_helm import JOB_CHART, render

# Each recipe with a different size, so three installs cover all of both.
PAIRS = [("forking-top20", "7b"), ("dapo", "8b"), ("archer", "32b")]


def _spec(cluster: ControlPlane, *values: str) -> dict[str, Any]:
    return render(cluster, JOB_CHART, *values)[("RLVRJob", "demo")]["spec"]


@pytest.mark.parametrize("recipe", sorted(OBJECTIVE_RECIPES))
def test_each_recipe_sets_its_objective_and_the_release_wins(forkrl_cluster: ControlPlane, recipe: str) -> None:
    spec = _spec(forkrl_cluster, "--set", f"recipe={recipe}")
    assert spec["objective"] == OBJECTIVE_RECIPES[recipe]["objective"]
    assert "recipe" not in spec and "modelSize" not in spec
    RLVRJobResourceSpec.model_validate({**spec, "name": "demo"})
    # A knob of the recipe's objective, changed by the release (the values schema needs the name with it).
    name = OBJECTIVE_RECIPES[recipe]["objective"]["name"]
    change = json.dumps({"name": name, "loss_agg": "seq-mean-token-sum"})
    overridden = _spec(forkrl_cluster, "--set", f"recipe={recipe}", "--set-json", f"objective={change}")
    assert overridden["objective"] == {**OBJECTIVE_RECIPES[recipe]["objective"], "loss_agg": "seq-mean-token-sum"}


def test_an_unknown_recipe_or_size_is_refused_naming_the_value(forkrl_cluster: ControlPlane) -> None:
    for value in ("recipe=grpo", "modelSize=70b"):
        refused = forkrl_cluster.helm("template", "demo", str(JOB_CHART), "--set", value, check=False)
        assert refused.returncode != 0 and value.split("=")[0] in refused.stderr


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_each_size_is_what_forkrl_plan_recommends(forkrl_cluster: ControlPlane, size: str) -> None:
    chosen = MODEL_SIZES[size]
    planned = subprocess.run(
        [str(Path(sys.executable).with_name("forkrl")), "plan", "--model", chosen.preset, "--nodes", str(chosen.nodes),
         "--gpus-per-node", str(GPUS_PER_NODE), "--gpu-memory-gib", "80", "--no-meta-check",
         "--tokens", str(PROMPT_TOKENS + RESPONSE_TOKENS), "--json"],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=300,
    )
    best = json.loads(planned.stdout)["recommended"]
    spec = _spec(forkrl_cluster, "--set", f"modelSize={size}", "--set", "model.path=/models/m")
    parallel = spec["learner"]["parallel"]
    assert (parallel["tensor_parallel"], parallel["pipeline_parallel"]) == (best["tp"], best["pp"])
    assert spec["learner"]["activation_recompute"] == best["recompute"]
    assert spec["resources"]["learner_ranks"] == chosen.nodes * GPUS_PER_NODE == best["tp"] * best["pp"] * best["dp"]
    assert spec["model"]["path"] == "/models/m"  # the user's model, the recipe's lengths
    assert spec["model"]["max_response_tokens"] == RESPONSE_TOKENS


@pytest.mark.parametrize(("recipe", "size"), PAIRS)
def test_a_recipe_with_a_size_installs_and_is_reconciled_into_pods_of_that_size(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess, recipe: str, size: str
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    # Smaller rollout pods than the recipe's, so that the kwok nodes (2 x 8 GPUs, 32 CPUs, 256 GiB) hold
    # them all: the learner's RayJob is created only once the rollout is available. The release wins.
    cluster.helm("install", "exp", str(JOB_CHART), "-n", ns, "--set", f"recipe={recipe}", "--set",
                 f"modelSize={size}", "--set-string", "cluster.rollout.cpu=2", "--set", "cluster.rollout.memory=8Gi")
    spec = get_job(cluster, ns, "exp")["spec"]  # as the API server stored it: its schema and rules passed
    assert spec["objective"]["name"] == OBJECTIVE_RECIPES[recipe]["objective"]["name"]

    def built() -> bool:
        return {("RayJob", "exp"), ("Deployment", "exp-rollout")} <= set(children(cluster, ns, "exp"))

    cluster.wait_for(built, f"the children of {recipe}/{size}", 120)
    objects = children(cluster, ns, "exp")
    workers = objects[("RayJob", "exp")]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == spec["resources"]["learner_ranks"] // GPUS_PER_NODE
    worker_limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert worker_limits["nvidia.com/gpu"] == str(GPUS_PER_NODE)
    rollout = objects[("Deployment", "exp-rollout")]["spec"]
    assert rollout["replicas"] == spec["rollout"]["replicas"]
    rollout_limits = rollout["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert rollout_limits["nvidia.com/gpu"] == str(spec["cluster"]["rollout"]["gpus"])
    assert (rollout_limits["cpu"], rollout_limits["memory"]) == ("2", "8Gi")
    cluster.helm("uninstall", "exp", "-n", ns, "--wait")
