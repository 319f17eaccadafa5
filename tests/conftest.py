"""Suite-wide pytest configuration: GPU tests skip without CUDA; the Hypothesis `ci` profile; the two lanes
of `make test` (a pytest-xdist scheduler)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# The suite shares a couple of cores with other work: Hypothesis's wall-clock deadline and its too_slow
# health check would then measure the machine's load, not the code. derandomize draws the same examples on
# every run (a failure reproduces as is; no example database is read or written). Loaded here, before any
# test module is imported, so every @settings(...) of a test inherits it. `pytest --hypothesis-profile=
# default` brings Hypothesis's own random search back for local exploration.
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)
settings.load_profile("ci")


# `make test` runs two xdist workers (scripts/run-tests.sh, `--dist loadscope`) in two lanes. The modules
# that take the whole machine run one after another in one lane: network namespaces with fixed 198.18/15
# addresses, real nodes, the images and the cold-start cache they build (tests/cluster's real-node, image and
# build modules, tests/multihost; the kwok control planes of test_controlplane.py can run beside), and modules
# marked `exclusive` (the main job's learning run: minutes of CPU, run first in that lane, see
# pytest_collection_modifyitems). Every other
# module, `slow` ones included, is one unit of work for the other lane (its module fixtures start once).
# The suite is CPU-bound on 2 cores, so what matters is that the two lanes end together (the split follows
# a single-process profile of every test's wall and CPU time).
SERIAL_PREFIXES = ("tests/cluster/test_real_", "tests/cluster/test_image.py", "tests/cluster/test_build_script.py",
                   "tests/multihost/")
SERIAL_LANE = "serial"


def serial_modules(root: Path) -> set[str]:
    """Test modules of the serial lane, as node-id paths (read from the files: the xdist controller does
    not collect)."""
    modules = set()
    for path in (root / "tests").rglob("test_*.py"):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(SERIAL_PREFIXES) or "pytest.mark.exclusive" in path.read_text():
            modules.add(relative)
    return modules


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    serial = serial_modules(config.rootpath)

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SERIAL_LANE if path in serial else path

    # Collection order puts tests/cluster first, so the serial lane (the longest unit) starts at once;
    # xdist's default reorder (units by test count) would start it late and leave it running alone.
    config.option.loadscopereorder = False
    return Lanes(config, log)


TIMELINE_ENV = "FORKRL_TEST_TIMELINE"
"""A file path: every test appends one JSON line (id, lane, start, end, and the machine's busy CPU seconds
from /proc/stat during it), to see where a run of `make test` spends its time and how the lanes overlap."""


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    path = os.environ.get(TIMELINE_ENV)
    if not path:
        yield
        return
    start, busy = time.time(), _machine_busy_seconds()
    yield
    record = {"id": item.nodeid, "lane": os.environ.get("PYTEST_XDIST_WORKER", "main"), "start": start,
              "end": time.time(), "machine_busy_s": _machine_busy_seconds() - busy}
    with open(path, "a") as timeline:
        timeline.write(json.dumps(record) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `exclusive` modules lead the serial lane: alone, the main job's learning run keeps ~1.4 cores busy, so run
    # last it left the rest of the machine idle for minutes after the other lane had finished (measured with
    # FORKRL_TEST_TIMELINE); first, the other lane's tests fill those cores. Stable: the rest keep their order.
    items.sort(key=lambda item: item.get_closest_marker("exclusive") is None)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
