"""Fixtures of the multi-host harness: simulated hosts (network namespaces), a Ray cluster over them, and
the main job's spec with its cold-start policy built once per session."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from forkrl.trainer.spec import RLVRJobSpec
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
    steps see non-zero advantages and really move the weights). The cold start is deterministic, so it is
    built once per spec and library versions and kept outside the checkout (like the Go builds of
    tests/cluster)."""
    import torch
    import transformers

    from forkrl.rollout.weight_checkpoint import make_files_readable
    from forkrl.trainer.controller.loop import prepare_policy

    spec = main_job(changes)
    key = hashlib.sha256(json.dumps([spec.model.model_dump(mode="json"), spec.cold_start.model_dump(mode="json"),
                                     spec.data.model_dump(mode="json"), spec.seed, torch.__version__,
                                     transformers.__version__]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("FORKRL_TEST_CACHE", Path.home() / ".cache" / "forkrl" / "tests")) / f"cold-start-{key}"
    ready = root / "local-arith" / "cold_start_model"
    if not (ready / "model.safetensors").exists():
        spec = main_job({**changes, "observability": {"run_dir": str(root / "{name}")}})
        prepare_policy(spec, spec.run_dir(), print)
    # A cache written before save_checkpoint fixed its files' modes may hold a 0600 model.safetensors, which the
    # real-node tests' pods (uid 1000) cannot read.
    make_files_readable(ready)
    return str(ready)


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
