"""A loss head that never builds the [tokens, vocab] logits: log-prob of the chosen token and entropy straight
from the final hidden states and the (vocab-parallel) output weight, a chunk of tokens at a time.

Forward, per chunk of `chunk_tokens` tokens: logits_chunk = hidden_chunk @ W_shard.T, then the same
vocab-parallel statistics as `vocab_parallel_logprobs_and_entropy` (one MAX and one SUM all-reduce of
[chunk]-sized data), keeping only [tokens]-sized results (lse, entropy). Backward, per chunk: the chunk's
logits are recomputed, their gradient is written into them in place, and it is multiplied out into the
hidden states' and the weight's gradients. Peak extra memory is one [chunk_tokens, vocab/tp] block (plus
its fp32 workspace) instead of the full logits, their fp32 copies and their gradient; the price is one
more hidden @ W.T matmul per token in the backward.

Under tensor parallelism each rank holds W_shard = W[rank·V/tp : (rank+1)·V/tp] and the same hidden
states, so its hidden-state gradient is a partial sum over its vocab shard: the caller sums it over the
group, as megatron's ColumnParallelLinear does (`copy_to_tensor_model_parallel_region` in front of the
head, or the sequence-parallel gather, whose backward reduce-scatters). The weight's gradient is local.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from forkrl.trainer.entropy import check_chunk_size, check_temperature, compute_dtype, logits_grad_by_chunks
from forkrl.trainer.vocab_parallel import shard_stats


class _FusedHeadLogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        group: dist.ProcessGroup | None,
        temperature: float,
        chunk_tokens: int,
        entropy_requires_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        num_tokens = hidden.shape[0]
        dtype = compute_dtype(hidden.dtype)
        logp = torch.empty(num_tokens, dtype=dtype, device=hidden.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        local_targets = torch.empty(num_tokens, dtype=torch.int64, device=hidden.device)
        target_is_local = torch.empty(num_tokens, dtype=torch.bool, device=hidden.device)
        for start in range(0, num_tokens, chunk_tokens):
            end = min(start + chunk_tokens, num_tokens)
            logits = hidden[start:end] @ weight.T  # [chunk, vocab/tp]: the only vocab-sized block
            stats = shard_stats(logits, targets[start:end], group, temperature, end - start)
            del logits
            logp[start:end], entropy[start:end], lse[start:end] = stats.logp, stats.entropy, stats.lse
            local_targets[start:end], target_is_local[start:end] = stats.local_targets, stats.target_is_local
        ctx.save_for_backward(hidden, weight, local_targets, target_is_local, lse, entropy)
        ctx.temperature = temperature
        ctx.chunk_tokens = chunk_tokens
        ctx.entropy_requires_grad = entropy_requires_grad
        if not entropy_requires_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None]:
        hidden, weight, local_targets, target_is_local, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Low-precision weights accumulate their gradient over chunks in fp32 (as megatron's main_grad).
        grad_weight = (torch.zeros(weight.shape, dtype=compute_dtype(weight.dtype), device=weight.device)
                       if need_weight else None)
        entropy_term = grad_entropy if ctx.entropy_requires_grad else None
        chunk = ctx.chunk_tokens
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            logits = hidden[start:end] @ weight.T  # recomputed: the forward kept none
            grad_logits = logits_grad_by_chunks(
                logits, local_targets[start:end], target_is_local[start:end], lse[start:end], entropy[start:end],
                grad_logp[start:end], None if entropy_term is None else entropy_term[start:end],
                ctx.temperature, end - start, inplace=True)
            if grad_hidden is not None:
                torch.matmul(grad_logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T.to(grad_weight.dtype), hidden[start:end].to(grad_weight.dtype))
            del logits, grad_logits
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def fused_head_logprobs_and_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    entropy_requires_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """hidden: [tokens, hidden] final hidden states of the predicting positions; weight: [vocab/tp, hidden]
    this rank's output-layer shard; targets: [tokens] GLOBAL vocab ids (int64, identical on every rank of
    `group`). Returns (logp [tokens], entropy [tokens]) of softmax(hidden @ W.T / T), fp32 (fp64 for fp64
    inputs), identical on every rank. The hidden-state gradient is this rank's partial sum (see the module
    docstring); entropy is non-differentiable unless entropy_requires_grad.
    """
    check_temperature(temperature)
    check_chunk_size(chunk_tokens)
    world = dist.get_world_size(group) if group is not None else 1
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [tokens, h] and weight [vocab/tp, h], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.dtype != weight.dtype or not hidden.is_floating_point():
        raise ValueError(f"hidden and weight must share a floating dtype, got {hidden.dtype} and {weight.dtype}")
    if targets.shape != (hidden.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 [tokens={hidden.shape[0]}], got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    vocab = weight.shape[0] * world
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"targets must be vocab ids in [0, {vocab}), got [{int(targets.min())}, "
                         f"{int(targets.max())}]")
    group = group if world > 1 else None
    return _FusedHeadLogprobsEntropy.apply(hidden, weight, targets, group, float(temperature), int(chunk_tokens),
                                           bool(entropy_requires_grad))
