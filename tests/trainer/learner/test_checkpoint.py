"""Checkpoints: exact resume (bitwise in fp32 on CPU) and a resharded load (saved at TP = 2, loaded at TP = 1).

One 2-rank world: 3 steps straight through vs 1 step, save, a fresh learner, load, 2 more steps;
then the same checkpoint loaded under TP = 1 x DP = 2 (model and distributed-optimizer state
resharded over TP and DP).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from forkrl.trainer.learner.launch import run_world
from tests.trainer.learner import workers
from tests.trainer.learner.tiny import make_batch, save_tiny_model

TOTAL, STOP = 3, 1


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("learner_checkpoint")
    save_tiny_model(root / "qwen2", "qwen2", seed=2)
    batches = [make_batch(seed=100 + i) for i in range(TOTAL)]
    return run_world(workers.resume_runs, 2, str(root / "qwen2"), batches, str(root), TOTAL, STOP)[0]


def test_exact_resume_is_bitwise(result: dict[str, Any]) -> None:
    assert result["resumed_losses"] == result["straight_losses"]
    straight, resumed = result["straight_params"], result["resumed_params"]
    assert set(straight) == set(resumed)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert result["version"] == TOTAL


def test_training_moved_the_weights(result: dict[str, Any]) -> None:
    """Guards the bitwise test against comparing two untouched models."""
    losses = result["straight_losses"]
    assert len(set(losses)) == TOTAL


def test_data_cursor_and_rng_are_restored(result: dict[str, Any]) -> None:
    assert result["cursor"] == {"next_batch": STOP, "epoch": 0}
    assert torch.equal(result["rng_after_load"], result["rng_after_save"])


def test_resharded_resume_tp2_to_tp1(result: dict[str, Any]) -> None:
    assert result["resharded_cursor"] == result["cursor"]
    assert result["resharded_losses"] == pytest.approx(result["straight_losses"][STOP:], abs=1e-5)
    straight, resharded = result["straight_params"], result["resharded_params"]
    assert max(float((straight[k] - resharded[k]).abs().max()) for k in straight) < 1e-5
