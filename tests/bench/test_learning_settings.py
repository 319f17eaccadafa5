"""bench/learning.py's fairness check: each trainer's learning-rate schedule computed by its own library, and
`differences` naming every setting on which two arms disagree."""

from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from learning import bench_spec_data  # noqa: E402
from learning_settings import (  # noqa: E402
    differences,
    forkrl_settings,
    megatron_lr_sequence,
    transformers_lr_sequence,
)

from forkrl.trainer.learner.config import OptimizerSpec  # noqa: E402
from forkrl.trainer.spec import parse_spec  # noqa: E402

MAIN_JOB = yaml.safe_load((BENCH.parent / "examples" / "local-arith-format.yaml").read_text())  # the bench's spec


@pytest.mark.parametrize(("forkrl_style", "hf_name"),
                         [("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")])
def test_megatron_and_transformers_schedules_agree_update_by_update(forkrl_style: str, hf_name: str) -> None:
    updates, warmup, peak = 40, 3, 2e-4
    spec = OptimizerSpec(lr=peak, warmup_steps=warmup, decay_style=forkrl_style,
                         decay_steps=updates if forkrl_style != "constant" else None)
    forkrl = megatron_lr_sequence(spec, updates)
    hf = transformers_lr_sequence(hf_name, peak, warmup, updates)
    assert forkrl == pytest.approx(hf, rel=1e-6, abs=1e-15)
    # Warm-up from 0, the peak right after it, then (unless constant) strictly falling.
    assert forkrl[0] == 0.0 and forkrl[warmup] == pytest.approx(peak)
    tail = forkrl[warmup:]
    assert all(b < a for a, b in itertools.pairwise(tail)) == (forkrl_style != "constant")


def test_a_decay_over_the_wrong_number_of_updates_is_caught() -> None:
    spec = OptimizerSpec(lr=2e-4, warmup_steps=2, decay_style="linear", decay_steps=100)
    short = transformers_lr_sequence("linear", 2e-4, 2, 100)
    assert megatron_lr_sequence(spec, 100) == pytest.approx(short, rel=1e-6, abs=1e-15)
    longer = OptimizerSpec(lr=2e-4, warmup_steps=2, decay_style="linear", decay_steps=150)
    assert megatron_lr_sequence(longer, 100) != pytest.approx(short, rel=1e-6, abs=1e-15)


def test_differences_name_each_setting_that_changes_learning() -> None:
    settings = forkrl_settings(parse_spec(bench_spec_data(MAIN_JOB, "forking", "linear", None)))
    assert differences(settings, settings) == []
    changed = dataclasses.replace(settings, warmup_updates=0, clip_high=0.2, dynamic_sampling=True,
                                  lr_per_update=(settings.lr_per_update[0] + 1e-5, *settings.lr_per_update[1:]))
    lines = differences(settings, changed)
    assert [line.split(":")[0] for line in lines] == ["warmup_updates", "lr_per_update", "clip_high",
                                                     "dynamic_sampling"]
    assert "update 0" in lines[1]
    # The reward-std epsilon is printed but does not fail the check (binary rewards never reach it).
    assert differences(settings, dataclasses.replace(settings, advantage_std_eps=1e-4)) == []


def test_the_bench_spec_switches_off_what_trl_lacks_and_decays_over_the_run() -> None:
    spec = parse_spec(bench_spec_data(MAIN_JOB, "dapo", "linear", 10))
    settings = forkrl_settings(spec)
    assert (settings.steps, settings.updates_per_step, len(settings.lr_per_update)) == (10, 2, 20)
    assert not settings.dynamic_sampling and not settings.overlong_shaping
    assert settings.entropy_top_fraction == 1.0 and settings.entropy_selection_rows == 0
    assert settings.lr_per_update[-1] < settings.lr_per_update[2] / 5
    with pytest.raises(ValueError, match="micro_batch"):
        forkrl_settings(parse_spec(bench_spec_data(MAIN_JOB, "forking", "linear", None)
                                   | {"objective": {"name": "forking", "scope": "mini_batch_global"}}))
