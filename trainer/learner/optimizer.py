"""Megatron DDP wrapping, the (distributed) Adam optimizer and the LR schedule of the learner.

Gradients are *summed* over data-parallel ranks (`calculate_per_token_loss=True` in the model
config): the objective library already divides every micro-batch's loss by global counts, so the
sum of all micro-batch losses on all DP ranks is the mini-batch loss and needs no further scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.transformer_config import TransformerConfig

from forkrl.trainer.learner.config import LearnerSpec, OptimizerSpec


def wrap_ddp(chunks: Sequence[GPTModel], config: TransformerConfig, spec: LearnerSpec) -> list[DistributedDataParallel]:
    """Wrap each chunk in megatron DDP (contiguous grad buffers, reduce-scatter for the dist. optimizer)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=spec.grad_reduce_in_fp32,
        overlap_grad_reduce=False,
        overlap_param_gather=False,
        use_distributed_optimizer=spec.optimizer.distributed,
        check_for_nan_in_grad=False,
        average_in_collective=False,
    )
    wrapped = [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]
    for chunk in wrapped:
        chunk.broadcast_params()  # replicas start identical even if a rank's import diverged
    no_sync = [chunk.no_sync for chunk in wrapped]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def build_optimizer(
    model: Sequence[DistributedDataParallel], spec: LearnerSpec, dtype: torch.dtype
) -> tuple[MegatronOptimizer, OptimizerParamScheduler]:
    """Adam(W) over the wrapped chunks and its warm-up + constant/cosine/linear schedule."""
    opt = spec.optimizer
    config = OptimizerConfig(
        optimizer="adam",
        lr=opt.lr,
        min_lr=opt.min_lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps,
        clip_grad=opt.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=opt.distributed,
    )
    optimizer = get_megatron_optimizer(config, list(model))
    return optimizer, build_scheduler(optimizer, opt)


def build_scheduler(optimizer: Any, opt: OptimizerSpec) -> OptimizerParamScheduler:
    """The warm-up + constant/cosine/linear schedule of `opt` on `optimizer` (anything with param_groups)."""
    decay_steps = opt.decay_steps or opt.warmup_steps + 1
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if opt.warmup_steps else opt.lr,
        max_lr=opt.lr,
        min_lr=opt.min_lr,
        lr_warmup_steps=opt.warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=opt.decay_style,
        start_wd=opt.weight_decay,
        end_wd=opt.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
