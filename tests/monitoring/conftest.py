"""Fixtures of the monitoring tests: the built helm (tests/cluster; no control plane is started) and promtool."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.cluster.binaries import ClusterBinaries
from tests.cluster.fixtures import *  # noqa: F403
from tests.monitoring.chart import Chart


@pytest.fixture(scope="session")
def chart(k8s_binaries: ClusterBinaries, tmp_path_factory: pytest.TempPathFactory) -> Chart:
    return Chart(k8s_binaries.path("helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Debian's promtool (package `prometheus`, installed by scripts/setup.sh)."""
    found = shutil.which("promtool")
    if found:
        return Path(found)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("promtool is missing but installable here: run `bash scripts/setup.sh`")
    pytest.skip("promtool is missing and scripts/setup.sh cannot install it (needs root and apt-get)")
