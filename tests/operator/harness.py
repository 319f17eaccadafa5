"""Helpers of the operator tests and of bench/operator.py: job manifests, the operator as a subprocess,
reading children and status back."""

from __future__ import annotations

import copy
import json
import re
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.cluster.controlplane import ControlPlane
from tests.cluster.processes import ManagedProcess, free_ports, http_ok

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "forkrl"
OPERATOR_NAMESPACE = "forkrl-system"
OPERATOR_SA = "forkrl"
CHILD_KINDS = ("rayjob", "deployment", "service", "configmap", "serviceaccount", "role", "rolebinding",
               "networkpolicy")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# A job that fits the kwok nodes (two with 8 GPUs, one CPU node; 32 CPUs and 256Gi each): one learner
# pod with 8 ranks on one GPU node, two 1-GPU rollout replicas on the other (node selectors: left to the
# scheduler, the rollout replicas would take a GPU of each node and the 8-GPU learner pod would not fit).
BASE_SPEC: dict[str, Any] = {
    "model": {"path": "/models/qwen2.5-math-1.5b"},
    "data": {"train": [{"name": "dapo", "path": "/data/dapo-math-17k.parquet"}]},
    "objective": {"name": "forking", "rho": 0.2},
    "resources": {"learner_ranks": 8, "gpus_per_learner": 1},
    "learner": {"parallel": {"tensor_parallel": 2, "pipeline_parallel": 2}},
    "schedule": {"train_batch_size": 8, "mini_batch_size": 4, "samples_per_prompt": 8},
    "rollout": {"engine": "vllm", "replicas": 2},
    "cluster": {
        "image": "registry.test/forkrl:t1",
        "controller": {"cpu": "2", "memory": "4Gi"},
        "learner": {
            "memory_per_rank": "8Gi",
            "shared_memory": "1Gi",
            "node_selector": {"kubernetes.io/hostname": "kwok-gpu-0"},
        },
        "rollout": {"gpus": 1, "cpu": "2", "memory": "8Gi", "node_selector": {"kubernetes.io/hostname": "kwok-gpu-1"}},
        "verifier": {
            "replicas": 1,
            "cpu": "2",
            "memory": "2Gi",
            "node_selector": {"kubernetes.io/hostname": "kwok-cpu-0"},
        },
    },
}


def rlvrjob(name: str, namespace: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "forkrl.dev/v1alpha1",
        "kind": "RLVRJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": deep_merge(BASE_SPEC, spec or {}),
    }


class OperatorProcess:
    """`python -m forkrl.operator` as a subprocess (its own process group), with its metrics endpoint."""

    def __init__(
        self, cluster: ControlPlane, kubeconfig: Path, name: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.metrics_port, self.liveness_port = free_ports(2)
        argv = [
            sys.executable,
            "-m",
            "forkrl.operator",
            f"--kubeconfig={kubeconfig}",
            "--bind=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--liveness-port={self.liveness_port}",
            *args,
        ]
        process_env = {**cluster.env, **(env or {})}
        self.process = ManagedProcess(name, argv, cluster.log_dir / f"{name}.log", env=process_env, cwd=REPO)

    def start(self, timeout: float = 120.0) -> OperatorProcess:
        self.process.start()
        deadline = time.monotonic() + timeout
        while not http_ok(f"http://127.0.0.1:{self.liveness_port}/healthz"):
            if not self.process.running():
                raise self.process.failure("exited before it was live")
            if time.monotonic() > deadline:
                raise self.process.failure(f"was not live within {timeout:.0f} s")
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL the whole process group (no cleanup, like a node failure)."""
        import os
        import signal

        if self.process.pid is not None and self.process.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process._proc.wait(timeout=10)  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def metrics(self) -> dict[str, float]:
        """Sample name with labels (as printed) -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def counter(self, name: str, **labels: str) -> float:
        """Sum of a counter's samples whose labels include `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})?", key)
            if match is None or match.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def log(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)


# prometheus-operator's PodMonitor and ServiceMonitor, reduced to what the API server needs to serve them
# (the operator creates PodMonitors, the chart a ServiceMonitor/PodMonitor when asked).
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1], "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }
    for kind, plural in (("PodMonitor", "podmonitors"), ("ServiceMonitor", "servicemonitors"))
]


def children(cluster: ControlPlane, namespace: str, job: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object of everything labelled forkrl.dev/job=<job> in the namespace."""
    items = cluster.kubectl_json(
        "get", ",".join(CHILD_KINDS), "-n", namespace, "-l", f"forkrl.dev/job={job}", "--show-managed-fields"
    )["items"]
    return {(item["kind"], item["metadata"]["name"]): item for item in items}


def claim(cluster: ControlPlane, namespace: str, name: str = "exp-checkpoints") -> dict[str, Any] | None:
    """The PersistentVolumeClaim, or None."""
    found = cluster.kubectl("get", "pvc", name, "-n", namespace, "-o", "json", "--ignore-not-found").stdout
    return json.loads(found) if found.strip() else None


def get_job(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "rlvrjob", name, "-n", namespace)


def wait_phase(
    cluster: ControlPlane, namespace: str, name: str, phase: str, timeout: float = 60.0, reason: str | None = None
) -> dict[str, Any]:
    def reached() -> bool:
        status = get_job(cluster, namespace, name).get("status") or {}
        return status.get("phase") == phase and (reason is None or status.get("reason") == reason)

    try:
        cluster.wait_for(reached, f"RLVRJob {namespace}/{name} phase {phase}", timeout)
    except Exception as err:
        status = get_job(cluster, namespace, name).get("status") or {}
        status.pop("acceptedSpec", None)
        raise AssertionError(f"{err}\nstatus now: {json.dumps(status)[:3000]}") from None
    return get_job(cluster, namespace, name)


def patch_ray_job_status(cluster: ControlPlane, namespace: str, name: str, **status: str) -> None:
    """Advance a RayJob as KubeRay would (no Ray dashboard answers here), through the status subresource.
    A finished job gets its endTime, which KubeRay's shutdown-after-finish reads."""
    if status.get("jobDeploymentStatus") in ("Complete", "Failed"):
        status.setdefault("endTime", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    cluster.kubectl(
        "patch",
        "rayjob",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in job["status"]["conditions"] if c["type"] == type_)


# ----------------------------------------------------------------------------- load
# A job whose pods are tiny and CPU-only, so that dozens fit the three kwok nodes (no KubeRay runs in
# the load tests, so the RayJob makes no pods).
SMALL_SPEC: dict[str, Any] = {
    "rollout": {"replicas": 1},
    "cluster": {
        "rollout": {"gpus": 0, "cpu": "10m", "memory": "32Mi", "node_selector": {}},
        "verifier": {"cpu": "10m", "memory": "32Mi", "node_selector": {}},
    },
}
CHILDREN_PER_JOB = 10


def small_jobs(namespace: str, count: int, prefix: str = "load") -> list[dict[str, Any]]:
    return [rlvrjob(f"{prefix}-{index}", namespace, SMALL_SPEC) for index in range(count)]


def count_children(cluster: ControlPlane, namespace: str) -> int:
    """Children of every job in the namespace (names only: cheap to list)."""
    out = cluster.kubectl("get", ",".join(CHILD_KINDS), "-n", namespace, "-l", "forkrl.dev/job", "-o", "name").stdout
    return len(out.split())


def create_and_wait(cluster: ControlPlane, namespace: str, count: int, timeout: float, prefix: str = "load") -> float:
    """Seconds from `kubectl apply` of `count` jobs (one request stream) to all their children existing."""
    text = "\n---\n".join(json.dumps(job) for job in small_jobs(namespace, count, prefix))
    start = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=text, timeout=timeout)
    cluster.wait_for(
        lambda: count_children(cluster, namespace) >= count * CHILDREN_PER_JOB, f"children of {count} jobs", timeout
    )
    return time.monotonic() - start


def delete_and_wait(cluster: ControlPlane, namespace: str, timeout: float) -> float:
    """Seconds from deleting every RLVRJob of the namespace to no child being left."""
    start = time.monotonic()
    cluster.kubectl("delete", "rlvrjobs", "--all", "-n", namespace, "--wait=false", timeout=timeout)
    cluster.wait_for(
        lambda: (
            count_children(cluster, namespace) == 0
            and not cluster.kubectl("get", "rlvrjobs", "-n", namespace, "-o", "name").stdout.strip()
        ),
        "every job and child to be gone",
        timeout,
    )
    return time.monotonic() - start
