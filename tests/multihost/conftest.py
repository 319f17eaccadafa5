"""Fixtures of the multi-host harness: simulated hosts (network namespaces), a Ray cluster over them, and
the main job's spec with its cold-start policy built once per session."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from forkrl.trainer.spec import RLVRJobSpec
from tests.cold_start_cache import cached_cold_start
from tests.multihost.netns import HarnessUnavailable, Hosts, check_available

MAIN_JOB = Path(__file__).resolve().parents[2] / "examples" / "local-arith.yaml"


@pytest.fixture(scope="session")
def harness() -> None:
    """Skip (with the reason) where network namespaces cannot be made."""
    try:
        check_available()
    except HarnessUnavailable as err:
        pytest.skip(f"multi-host harness unavailable: {err}")


@pytest.fixture
def make_hosts(harness: None) -> Iterator:
    """make_hosts(n) -> Hosts; everything made is deleted at the end of the test, even on failure."""
    made: list[Hosts] = []

    def make(count: int) -> Hosts:
        hosts = Hosts.create(count)
        made.append(hosts)
        return hosts

    yield make
    for hosts in made:
        hosts.delete()


def main_job(changes: dict) -> RLVRJobSpec:
    """examples/local-arith.yaml with `changes` merged in (nested dicts merge, other values replace)."""
    data = yaml.safe_load(MAIN_JOB.read_text())

    def merge(into: dict, update: dict) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    merge(data, changes)
    return RLVRJobSpec.model_validate(data)


def build_cold_start(changes: dict) -> str:
    """The main job's cold-start checkpoint with `changes` (a policy that already solves some problems, so RL
    steps see non-zero advantages and really move the weights), built once (tests/cold_start_cache.py)."""
    return str(cached_cold_start(main_job(changes)))


# Half the main job's cold start: enough for some correct answers (non-zero advantages), in half the time.
SHORT_COLD_START = {"cold_start": {"steps": 200}}


@pytest.fixture(scope="session")
def cold_start_policy() -> str:
    """The main job's model (3 layers) after a short cold start."""
    return build_cold_start(SHORT_COLD_START)


@pytest.fixture(scope="session")
def two_layer_policy() -> str:
    """The main job's model with 2 layers (pipeline parallelism needs the layers to split evenly)."""
    return build_cold_start({**SHORT_COLD_START, "model": {"tiny": {"num_layers": 2}}})
