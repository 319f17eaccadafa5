"""An RLVRJob end to end on real pods: the operator chart's operator pod reconciles it, KubeRay starts the
Ray head (the controller is the RayJob's driver) and a worker pod per learner rank on different nodes,
the HF rollout Deployment serves from two nodes, and checkpoints land on a PersistentVolume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.real_cluster import RealCluster
from tests.cluster.real_deploy import (
    CHECKPOINT_CLASS,
    OPERATOR_NAMESPACE,
    checkpoint_volume,
    host_directories,
    host_path_claims,
    install_operator,
    job_env,
)
from tests.cluster.real_fixtures import report
from tests.multihost.conftest import SHORT_COLD_START, build_cold_start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

STEPS = 3


@pytest.fixture(scope="module")
def forkrl_on_nodes(real_cluster: RealCluster) -> RealCluster:
    real_cluster.cp.start_kuberay()
    install_operator(real_cluster)
    return real_cluster


def rlvrjob(name: str, namespace: str, model_path: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The main job on its cold-start policy: TP=2 over two learner pods, two rollout replicas, 3 steps."""
    spec = {
        "seed": 7,
        "model": {"path": model_path, "max_prompt_tokens": 24, "max_response_tokens": 64},
        "data": {"template": "plain", "train": [
            {"name": "arith-train", "arithmetic": {"min_ops": 2, "max_ops": 3, "max_operand": 9}, "count": 2000,
             "seed": 2}]},
        "objective": {"name": "forking", "rho": 0.2},
        "learner": {
            "parallel": {"tensor_parallel": 2},
            "optimizer": {"lr": 0.0002, "weight_decay": 0.0, "clip_grad": 1.0, "warmup_steps": 2},
            "micro_batch": {"micro_batch_size": 32},
        },
        "resources": {"learner_ranks": 2, "torch_threads": 1, "cpus_per_learner": 0.5},
        "rollout": {"engine": "hf", "replicas": 2, "max_batch_size": 256,
                    "sampling": {"temperature": 1.0, "top_p": 1.0}},
        "verifier": {"workers": 1},
        "overlong": {"cache_tokens": 16},
        "schedule": {"steps": STEPS, "train_batch_size": 16, "samples_per_prompt": 8, "mini_batch_size": 8},
        "checkpoint": {"interval": 1},
        "cluster": {
            "image": "",
            "image_pull_policy": "Never",
            "env": job_env(),
            # Two 2-CPU nodes that are one 2-core machine: throttling each pod to its small request
            # would only slow everything down.
            "cpu_limits": False,
            "mounts": mounts,
            # Each node offers the machine's 2 CPUs; a learner pod requests a whole one (ranks x
            # cpus_per_learner, rounded up), so everything else fits in what is left next to it.
            "controller": {"cpu": "400m", "memory": "3Gi"},
            "learner": {"ranks_per_pod": 1, "memory_per_rank": "3Gi", "shared_memory": "512Mi"},
            "rollout": {"gpus": 0, "cpu": "300m", "memory": "2Gi"},
            "verifier": {"replicas": 1, "cpu": "200m", "memory": "1Gi"},
            "storage": {"create_claim": {"size": "1Gi", "storage_class_name": CHECKPOINT_CLASS,
                                         "access_mode": "ReadWriteMany"}},
        },
    }
    return {"apiVersion": "forkrl.dev/v1alpha1", "kind": "RLVRJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pod_nodes(cluster: RealCluster, namespace: str, component: str) -> set[str]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}")
    return {p["spec"].get("nodeName") for p in pods["items"] if p["status"].get("phase") == "Running"}


def test_an_rlvrjob_trains_on_real_pods_and_succeeds(
    forkrl_on_nodes: RealCluster, real_namespace: str, pytestconfig: pytest.Config
) -> None:
    cluster, ns = forkrl_on_nodes, real_namespace
    # The job's own pods run as the image's user (root): the job namespace is not the restricted one.
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    model = build_cold_start(SHORT_COLD_START)
    mounts = host_path_claims(cluster, ns, host_directories({"model": Path(model)}))
    assert cluster.workdir is not None
    checkpoints = cluster.workdir / "volumes" / ns
    checkpoint_volume(cluster, f"{ns}-checkpoints", checkpoints)
    job = rlvrjob("arith", ns, model, mounts)
    job["spec"]["cluster"]["image"] = cluster.base_image
    start = time.monotonic()
    cluster.cp.apply(job)

    learner_nodes: set[str] = set()
    rollout_nodes: set[str] = set()
    phases: dict[str, float] = {}

    def progress() -> bool:
        learner_nodes.update(pod_nodes(cluster, ns, "learner"))
        rollout_nodes.update(pod_nodes(cluster, ns, "rollout"))
        status = cluster.kubectl_json("get", "rlvrjob", "arith", "-n", ns).get("status", {})
        phase = status.get("phase", "")
        phases.setdefault(phase, time.monotonic() - start)
        if phase == "Failed":
            raise AssertionError(f"the job failed: {status}")
        return phase == "Succeeded"

    try:
        cluster.cp.wait_for(progress, "RLVRJob arith Succeeded", timeout=1200)
    finally:
        seen = ", ".join(f"{k or '-'} {v:.0f}" for k, v in phases.items())
        report(pytestconfig, f"job phases (s after apply): {seen}")
    status = cluster.kubectl_json("get", "rlvrjob", "arith", "-n", ns)["status"]
    assert status["step"] == STEPS
    assert 0.0 <= status["reward"] <= 1.0
    assert learner_nodes == {"node-1", "node-2"}, "the two learner ranks ran on pods of different nodes"
    assert rollout_nodes == {"node-1", "node-2"}, "the rollout replicas ran on different nodes"
    saved = sorted(p.name for p in checkpoints.rglob("step_*") if p.is_dir())
    assert saved, f"no checkpoint on the volume {checkpoints}"
    printed = cluster.kubectl("get", "rlvr", "arith", "-n", ns).stdout
    assert "Succeeded" in printed
    operator_pods = cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE)["items"]
    assert [p["status"]["phase"] for p in operator_pods] == ["Running"]
