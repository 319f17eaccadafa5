"""Inputs, context and outputs of one policy-loss call (one micro-batch on one rank)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossInputs:
    """Per-token tensors of one micro-batch, all [batch, resp_len] (padded; `response_mask` marks real tokens).

    logp: log pi_theta(o_t) of the current policy, differentiable.
    old_logp: log pi_old(o_t) from the old-policy pass (detached).
    advantages: per-token advantages (GRPO: the group advantage broadcast over the response).
    response_mask: 1 for response tokens that count, 0 for padding/prompt.
    entropy: current-policy token entropy H_t (detached unless an entropy bonus is on); needed by the
        entropy-aware objectives and for metrics.
    ref_logp: log pi_ref(o_t) of the frozen reference model (KL terms).
    rollout_logp: sampling log-probs recorded by the rollout engine (TIS, mismatch KL).
    selection_mask: precomputed token split (bool) from `normalizers.token_split_masks`, the same one given to
        `mini_batch_context`: the forking tokens, or Archer's reasoning tokens. Required where
        `normalizers.needs_token_split`, else None (the split is taken here from `entropy`).
    """

    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor
    entropy: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    selection_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.logp.shape
        if self.logp.dim() != 2:
            raise ValueError(f"logp must be [batch, resp_len], got shape {tuple(shape)}")
        for name in ("old_logp", "advantages", "response_mask", "entropy", "ref_logp", "rollout_logp",
                     "selection_mask"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)} like logp")


@dataclass(frozen=True)
class LossContext:
    """How this micro-batch's loss is scaled so that the sum over micro-batches and ranks is exact.

    token_normalizer: global count of the tokens that token-mean divides by (all response tokens, or the
        selected tokens for forking) over the whole mini-batch and all DP ranks; None = this micro-batch's count.
    sequence_normalizer: global number of sequences for the seq-mean-* modes; None = this micro-batch's count.
    loss_scale: multiplies the aggregated loss (e.g. 1 / (micro-batches * dp) for micro-batch scope).
    max_response_len: L of seq-mean-token-sum-norm, the run's maximum response length (the objective's
        `token_sum_norm_length` overrides it); None = the padded length of this micro-batch, which changes
        from batch to batch: trainers pass a fixed value.
    knowledge_token_normalizer / reasoning_token_normalizer: global counts of Archer's knowledge / reasoning
        tokens, the denominators of its per-type KL means under token-mean; None = this micro-batch's counts.
    """

    token_normalizer: float | None = None
    sequence_normalizer: float | None = None
    loss_scale: float = 1.0
    max_response_len: int | None = None
    knowledge_token_normalizer: float | None = None
    reasoning_token_normalizer: float | None = None


@dataclass
class LossOutput:
    """loss: scalar to backpropagate; metrics: floats to chart; token_mask: [batch, resp_len] tokens that
    carried policy-gradient weight (the forking selection, or all response tokens)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    token_mask: torch.Tensor | None = None
