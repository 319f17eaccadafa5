"""Putting forkrl on the real-node cluster: host directories as read-only volumes, a checkpoint volume,
the operator chart with the operator as a real pod, and the main job as an RLVRJob.

The test image (tests/cluster/image.py) is Debian with Python; forkrl's code, its virtual environment
and the interpreter the environment was made from come from this machine, mounted read-only at the
same paths (so the editable install and the environment's interpreter resolve). They are hostPath
PersistentVolumes bound to claims, because a pod under the restricted Pod Security Standard may mount
a claim but not a hostPath. Every node is this machine, so a hostPath volume is the same directory on
every node, which is what a ReadWriteMany volume gives a real cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.cluster.real_cluster import RealCluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "forkrl"
JOB_CHART = REPO / "helm" / "rlvrjob"
OPERATOR_NAMESPACE = "forkrl-system"
CHECKPOINT_CLASS = "forkrl-test-local"
# What the operator and the job's pods need on PATH and in the environment to use the mounted venv.
VENV = Path(sys.prefix)
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_directories(extra: dict[str, Path] | None = None) -> dict[str, Path]:
    """name -> host directory every forkrl container mounts read-only at the same path."""
    dirs = {"code": REPO, "venv": VENV, "python": Path(sys.base_prefix).resolve()}
    return {**dirs, **(extra or {})}


def claim_name(name: str) -> str:
    return f"host-{name}"


def host_path_claims(cluster: RealCluster, namespace: str, directories: dict[str, Path]) -> list[dict[str, Any]]:
    """A hostPath PersistentVolume pre-bound to a read-only claim in `namespace` per directory; returns
    the RLVRJob `cluster.mounts` entries that mount them."""
    objects: list[dict[str, Any]] = []
    for name, path in directories.items():
        # PersistentVolumes are cluster-wide; one per (namespace, directory), named so two never clash.
        pv = f"{namespace}-{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"
        objects.append({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"forkrl.dev/test-namespace": namespace}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim_name(name)},
            },
        })
        objects.append({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name(name), "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        })
    cluster.cp.apply(objects)
    return [
        {"name": name, "claim_name": claim_name(name), "mount_path": str(path)} for name, path in directories.items()
    ]


def checkpoint_volume(cluster: RealCluster, name: str, directory: Path) -> None:
    """An unbound hostPath volume of StorageClass CHECKPOINT_CLASS: the claim the operator creates for a
    job (cluster.storage.create_claim) binds to it, as it would to a provisioned volume."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # job pods may run as any user
    cluster.cp.apply({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "2Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": CHECKPOINT_CLASS,
            "hostPath": {"path": str(directory), "type": "Directory"},
        },
    })


def install_operator(cluster: RealCluster, replicas: int = 1) -> None:
    """`helm install` of the forkrl chart into a restricted namespace, the operator a real pod."""
    cp = cluster.cp
    if cp.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cp.create_namespace(OPERATOR_NAMESPACE)
        cp.kubectl("label", "namespace", OPERATOR_NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
                   "pod-security.kubernetes.io/enforce-version=latest")
    mounts = host_path_claims(cluster, OPERATOR_NAMESPACE, host_directories())
    repository, tag = cluster.base_image.rsplit(":", 1)
    volumes = [{"name": m["name"], "persistentVolumeClaim": {"claimName": m["claim_name"], "readOnly": True}}
               for m in mounts]
    volume_mounts = [{"name": m["name"], "mountPath": m["mount_path"], "readOnly": True} for m in mounts]
    env = [{"name": "PATH", "value": PATH}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    cp.helm(
        "upgrade", "--install", "forkrl", str(CHART), "--namespace", OPERATOR_NAMESPACE,
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
        "--set", f"operator.replicas={replicas}", "--set", f"peering.enabled={'true' if replicas > 1 else 'false'}",
        "--set", "operator.resyncSeconds=5",
        "--set-json", f"operator.extraEnv={json.dumps(env)}",
        "--set-json", f"operator.extraVolumes={json.dumps(volumes)}",
        "--set-json", f"operator.extraVolumeMounts={json.dumps(volume_mounts)}",
        "--set-json", 'operator.resources={"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}',
        "--wait", "--timeout", "180s",
        timeout=240,
    )


def job_env() -> dict[str, str]:
    return {
        "PATH": PATH,
        "HOME": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",  # as scripts/run-tests.sh sets for the suite's own processes
        "FORKRL_TEST_PID": str(os.getpid()),
    }
