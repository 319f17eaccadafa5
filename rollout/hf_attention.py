"""Grouped-query attention for `HFEngine` on CPU without copying the KV cache to every query head.

transformers' SDPA attention hands SDPA grouped key/value heads as they are (`enable_gqa`) only when there is
no attention mask; with one (every left-padded rollout batch has one) it first repeats each key/value head to
its query heads, a copy of the whole cache on every decode step of every layer. torch's CPU SDPA takes grouped
heads with a mask: the same kernel on the same values, without the copy (a decode step at 1024 rows x 60
cached tokens: 8.9 ms against 19.5 ms, equal to the last bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GQA_SDPA = "forkrl_gqa_sdpa"


def gqa_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """query: [rows, heads, q, head_dim]; key, value: [rows, kv_heads, k, head_dim]; attention_mask: a bool
    [rows, 1, q, k] (True attends) or None for plain causal. Returns ([rows, q, heads, head_dim], None)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model: PreTrainedModel) -> None:
    """Switches a CPU model on transformers' SDPA attention to `gqa_sdpa_attention` (same masks); a model on
    another attention implementation or device, or whose attention does not dispatch through transformers'
    attention interface (custom or older modelling code), is left as it is."""
    if (model.config._attn_implementation != "sdpa" or model.device.type != "cpu"
            or not type(model).is_backend_compatible()):
        return
    AttentionInterface.register(GQA_SDPA, gqa_sdpa_attention)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
    model.set_attn_implementation(GQA_SDPA)
