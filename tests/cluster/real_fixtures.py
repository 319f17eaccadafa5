"""pytest fixtures of the real-node cluster (tests/cluster/real_cluster.py), loaded with the others by
`from tests.cluster.fixtures import *`.

- `real_cluster` (session): RealCluster, the control plane and node-1, node-2 (containerd, kubelet,
  kube-proxy) with the cluster DNS.
- `real_namespace` (function): a fresh namespace enforcing the restricted Pod Security Standard,
  deleted after the test.

Node binaries (`build.sh --nodes`) and the images (tests/cluster/image.py) are built after collection,
before the first test, like the control plane. Tests are skipped, naming what is missing, only when the
machine lacks containerd, runc, the CNI plugins, iptables or root (scripts/setup.sh installs them).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.binaries import BuildError, ClusterBinaries, NodeBinaries, build_node_binaries
from tests.cluster.image import ImageArchive, ImageBuildError, base_image, pause_image
from tests.cluster.nodes import check_node_tools
from tests.cluster.real_cluster import RealCluster

REAL_FIXTURES = frozenset({"real_cluster", "real_namespace"})
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
_namespace_ids = itertools.count()


@dataclass(frozen=True)
class NodeInputs:
    binaries: NodeBinaries
    base: ImageArchive
    pause: ImageArchive


_prepared: dict[str, NodeInputs | Exception] = {}


def prepare(config: pytest.Config | None = None) -> NodeInputs:
    """Build the node binaries and images once per pytest process (progress on the terminal)."""
    if "result" not in _prepared:
        capture = config.pluginmanager.getplugin("capturemanager") if config is not None else None
        context = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        try:
            with context:
                _prepared["result"] = NodeInputs(build_node_binaries(), base_image(), pause_image())
        except (BuildError, ImageBuildError) as error:
            _prepared["result"] = error
    result = _prepared["result"]
    if isinstance(result, Exception):
        raise result
    return result


def skip_reason() -> str | None:
    missing = check_node_tools()
    if missing:
        return f"real nodes need {', '.join(missing)} (scripts/setup.sh installs them)"
    return None


def report(config: pytest.Config, line: str) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n[forkrl real cluster] {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="package")  # stopped after tests/cluster: its nodes idle at ~15% of a core
def real_cluster(k8s_binaries: ClusterBinaries, pytestconfig: pytest.Config) -> Iterator[RealCluster]:
    if reason := skip_reason():
        pytest.skip(reason)
    inputs = prepare(pytestconfig)
    archives = [(inputs.base.path, inputs.base.ref), (inputs.pause.path, inputs.pause.ref)]
    cluster = RealCluster(k8s_binaries, inputs.binaries, archives, inputs.pause.ref, node_count=2)
    cluster.base_image = inputs.base.ref
    cluster.start()
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cluster.phase_seconds.items())
    report(pytestconfig, f"up: {phases}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def real_namespace(real_cluster: RealCluster) -> Iterator[str]:
    name = f"r{os.getpid()}-{next(_namespace_ids)}"
    real_cluster.cp.create_namespace(name)
    real_cluster.kubectl("label", "namespace", name, *[f"{k}={v}" for k, v in RESTRICTED.items()])
    try:
        yield name
    finally:
        real_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
