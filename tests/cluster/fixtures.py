"""pytest fixtures that give tests a real Kubernetes control plane (no mocks of the API server).

tests/cluster/conftest.py loads them; another test folder does the same in its conftest.py:

    from tests.cluster.fixtures import *  # noqa: F403

| fixture            | scope    | what it provides |
|--------------------|----------|------------------|
| `k8s_binaries`     | session  | ClusterBinaries: the built bin/ dir, KubeRay CRDs, kwok stages |
| `control_plane`    | package  | ControlPlane: etcd + kube-apiserver + kube-controller-manager; admin kubeconfig |
| `workload_cluster` | package  | the same ControlPlane plus kube-scheduler, kwok and the nodes in KWOK_NODES |
| `kuberay_operator` | function | workload_cluster + KubeRay CRDs + a KubeRay operator running for this test only |
| `k8s_namespace`    | function | a fresh namespace (its default ServiceAccount exists), deleted after the test |
| `real_cluster`, `real_namespace` | | real nodes: see tests/cluster/real_fixtures.py |

The clusters are package-scoped: each folder that loads these fixtures gets its own (a star import makes
separate fixture definitions anyway), stopped after that folder's last test instead of idling, at ~5-15% of
a core per cluster, through the rest of a 2-core suite.

The binaries are built (tests/cluster/build.sh, a no-op when cached) after collection and before
the first test, outside any per-test timeout; tests that use these fixtures are skipped only when
the go command is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import pytest

from tests.cluster.binaries import BuildError, ClusterBinaries, build_binaries, go_available
from tests.cluster.controlplane import ControlPlane
from tests.cluster.real_fixtures import REAL_FIXTURES, real_cluster, real_namespace
from tests.cluster.real_fixtures import prepare as prepare_real_nodes
from tests.cluster.real_fixtures import skip_reason as real_nodes_skip_reason

__all__ = [
    "CLUSTER_FIXTURES",
    "KWOK_NODES",
    "control_plane",
    "k8s_binaries",
    "k8s_namespace",
    "kuberay_operator",
    "pytest_collection_modifyitems",
    "real_cluster",
    "real_namespace",
    "workload_cluster",
]

# (name, GPUs) of the simulated nodes workload_cluster creates; each has 32 CPUs and 256Gi.
KWOK_NODES: tuple[tuple[str, int], ...] = (("kwok-gpu-0", 8), ("kwok-gpu-1", 8), ("kwok-cpu-0", 0))
CLUSTER_FIXTURES = frozenset(
    {"k8s_binaries", "control_plane", "workload_cluster", "kuberay_operator", "k8s_namespace"} | REAL_FIXTURES
)

_build: dict[str, ClusterBinaries | BuildError] = {}
_namespace_ids = itertools.count()


def _ensure_built(config: pytest.Config | None = None) -> ClusterBinaries:
    """Build once per pytest process; remember a failure so every test reports the same error."""
    if "result" not in _build:
        capture = config.pluginmanager.getplugin("capturemanager") if config is not None else None
        try:
            if capture is not None:
                # Let build.sh's per-binary progress reach the terminal (a cold build takes long).
                with capture.global_and_fixture_disabled():
                    _build["result"] = build_binaries(stream_progress=True)
            else:
                _build["result"] = build_binaries(stream_progress=True)
        except BuildError as error:
            _build["result"] = error
    result = _build["result"]
    if isinstance(result, BuildError):
        raise result
    return result


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = [item for item in items if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if not selected:
        return
    if not go_available():
        reason = "the go command is not installed, so tests/cluster/build.sh cannot build the control plane"
        for item in selected:
            item.add_marker(pytest.mark.skip(reason=reason))
        return
    # A failure is re-raised by the k8s_binaries fixture, so the tests error with build.sh's message.
    with contextlib.suppress(BuildError):
        _ensure_built(config)
    wants_nodes = any(REAL_FIXTURES & set(getattr(item, "fixturenames", ())) for item in selected)
    if wants_nodes and not real_nodes_skip_reason():
        # Likewise for the node binaries and images (a failure is re-raised by the real_cluster fixture).
        with contextlib.suppress(Exception):
            prepare_real_nodes(config)


@pytest.fixture(scope="session")
def k8s_binaries(pytestconfig: pytest.Config) -> ClusterBinaries:
    return _ensure_built(pytestconfig)


@pytest.fixture(scope="package")
def control_plane(k8s_binaries: ClusterBinaries) -> Iterator[ControlPlane]:
    cluster = ControlPlane(k8s_binaries).start(controller_manager=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="package")
def workload_cluster(control_plane: ControlPlane) -> ControlPlane:
    control_plane.start_scheduler()
    control_plane.start_kwok()
    for name, gpus in KWOK_NODES:
        if name not in control_plane.kwok_nodes:
            control_plane.add_kwok_node(name, gpus=gpus)
    return control_plane


@pytest.fixture
def kuberay_operator(workload_cluster: ControlPlane) -> Iterator[ControlPlane]:
    # Per test: a running KubeRay would otherwise reconcile RayJobs that other tests drive by hand.
    workload_cluster.start_kuberay()
    try:
        yield workload_cluster
    finally:
        workload_cluster.stop_component("kuberay")


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t{os.getpid()}-{next(_namespace_ids)}"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
