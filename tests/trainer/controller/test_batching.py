"""Rollouts -> learner batch: rewards, overlong shaping, GRPO advantages and token alignment."""

from __future__ import annotations

import pytest
import torch

from forkrl.rollout.types import GenerateRequest, GenerateResult, RolloutBatch, SampleResult
from forkrl.trainer.controller.batching import mini_batches, score_batch, to_learner_batch
from forkrl.trainer.spec.algorithm import AdvantageSpec, OverlongSpec


def rollout() -> RolloutBatch:
    """Two prompts (lengths 2 and 3) with two samples each (response lengths 3, 1, 2, 4)."""
    requests = [GenerateRequest(request_id="a", prompt_token_ids=[5, 6], n=2),
                GenerateRequest(request_id="b", prompt_token_ids=[7, 8, 9], n=2)]

    def sample(ids: list[int]) -> SampleResult:
        return SampleResult(ids, [-0.1 * (i + 1) for i in range(len(ids))], "stop", 3)

    results = [GenerateResult("a", [sample([11, 12, 13]), sample([14])], 1, 2),
               GenerateResult("b", [sample([21, 22]), sample([23, 24, 25, 26])], 2, 3)]
    return RolloutBatch.from_results(requests, results, pad_token_id=0)


def test_scores_shape_and_advantages() -> None:
    batch = rollout()
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    scored = score_batch(batch, rewards, rewards.bool(), OverlongSpec(cache_tokens=2), AdvantageSpec(), 4)
    # L_max 4, cache 2: lengths 3 -> -0.5, 1 -> 0, 2 -> 0, 4 -> -1.
    assert scored.shaped.tolist() == pytest.approx([0.5, 0.0, 0.0, -1.0])
    # Group a: [0.5, 0]: mean 0.25, unbiased std 0.35355 -> +-0.707105; group b: [0, -1] -> +-0.707106.
    assert scored.advantages.tolist() == pytest.approx([0.70710578, -0.70710578, 0.70710607, -0.70710607], abs=1e-6)
    off = score_batch(batch, rewards, rewards.bool(), OverlongSpec(enabled=False), AdvantageSpec(), 4)
    assert off.shaped.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_learner_batch_is_token_aligned() -> None:
    scored = score_batch(rollout(), torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1, 0, 1, 1]).bool(),
                         OverlongSpec(enabled=False), AdvantageSpec(), 8)
    batch = to_learner_batch(scored)
    assert batch.input_ids.tolist() == [[5, 6, 11, 12, 13, 0, 0], [5, 6, 14, 0, 0, 0, 0],
                                        [7, 8, 9, 21, 22, 0, 0], [7, 8, 9, 23, 24, 25, 26]]
    assert batch.seq_lens.tolist() == [5, 3, 5, 7]
    assert batch.response_mask.int().tolist() == [[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0],
                                                  [0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]]
    # Advantages sit exactly on the response tokens; group b is constant -> 0.
    assert batch.advantages[0].tolist() == pytest.approx([0, 0, 0.7071, 0.7071, 0.7071, 0, 0], abs=1e-4)
    assert batch.advantages[2].abs().sum() == 0
    # Sampling log-probs move with their tokens.
    assert batch.rollout_logp[3, 3:].tolist() == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert batch.rollout_logp[batch.response_mask == 0].abs().sum() == 0


def test_mini_batches_keep_rows_in_order() -> None:
    batch = to_learner_batch(score_batch(rollout(), torch.zeros(4), torch.zeros(4).bool(), OverlongSpec(),
                                         AdvantageSpec(), 8))
    parts = mini_batches(batch, 2)
    assert [p.seq_lens.tolist() for p in parts] == [[5, 3], [5, 7]]
    # filter_only leaves any number of groups: the last mini-batch holds the remainder.
    assert [p.seq_lens.tolist() for p in mini_batches(batch, 3)] == [[5, 3, 5], [7]]
    with pytest.raises(ValueError, match="mini-batches"):
        mini_batches(batch, 0)
