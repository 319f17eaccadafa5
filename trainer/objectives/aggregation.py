"""Loss aggregation modes (verl `agg_loss`), made exact across micro-batches and data-parallel ranks.

Each mode divides by a count. With a `LossContext` that carries the global counts of the mini-batch the
per-micro-batch results add up to the loss of the whole mini-batch; without one the counts are local.
"""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.config import AggMode
from forkrl.trainer.objectives.types import LossContext


def sequence_count(response_mask: torch.Tensor) -> int:
    """Number of sequences with at least one response token. response_mask: [batch, resp_len]."""
    return int(response_mask.bool().any(dim=-1).sum())


def aggregate(
    loss_mat: torch.Tensor,
    weight_mask: torch.Tensor,
    mode: AggMode,
    ctx: LossContext | None = None,
    num_sequences: int | None = None,
) -> torch.Tensor:
    """Aggregate per-token losses [batch, resp_len] over the tokens in `weight_mask` into a scalar.

    token-mean: sum(l*m) / N_tokens; seq-mean-token-mean: mean_i(sum_t l*m / sum_t m);
    seq-mean-token-sum: mean_i sum_t l*m; seq-mean-token-sum-norm: mean_i sum_t l*m / L.
    N_tokens = ctx.token_normalizer (global) or sum(m); the sequence count = ctx.sequence_normalizer or
    `num_sequences` (default: rows of weight_mask with any token); L = ctx.max_response_len or the padded
    width of loss_mat. Empty masks give 0, never NaN.
    """
    ctx = ctx or LossContext()
    weights = weight_mask.to(loss_mat.dtype)
    masked = loss_mat * weights
    if mode == "token-mean":
        denominator = ctx.token_normalizer if ctx.token_normalizer is not None else float(weights.sum())
        return masked.sum() / max(denominator, 1.0) * ctx.loss_scale
    if num_sequences is None:
        num_sequences = sequence_count(weight_mask)
    sequences = ctx.sequence_normalizer if ctx.sequence_normalizer is not None else float(num_sequences)
    sequences = max(sequences, 1.0)
    per_sequence_sum = masked.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        per_sequence = per_sequence_sum / weights.sum(dim=-1).clamp(min=1.0)
    elif mode == "seq-mean-token-sum":
        per_sequence = per_sequence_sum
    elif mode == "seq-mean-token-sum-norm":
        length = ctx.max_response_len if ctx.max_response_len is not None else loss_mat.shape[-1]
        per_sequence = per_sequence_sum / float(length)
    else:
        raise ValueError(f"unknown loss_agg mode {mode!r}")
    return per_sequence.sum() / sequences * ctx.loss_scale
