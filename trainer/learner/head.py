"""The output layer in fused-head mode: the model returns its final hidden states instead of logits, and
the loss computes log-probs and entropies from them and the output weight (`forkrl.trainer.fused_head`),
so the [tokens, vocab/tp] logits of a micro-batch never exist.

The last stage's ColumnParallelLinear keeps its parameters and name (checkpoints, weight export and the
HF mapping are unchanged); only its forward is replaced on the instance. That forward does what the
layer does to its input before the matmul (the sequence-parallel all-gather, or the copy whose backward
all-reduces the input gradient over TP) and records the weight the model passed (the shared embedding
when embeddings are tied) for the loss of the same micro-batch.
"""

from __future__ import annotations

import types

import torch
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)
from megatron.core.utils import get_attr_wrapped_model

HEAD_WEIGHT = "forkrl_head_weight"


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient. megatron transposes the returned [s, b, h] to
    [b, s, h], so the gradient reaching the TP copy below is a transposed view when b > 1, and megatron's
    all-reduce of it (`all_reduce(grad.contiguous())`, then returning `grad`) would reduce a copy and
    return the unreduced view."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _hidden_states_forward(layer: torch.nn.Module, input_: torch.Tensor, weight: torch.Tensor | None = None,
                           runtime_gather_output: bool | None = None) -> tuple[torch.Tensor, None]:
    """input_: [s(/tp under sequence parallelism), b, h] -> ([s, b, h] ready for W_shard, no bias)."""
    weight = layer.weight if weight is None else weight
    if layer.sequence_parallel:
        hidden = gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True, group=layer.tp_group)
    elif layer.tp_group is not None and layer.tp_group.size() > 1:
        hidden = copy_to_tensor_model_parallel_region(input_, group=layer.tp_group)
    else:
        hidden = input_
    # A plain attribute: nn.Module.__setattr__ would register the Parameter a second time (in state_dict).
    layer.__dict__[HEAD_WEIGHT] = weight
    return _ContiguousGradient.apply(hidden), None


def install_hidden_states_head(chunk: torch.nn.Module) -> None:
    """Make a last-stage model chunk return hidden states [b, s, h]; other stages have no output layer."""
    layer = getattr(chunk, "output_layer", None)
    if layer is not None and getattr(chunk, "post_process", False):
        layer.forward = types.MethodType(_hidden_states_forward, layer)


def head_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """The output weight of the model's last forward in fused-head mode; None when it returns logits."""
    try:
        layer = get_attr_wrapped_model(model, "output_layer")
    except RuntimeError:
        return None
    return getattr(layer, HEAD_WEIGHT, None)
