"""Suite-wide pytest configuration: GPU tests skip without CUDA; the Hypothesis `ci` profile."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
