"""The generated CRD on the real API server: valid RLVRJobs are accepted and defaulted; invalid ones are
rejected by the API server itself, naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, KubectlError
from tests.operator.harness import rlvrjob


def apply(cluster: ControlPlane, obj: dict[str, Any], *args: str) -> str:
    return cluster.kubectl("apply", "-f", "-", *args, input=yaml.safe_dump(obj)).stdout


def test_valid_job_is_accepted_and_defaulted_by_the_api_server(
    forkrl_cluster: ControlPlane, k8s_namespace: str
) -> None:
    apply(forkrl_cluster, rlvrjob("valid", k8s_namespace), "--dry-run=server")
    stored = json.loads(
        forkrl_cluster.kubectl(
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=yaml.safe_dump(rlvrjob("valid", k8s_namespace, {"objective": {"dual_clip_c": None}})),
        ).stdout
    )
    spec = stored["spec"]
    # Defaults of RLVRJobSpec (and of nested models built by default factories) are filled in.
    assert spec["schedule"]["epochs"] == 1 and spec["schedule"]["mode"] == "sync"
    assert spec["learner"]["optimizer"]["lr"] == 1e-06
    assert spec["eval"]["top_p"] == 0.7 and spec["checkpoint"]["interval"] == 5
    assert spec["cluster"]["learner"]["ranks_per_pod"] == 8 and spec["suspend"] is False
    # Defaults every objective shares are filled; per-objective ones are left to the spec model.
    assert spec["objective"]["token_mean_scope"] == "global"
    assert "loss_agg" not in spec["objective"] and "clip_eps_low" not in spec["objective"]
    # An explicit null that means "off" is kept (dual_clip_c defaults to 10).
    assert spec["objective"]["dual_clip_c"] is None


INVALID = [
    pytest.param({"schedule": {"steps": "ten"}}, r"spec\.schedule\.steps.*must be of type integer", id="wrong-type"),
    pytest.param(
        {"objective": {"rho": 1.5}},
        r"spec\.objective\.rho: Invalid value: rho must be > 0\.0 and <= 1\.0",
        id="rho-out-of-range",
    ),
    pytest.param(
        {"objective": {"name": "archer", "rho": 1.0}},
        r"spec\.objective\.rho: Invalid value: rho must be > 0\.0 and < 1\.0 when name is archer",
        id="archer-rho-is-open",
    ),
    pytest.param(
        {"learner": {"parallel": {"tensor_parallel": 3}}},
        r"spec\.resources\.learner_ranks: Invalid value: resources\.learner_ranks must be a multiple of "
        r"learner\.parallel\.tensor_parallel x pipeline_parallel",
        id="tp-pp-not-dividing",
    ),
    pytest.param(
        {"objective": {"name": "ppo"}}, r'spec\.objective\.name: Unsupported value: "ppo"', id="unknown-objective"
    ),
    pytest.param(
        {"objective": {"name": "dapo"}},
        r"spec\.objective\.rho: Forbidden: rho is not allowed when name is dapo \(only with forking, archer\)",
        id="field-of-another-objective",
    ),
    pytest.param(
        {"schedule": {"mini_batch_size": 3}},
        r"spec\.schedule\.mini_batch_size: Invalid value: schedule\.mini_batch_size must divide",
        id="mini-batch-not-dividing",
    ),
    pytest.param(
        {
            "learner": {"parallel": {"tensor_parallel": 1, "pipeline_parallel": 1}},
            "schedule": {"samples_per_prompt": 3},
        },  # 4 x 3 = 12 sequences over 8 DP ranks
        r"spec\.schedule\.mini_batch_size: Invalid value: .*data-parallel",
        id="dp-not-dividing",
    ),
    pytest.param({"model": {"tiny": {}}}, r"spec\.model: Invalid value: .*exactly one of path", id="two-models"),
    pytest.param({"optimizer_typo": 1}, r'unknown field "spec\.optimizer_typo"', id="unknown-field"),
    pytest.param(
        {"cluster": {"scheduling": {"batch_scheduler": "kueue"}}},
        r"spec\.cluster\.scheduling\.queue_name: .*required with batch_scheduler kueue",
        id="kueue-queue",
    ),
    pytest.param(
        {"cluster": {"rollout": {"memory": "lots"}}}, r"spec\.cluster\.rollout\.memory.*should match", id="bad-quantity"
    ),
    pytest.param({"name": "other"}, r"spec\.name must equal metadata\.name", id="name-mismatch"),
]


@pytest.mark.parametrize(("override", "message"), INVALID)
def test_invalid_jobs_are_rejected_by_the_api_server(
    forkrl_cluster: ControlPlane, k8s_namespace: str, override: dict[str, Any], message: str
) -> None:
    with pytest.raises(KubectlError) as error:
        apply(forkrl_cluster, rlvrjob("bad", k8s_namespace, override), "--dry-run=server")
    assert re.search(message, str(error.value)), str(error.value)


def test_long_or_non_dns_names_are_rejected(forkrl_cluster: ControlPlane, k8s_namespace: str) -> None:
    for name in ("a" * 41, "9lives"):
        with pytest.raises(KubectlError, match=r"metadata\.name must be a DNS-1035 label of at most 40"):
            apply(forkrl_cluster, rlvrjob(name, k8s_namespace), "--dry-run=server")


def test_kubectl_get_shows_the_printer_columns(forkrl_cluster: ControlPlane, k8s_namespace: str) -> None:
    apply(forkrl_cluster, rlvrjob("shown", k8s_namespace, {"objective": {"name": "archer", "rho": 0.8}}))
    status = {"phase": "Running", "step": 12, "reward": 0.375, "accuracy": 0.5, "retries": 1, "reason": "Running"}
    forkrl_cluster.kubectl(
        "patch",
        "rlvr",
        "shown",
        "-n",
        k8s_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    header, row = forkrl_cluster.kubectl("get", "rlvr", "-n", k8s_namespace).stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "STEP", "REWARD", "ACCURACY", "OBJECTIVE", "AGE"]
    assert row.split()[:6] == ["shown", "Running", "12", "0.375", "0.5", "archer"]
    wide = forkrl_cluster.kubectl("get", "rlvrjobs.forkrl.dev", "-n", k8s_namespace, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[6:8] == ["RETRIES", "REASON"]
    forkrl_cluster.kubectl("delete", "rlvr", "shown", "-n", k8s_namespace, "--wait=false")
