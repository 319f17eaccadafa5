"""Fixtures of the operator tests: the real control plane (tests/cluster), the `forkrl` chart installed
into it (CRDs, ServiceAccount, ClusterRole), and the operator as a real subprocess authenticated as that
ServiceAccount, so every test also proves the chart's RBAC is enough."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import *  # noqa: F403
from tests.operator.harness import CHART, MONITORING_CRDS, OPERATOR_NAMESPACE, OPERATOR_SA, OperatorProcess


@pytest.fixture(scope="package")
def forkrl_cluster(workload_cluster: ControlPlane) -> ControlPlane:
    """The workload cluster with KubeRay's CRDs, monitoring CRDs and the `forkrl` chart (no operator pod)."""
    cluster = workload_cluster
    cluster.install_kuberay_crds()
    cluster.apply(MONITORING_CRDS)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/servicemonitors.monitoring.coreos.com",
    )
    if cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cluster.create_namespace(OPERATOR_NAMESPACE)
    cluster.helm(
        "upgrade",
        "--install",
        "forkrl",
        str(CHART),
        "-n",
        OPERATOR_NAMESPACE,
        "--set",
        "operator.replicas=0",
        "--set",
        "peering.enabled=true",
        "--set",
        "peering.lifetime=8",
        "--wait",
        "--timeout=120s",
    )
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/rlvrjobs.forkrl.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    return cluster


@pytest.fixture(scope="package")
def operator_kubeconfig(forkrl_cluster: ControlPlane) -> Path:
    """Credentials of the chart's ServiceAccount (the operator runs with exactly its RBAC)."""
    return forkrl_cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA, duration="6h")


@pytest.fixture
def start_operator(forkrl_cluster: ControlPlane, operator_kubeconfig: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts operators for one test (stopped afterwards); args are extra command-line flags."""
    started: list[OperatorProcess] = []
    counter = iter(range(1000))

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> OperatorProcess:
        name = f"forkrl-operator-{next(counter)}-{time.monotonic_ns() % 10**6}"
        operator = OperatorProcess(forkrl_cluster, operator_kubeconfig, name, *args, env=env)
        started.append(operator)
        return operator.start() if wait else operator

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture(scope="module")
def module_operator(request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """One standalone operator for a whole test module, resyncing every `OPERATOR_RESYNC_SECONDS` of the module
    (default 2 s, so that tests see the level-triggered path quickly)."""
    cluster: ControlPlane = request.getfixturevalue("forkrl_cluster")
    kubeconfig: Path = request.getfixturevalue("operator_kubeconfig")
    name = f"forkrl-operator-{request.module.__name__.rsplit('.', 1)[-1]}"
    resync = getattr(request.module, "OPERATOR_RESYNC_SECONDS", 2.0)
    operator = OperatorProcess(cluster, kubeconfig, name, "--standalone", f"--resync-seconds={resync:g}").start()
    yield operator
    operator.stop()


@pytest.fixture
def checkpoint_volume(forkrl_cluster: ControlPlane, k8s_namespace: str) -> Iterator[str]:
    """A PersistentVolume pre-bound to `<namespace>/exp-checkpoints`, so that claim binds and the pods mounting
    it are scheduled (with a claim that never binds the rollout pods stay Pending, and the learner waits)."""
    name = f"pv-{k8s_namespace}"
    forkrl_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "4Gi"},
                "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/forkrl-test-{k8s_namespace}"},
                "claimRef": {"namespace": k8s_namespace, "name": "exp-checkpoints"},
            },
        }
    )
    yield name
    forkrl_cluster.kubectl("delete", "pv", name, "--wait=false", "--ignore-not-found", check=False)
