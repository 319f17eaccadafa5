"""Core attention on `torch.nn.functional.scaled_dot_product_attention` (learner.attention `sdpa`).

Megatron's local `DotProductAttention` computes the [b, heads/tp, s, s] scores with baddbmm and keeps the
softmax output for the backward: at 22k tokens and 5 heads per rank that is ~5 GiB per layer in bf16, and
selective recompute rebuilds it at peak. SDPA picks torch's built-in kernels instead: on CUDA flash
attention for causal rows (no score matrix at all) and the memory-efficient kernel for an explicit mask
(packed rows' block-diagonal mask; scores tiled, never stored); on CPU the fused flash kernel for causal
rows. Grouped-query heads are not repeated in memory (`enable_gqa`).

Same contract as the module it replaces: query [sq, b, np, hn], key/value [sk, b, ng, hn], mask
[b, 1, sq, sk] with True = masked (or None: causal), output [sq, b, np * hn].

A boolean mask is turned into SDPA's additive form (0 / -inf in the activations' dtype) once per mask
tensor, not once per layer: SDPA would otherwise convert it in every layer and each layer's backward
would keep its own [b, 1, s, s] copy. All layers of a micro-batch get the same mask tensor from megatron,
so they share one additive mask, which lives as long as the micro-batch's mask does.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

_ADDITIVE_MASKS: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
"""id(bool mask) -> (a weak reference to it, its additive form); an entry goes when its mask is freed.
Keyed by id, not by the tensor: a tensor's __eq__ is elementwise, so it cannot be a dictionary key."""


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """mask: [b, 1, s, s] bool, True = masked -> the same shape in `dtype`, -inf where masked, else 0 (cached
    per mask tensor)."""
    entry = _ADDITIVE_MASKS.get(id(mask))
    if entry is not None and entry[0]() is mask and entry[1].dtype == dtype:
        return entry[1]
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    key = id(mask)
    _ADDITIVE_MASKS[key] = (weakref.ref(mask), additive)
    weakref.finalize(mask, _ADDITIVE_MASKS.pop, key, None)
    return additive


class SDPACoreAttention(DotProductAttention):
    """megatron's core-attention module with the score matrix left to torch's fused kernels."""

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: object | None = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention takes neither packed_seq_params (THD) nor an attention bias")
        if self.config.attention_dropout > 0 and self.training:
            raise ValueError("SDPACoreAttention runs without attention dropout (RL fine-tuning uses none)")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        gqa = self.num_attention_heads_per_partition != self.num_query_groups_per_partition
        if attention_mask is None:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                     enable_gqa=gqa)
        else:
            bias = additive_mask(attention_mask, q.dtype)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.softmax_scale, enable_gqa=gqa)
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return context.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], self.hidden_size_per_partition)
