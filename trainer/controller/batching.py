"""From scored rollouts to the learner's batch: reward shaping, GRPO advantages, token alignment.

Pure functions. Sample i of a RolloutBatch becomes row i of a LearnerBatch whose input_ids are its
prompt followed by its response; every per-token tensor is aligned with input_ids (column t = token t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forkrl.rollout.types import RolloutBatch
from forkrl.trainer.advantages import grpo_advantages, overlong_penalty
from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.spec.algorithm import AdvantageSpec, OverlongSpec


@dataclass
class ScoredBatch:
    """A rollout batch with its rewards. rewards: [B] correctness reward from the verifier;
    correct: [B] bool; shaped: [B] reward after overlong shaping; advantages: [B] GRPO advantages."""

    rollout: RolloutBatch
    rewards: torch.Tensor
    correct: torch.Tensor
    shaped: torch.Tensor
    advantages: torch.Tensor


def score_batch(
    rollout: RolloutBatch,
    rewards: torch.Tensor,
    correct: torch.Tensor,
    overlong: OverlongSpec,
    advantage: AdvantageSpec,
    max_response_tokens: int,
) -> ScoredBatch:
    """Shape rewards (DAPO overlong punishment) and compute GRPO advantages per group of samples."""
    rewards = rewards.to(torch.float64)
    shaped = rewards.clone()
    if overlong.enabled:
        cache = overlong.cache_for(max_response_tokens)
        shaped = shaped + overlong_penalty(rollout.response_lengths, max_response_tokens, cache, overlong.factor)
    advantages = grpo_advantages(shaped, rollout.group_id, advantage.std_eps, advantage.norm_by_std,
                                 advantage.unbiased_std)
    return ScoredBatch(rollout, rewards, correct.bool(), shaped, advantages)


def to_learner_batch(scored: ScoredBatch) -> LearnerBatch:
    """Rows = prompt + response (right-padded); response_mask, advantages, rollout_logp token-aligned."""
    rollout = scored.rollout
    prompt_lengths = rollout.prompt_lengths.tolist()
    response_lengths = rollout.response_lengths.tolist()
    seq_lens = [p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)]
    batch, width = len(seq_lens), max(seq_lens)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    response_mask = torch.zeros(batch, width, dtype=torch.bool)
    advantages = torch.zeros(batch, width, dtype=torch.float32)
    rollout_logp = torch.zeros(batch, width, dtype=torch.float32)
    for row, (p, r) in enumerate(zip(prompt_lengths, response_lengths, strict=True)):
        input_ids[row, :p] = rollout.prompt_ids[row, :p]
        input_ids[row, p : p + r] = rollout.response_ids[row, :r]
        response_mask[row, p : p + r] = True
        advantages[row, p : p + r] = float(scored.advantages[row])
        rollout_logp[row, p : p + r] = rollout.sampling_logprobs[row, :r]
    return LearnerBatch(
        input_ids=input_ids,
        seq_lens=torch.tensor(seq_lens, dtype=torch.long),
        response_mask=response_mask,
        advantages=advantages,
        rollout_logp=rollout_logp,
    )


def mini_batches(batch: LearnerBatch, sequences_per_mini_batch: int) -> list[LearnerBatch]:
    """Consecutive row slices of `sequences_per_mini_batch` rows (groups stay whole when it is a multiple of n).

    The last slice holds the remainder: dynamic sampling in `filter_only` mode keeps any number of groups, and
    each mini-batch is one optimizer step normalised by its own token and sequence counts."""
    if sequences_per_mini_batch < 1:
        raise ValueError(f"mini-batches need at least one sequence, got {sequences_per_mini_batch}")
    return [batch.rows(slice(start, start + sequences_per_mini_batch))
            for start in range(0, batch.num_sequences, sequences_per_mini_batch)]


def drop_stale_groups(scored: ScoredBatch, version: int, max_staleness: int) -> tuple[ScoredBatch, int]:
    """The batch without the groups holding a sample more than `max_staleness` weight versions older than
    `version` (the weights the update starts from); returns it and the number of groups dropped.

    Groups go whole: GRPO advantages are relative to the group, so a group missing samples would train on
    advantages measured against responses it no longer holds."""
    rollout = scored.rollout
    stale = rollout.group_id[(version - rollout.weight_version) > max_staleness].unique()
    if not len(stale):
        return scored, 0
    keep = (~torch.isin(rollout.group_id, stale)).nonzero().squeeze(1)
    kept = RolloutBatch(
        prompt_ids=rollout.prompt_ids[keep],
        prompt_lengths=rollout.prompt_lengths[keep],
        response_ids=rollout.response_ids[keep],
        response_mask=rollout.response_mask[keep],
        sampling_logprobs=rollout.sampling_logprobs[keep],
        weight_version=rollout.weight_version[keep],
        group_id=rollout.group_id[keep],
        finish_reasons=[rollout.finish_reasons[i] for i in keep.tolist()],
    )
    return ScoredBatch(kept, scored.rewards[keep], scored.correct[keep], scored.shaped[keep],
                       scored.advantages[keep]), len(stale)
