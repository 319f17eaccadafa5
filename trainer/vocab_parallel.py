"""Log-probs and entropy of vocab-sharded logits under tensor parallelism (spec §6, §8.1 step 5).

Rank r of the TP group holds logits for vocab ids [r·shard, (r+1)·shard) (equal shards: Megatron pads
the vocab to a multiple of TP). Per call the forward does two all-reduces of [tokens]-sized data —
MAX of the row max, then one SUM of the stacked (Σ exp, Σ exp·(z - m), target logit) — and never
gathers the vocab. The backward needs no communication: with the global lse and H saved, each rank's
gradient on its own shard is local, and every TP rank sees the same output gradient because the loss
is computed redundantly on each of them (as in Megatron's vocab-parallel cross-entropy).

Results are bitwise identical on every TP rank (they are functions of all-reduced values only), so
entropy-based token masks agree across TP.

inplace_backward=True writes each rank's shard gradient into its own logits shard (see
`forkrl.trainer.entropy` for when that is safe and what is refused): with a vocab-parallel output layer
(logits_shard = hidden @ W_shard.T) no [tokens, vocab/tp] gradient buffer is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from forkrl.trainer.entropy import (
    check_chunk_size,
    check_inplace_backward,
    check_logits_and_targets,
    check_temperature,
    compute_dtype,
    logits_grad_by_chunks,
    logprobs_and_entropy,
    scaled_logits_into,
    shifted_exp_stats_,
)


def _group_rank_and_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """group=None means no tensor parallelism (not the default world group)."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


@dataclass(frozen=True)
class ShardStats:
    """Per token of one TP rank's logits shard: the global results and what the backward needs."""

    logp: Tensor
    entropy: Tensor
    lse: Tensor
    """log Σ_j exp(z_j) over the full vocabulary, z = logits / T."""
    local_targets: Tensor
    """The target's column in this shard (0 where the target lives on another rank)."""
    target_is_local: Tensor


def shard_stats(logits_shard: Tensor, targets: Tensor, group: dist.ProcessGroup | None, temperature: float,
                rows: int) -> ShardStats:
    """Log-prob of the target and entropy from this rank's [tokens, vocab/tp] logits: one MAX and one SUM
    all-reduce of [tokens]-sized data over `group` (none when None), `rows` tokens of workspace at a time."""
    num_tokens, shard = logits_shard.shape
    dtype = compute_dtype(logits_shard.dtype)
    rank = dist.get_rank(group) if group is not None else 0
    local_targets = targets - rank * shard
    target_is_local = (local_targets >= 0) & (local_targets < shard)
    local_targets = torch.where(target_is_local, local_targets, 0)

    # Pass 1: global row max. max(x)/T == max(x/T) exactly (rounding is monotone), so no copy.
    row_max = logits_shard.amax(dim=1).to(dtype).div_(temperature)
    if group is not None:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)

    # Pass 2: local partial sums against the global max, one SUM all-reduce for all three.
    partial = torch.zeros(3, num_tokens, dtype=dtype, device=logits_shard.device)
    rows = min(rows, num_tokens)
    workspace = torch.empty(rows, shard, dtype=dtype, device=logits_shard.device)
    for start in range(0, num_tokens, rows):
        end = min(start + rows, num_tokens)
        z = scaled_logits_into(workspace[: end - start], logits_shard[start:end], temperature)
        target_logit = z.gather(1, local_targets[start:end].unsqueeze(1)).squeeze(1)
        partial[2, start:end] = torch.where(target_is_local[start:end], target_logit, 0.0)
        partial[0, start:end], partial[1, start:end] = shifted_exp_stats_(z, row_max[start:end])
    del workspace
    if group is not None:
        dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=group)

    sum_exp, weighted_shift, target_logit = partial
    log_sum_exp = sum_exp.log()
    lse = row_max + log_sum_exp
    entropy = log_sum_exp - weighted_shift / sum_exp
    return ShardStats(target_logit - lse, entropy, lse, local_targets, target_is_local)


class _VocabParallelLogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits_shard: Tensor,
        targets: Tensor,
        group: dist.ProcessGroup,
        temperature: float,
        chunk_size: int,
        entropy_requires_grad: bool,
        inplace_backward: bool,
    ) -> tuple[Tensor, Tensor]:
        stats = shard_stats(logits_shard, targets, group, temperature, chunk_size)
        ctx.save_for_backward(logits_shard, stats.local_targets, stats.target_is_local, stats.lse, stats.entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.entropy_requires_grad = entropy_requires_grad
        ctx.inplace_backward = inplace_backward
        if not entropy_requires_grad:
            ctx.mark_non_differentiable(stats.entropy)
        return stats.logp, stats.entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None, None, None]:
        logits_shard, local_targets, target_is_local, lse, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        grad_shard = logits_grad_by_chunks(
            logits_shard,
            local_targets,
            target_is_local,
            lse,
            entropy,
            grad_logp,
            grad_entropy if ctx.entropy_requires_grad else None,
            ctx.temperature,
            ctx.chunk_size,
            inplace=ctx.inplace_backward,
        )
        return grad_shard, None, None, None, None, None, None


def vocab_parallel_logprobs_and_entropy(
    logits_shard: Tensor,
    targets: Tensor,
    group: dist.ProcessGroup | None,
    temperature: float = 1.0,
    entropy_requires_grad: bool = False,
    chunk_size: int | None = None,
    *,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    """logits_shard: [tokens, vocab / tp] of this TP rank; targets: [tokens] GLOBAL vocab ids (int64,
    identical on every rank). Returns (logp [tokens], entropy [tokens]), fp32 (fp64 for fp64 logits),
    identical on every rank of `group`.

    group=None or a group of size 1: no communication, the naive full-vocab result (the chunked kernel
    when chunk_size is given). chunk_size=None processes the whole shard at once (one [tokens,
    vocab/tp] fp32 workspace); a chunk size bounds the workspace to [chunk_size, vocab/tp].
    entropy is non-differentiable unless entropy_requires_grad.
    inplace_backward=True: backward overwrites logits_shard with its gradient (no [tokens, vocab/tp]
    buffer); without a group it takes the chunked kernel, chunk_size=None meaning all rows at once.
    """
    _, world = _group_rank_and_size(group)
    check_temperature(temperature)
    check_logits_and_targets(logits_shard, targets, vocab_size=logits_shard.shape[-1] * world)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    if inplace_backward:
        check_inplace_backward(logits_shard)
    rows = max(logits_shard.shape[0], 1) if chunk_size is None else chunk_size
    if world == 1 or logits_shard.shape[0] == 0:
        # Nothing to reduce (zero tokens: every rank takes this branch together, so no collective hangs).
        # The naive path cannot write in place; "whole shard at once" is the chunked kernel with one chunk.
        return logprobs_and_entropy(
            logits_shard,
            targets,
            temperature,
            chunk_size=rows if inplace_backward else chunk_size,
            entropy_requires_grad=entropy_requires_grad,
            inplace_backward=inplace_backward,
        )
    return _VocabParallelLogprobsEntropy.apply(
        logits_shard, targets, group, float(temperature), rows, entropy_requires_grad, bool(inplace_backward)
    )
