"""Glue between megatron's pipeline schedules and the objective library.

`forward_step` runs one model chunk on one micro-batch. At the last pipeline stage the final hidden states
of the response positions go through the fused loss head (learner.loss_head `fused`: no logits tensor), or
their vocab-sharded logits through the vocab-parallel log-prob/entropy kernel (`logits`); either way the
full vocabulary is never gathered. The results are scattered back to token-aligned [sequences, S] tensors, and
either returned (forward-only passes) or fed to `compute_policy_loss` with the mini-batch's
`LossContext` (training).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.distributed as dist
from megatron.core.utils import get_attr_wrapped_model

from forkrl.trainer.fused_head import fused_head_logprobs_and_entropy
from forkrl.trainer.learner.batch import MicroBatch
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.learner.head import head_weight
from forkrl.trainer.learner.step_metrics import MicroBatchReport
from forkrl.trainer.objectives import LossContext, LossInputs, ObjectiveConfig, compute_policy_loss
from forkrl.trainer.vocab_parallel import vocab_parallel_logprobs_and_entropy


@dataclasses.dataclass(frozen=True)
class TokenStatsConfig:
    """How log-probs/entropies are computed from a micro-batch's logits (same on all ranks)."""

    tp_group: dist.ProcessGroup | None
    temperature: float
    chunk_size: int | None
    head_chunk_tokens: int
    """Tokens per chunk of the fused head (when the model returns hidden states)."""
    entropy_requires_grad: bool = False


def token_logprobs_and_entropy(
    output: torch.Tensor, mb: MicroBatch, stats: TokenStatsConfig, head_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """output: [rows, L, vocab/tp] logits, or [rows, L, hidden] final hidden states when `head_weight` (the
    output layer's [vocab/tp, hidden] shard, fused head) is given -> (logp, entropy): [num_seqs, S], zero off
    the response tokens. Only the response positions are read (and, fused, projected)."""
    flat = output.reshape(-1, output.shape[-1])
    predicted = flat.index_select(0, mb.pred_index)  # [n, vocab/tp] or [n, hidden]: only response positions
    if head_weight is None:
        logp, entropy = vocab_parallel_logprobs_and_entropy(
            predicted,
            mb.target_ids,
            stats.tp_group,
            stats.temperature,
            entropy_requires_grad=stats.entropy_requires_grad,
            chunk_size=stats.chunk_size,
        )
    else:
        logp, entropy = fused_head_logprobs_and_entropy(
            predicted,
            head_weight,
            mb.target_ids,
            stats.tp_group,
            stats.temperature,
            stats.head_chunk_tokens,
            entropy_requires_grad=stats.entropy_requires_grad,
        )
    shape = mb.response_mask.shape
    index = (mb.out_rows, mb.out_cols)
    logp_bt = torch.zeros(shape, dtype=logp.dtype, device=logp.device).index_put(index, logp)
    entropy_bt = torch.zeros(shape, dtype=entropy.dtype, device=entropy.device).index_put(index, entropy)
    return logp_bt, entropy_bt


def run_chunk(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    """One model chunk on one micro-batch (packed rows set explicit RoPE positions and pass their document
    ids where megatron takes a mask)."""
    rope = get_attr_wrapped_model(model, "rotary_pos_emb")
    rope.position_ids = mb.position_ids
    try:
        return model(mb.tokens, mb.position_ids, mb.document_ids)  # megatron's attention_mask: attention.py
    finally:
        rope.position_ids = None


def loss_inputs(mb: MicroBatch, logp: torch.Tensor, entropy: torch.Tensor) -> LossInputs:
    """The objective library's inputs for one micro-batch (old_logp defaults to the detached current logp,
    i.e. the on-policy first update)."""
    fields = mb.fields

    def get(name: str) -> torch.Tensor | None:
        value = fields.get(name)
        return None if value is None else value.to(logp.dtype)

    if "advantages" not in fields:
        raise ValueError("train_step needs LearnerBatch.advantages")
    old = get("old_logp")
    return LossInputs(
        logp=logp,
        old_logp=logp.detach() if old is None else old,
        advantages=get("advantages"),
        response_mask=fields["response_mask"],
        entropy=entropy,
        ref_logp=get("ref_logp"),
        rollout_logp=get("rollout_logp"),
        selection_mask=mb.selection_mask,
    )


def token_sum_norm_length(cfg: ObjectiveConfig, spec: LearnerSpec) -> int | None:
    """L of seq-mean-token-sum-norm: the objective's constant, else the run's maximum response length.

    Never the longest response of the mini-batch: that would rescale the loss from step to step.
    """
    length = cfg.token_sum_norm_length if cfg.token_sum_norm_length is not None else spec.max_response_length
    if length is None and cfg.loss_agg == "seq-mean-token-sum-norm":
        raise ValueError(
            "loss_agg 'seq-mean-token-sum-norm' divides by a fixed length: set objective.token_sum_norm_length or "
            "learner.max_response_length (an RLVR run sets it to model.max_response_tokens)"
        )
    return length


def _policy_loss(
    cfg: ObjectiveConfig, ctx: LossContext, stats: TokenStatsConfig, mb: MicroBatch,
    head: torch.Tensor | None, output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, MicroBatchReport]:
    logp, entropy = token_logprobs_and_entropy(output, mb, stats, head)
    out = compute_policy_loss(cfg, loss_inputs(mb, logp, entropy), ctx)
    loss = out.loss if out.loss._base is None else out.loss.clone()
    response = mb.response_mask.bool()
    selected = out.token_mask.bool() if out.token_mask is not None else response
    report = MicroBatchReport(
        loss=float(loss.detach()),
        tokens=int(response.sum()),
        pg_tokens=int((selected & response).sum()),
        metrics=out.metrics,
        entropy=entropy.detach()[response].float(),
    )
    # Token count 0: megatron then neither divides the loss nor rescales gradients (see optimizer.py).
    return loss, torch.zeros((), dtype=torch.int, device=loss.device), report


def _collect_stats(
    stats: TokenStatsConfig, mb: MicroBatch, head: torch.Tensor | None, output: torch.Tensor,
    non_loss_data: bool = True
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        logp, entropy = token_logprobs_and_entropy(output, mb, stats, head)
    return {"logp": logp, "entropy": entropy, "seq_index": mb.seq_index}


def train_forward_step(
    cfg: ObjectiveConfig, ctx: LossContext, stats: TokenStatsConfig
) -> Callable[[Iterator[MicroBatch], torch.nn.Module], tuple[torch.Tensor, Callable]]:
    """megatron `forward_step_func` for training: chunk output + the policy loss of its micro-batch."""

    def forward_step(data: Iterator[MicroBatch], model: torch.nn.Module) -> tuple[torch.Tensor, Callable]:
        mb = next(data)
        output = run_chunk(model, mb)
        return output, partial(_policy_loss, cfg, ctx, stats, mb, head_weight(model))

    return forward_step


def stats_forward_step(
    stats: TokenStatsConfig,
) -> Callable[[Iterator[MicroBatch], torch.nn.Module], tuple[torch.Tensor, Callable]]:
    """megatron `forward_step_func` for forward-only passes that return log-probs and entropies."""

    def forward_step(data: Iterator[MicroBatch], model: torch.nn.Module) -> tuple[torch.Tensor, Callable]:
        mb = next(data)
        output = run_chunk(model, mb)
        return output, partial(_collect_stats, stats, mb, head_weight(model))

    return forward_step
