"""Core attention modules for the learner (learner.attention `sdpa` or `unfused`), for padded and packed rows.

Megatron's local `DotProductAttention` computes the [b, heads/tp, s, s] scores with baddbmm and keeps the
softmax output for the backward: at 22k tokens and 5 heads per rank that is ~5 GiB per layer in bf16, and
selective recompute rebuilds it at peak. `SDPACoreAttention` never stores a score matrix:
- padded rows (mask None: plain causal): `torch.nn.functional.scaled_dot_product_attention`, i.e. flash
  attention on CUDA and the fused flash kernel on CPU; grouped-query heads are not repeated (`enable_gqa`);
- packed rows: megatron gets the micro-batch's document ids [b, s] (int) in place of a mask, and no
  [s, s] tensor is built anywhere. On CUDA, FlexAttention with a block-diagonal causal `BlockMask` made
  from those ids (compiled; blocks across documents are skipped, not masked). On CPU, where FlexAttention
  has no backward, one causal SDPA call per document span of each row (exact; the spans are contiguous
  because packing concatenates whole sequences).
`UnfusedCoreAttention` is megatron's module as it is, taking the same document ids: it builds the dense
[b, 1, s, s] mask it needs from them. It is the float64 reference of the tests.

Same contract as megatron's module: query [sq, b, np, hn], key/value [sk, b, ng, hn], mask None or
document ids [b, s], output [sq, b, np * hn]. All layers of a micro-batch get the same document-id tensor,
so what is derived from it (spans, block mask, dense mask) is made once per micro-batch, not per layer.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

Span = tuple[int, int]
"""[start, end) positions of one document in a packed row."""

_DERIVED: dict[tuple[int, str], tuple[weakref.ref, Any]] = {}
"""(id(document ids), what) -> (a weak reference to the ids, what was derived from them); an entry goes when
its ids tensor is freed. Keyed by id, not by the tensor: a tensor's __eq__ is elementwise."""


def _derived(document_ids: torch.Tensor, what: str, build: Callable[[torch.Tensor], Any]) -> Any:
    key = (id(document_ids), what)
    entry = _DERIVED.get(key)
    if entry is not None and entry[0]() is document_ids:
        return entry[1]
    value = build(document_ids)
    _DERIVED[key] = (weakref.ref(document_ids), value)
    weakref.finalize(document_ids, _DERIVED.pop, key, None)
    return value


def _check_document_ids(mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 2 or mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise ValueError(f"packed rows pass document ids [b, s] (an integer tensor) as the attention mask, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    return mask


def _require_packing_order(document_ids: torch.Tensor) -> None:
    """Both kernels rely on how packing lays rows out: each document one span, numbered in order."""
    if document_ids.shape[1] > 1 and bool((document_ids[:, 1:] < document_ids[:, :-1]).any()):
        raise ValueError("packed rows' document ids must be contiguous spans, numbered in order: they must not "
                         "decrease along a row")


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """document_ids: [b, s] int -> [b, 1, s, s] bool, True = masked: causal inside a document, nothing across."""
    s = document_ids.shape[1]
    same = document_ids[:, :, None] == document_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=document_ids.device).tril()
    return ~(same & causal)[:, None]


def document_spans(document_ids: torch.Tensor) -> list[list[Span]]:
    """document_ids: [b, s] -> per row, the [start, end) span of each document, in order. A row laid out
    otherwise (a document split in two) is refused rather than attended wrongly."""
    _require_packing_order(document_ids)
    spans = []
    for row in document_ids.cpu():
        change = (row[1:] != row[:-1]).nonzero().flatten().add(1).tolist()
        spans.append(list(itertools.pairwise([0, *change, row.numel()])))
    return spans


def per_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: list[list[Span]],
                           scale: float | None, gqa: bool) -> torch.Tensor:
    """q: [b, heads, s, hn], k/v: [b, groups, s, hn] -> [b, heads, s, hn]: one causal SDPA per document span."""
    rows = []
    for row, row_spans in enumerate(spans):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(q[row : row + 1, :, start:end], k[row : row + 1, :, start:end],
                                           v[row : row + 1, :, start:end], is_causal=True, scale=scale,
                                           enable_gqa=gqa)
            for start, end in row_spans
        ], dim=2))
    return torch.cat(rows, dim=0)


def same_document_causal(document_ids: torch.Tensor) -> Callable[..., torch.Tensor]:
    """FlexAttention's mask_mod for `document_ids` [b, s]: a query sees its own document's past."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (q_idx >= kv_idx)

    return mask_mod


def document_block_mask(document_ids: torch.Tensor, block_size: int = 128) -> Any:
    """FlexAttention's BlockMask for `document_ids` [b, s], from the ids' block boundaries alone: O((s/block)^2),
    where `create_block_mask` would evaluate the mask at all s^2 positions. Packing numbers the documents in
    order, so the ids never decrease along a row: a kv block j <= i shares a document with query block i exactly
    when its last id reaches i's first, and is entirely visible when both blocks are whole and hold a single
    document, the same one (j < i). Partial blocks apply the mask_mod."""
    from torch.nn.attention.flex_attention import BlockMask

    _require_packing_order(document_ids)
    s = document_ids.shape[1]
    blocks = -(-s // block_size)
    starts = torch.arange(blocks, device=document_ids.device) * block_size
    ends = torch.clamp(starts + block_size, max=s)
    first, last = document_ids[:, starts], document_ids[:, ends - 1]  # [b, blocks]
    causal = torch.ones(blocks, blocks, dtype=torch.bool, device=document_ids.device).tril()
    visible = causal & (last[:, None, :] >= first[:, :, None])  # [b, q block, kv block]
    single = (first == last) & (ends - starts == block_size)
    full = causal.tril(-1) & single[:, :, None] & single[:, None, :] & (first[:, :, None] == first[:, None, :])
    partial = visible & ~full

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, q, kv] bool -> per query block the count and the kv block indices, the visible ones first."""
        counts = dense.sum(-1, dtype=torch.int32)
        indices = torch.argsort(~dense, dim=-1, stable=True).to(torch.int32)
        return counts[:, None], indices[:, None]  # one head dimension: every head shares the mask

    partial_counts, partial_indices = ordered(partial)
    full_counts, full_indices = ordered(full)
    return BlockMask.from_kv_blocks(partial_counts, partial_indices, full_counts, full_indices,
                                    BLOCK_SIZE=block_size, mask_mod=same_document_causal(document_ids),
                                    seq_lengths=(s, s))


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # Compiled once per process; without compilation FlexAttention falls back to a dense reference path.
    return torch.compile(flex_attention, dynamic=False)


def flex_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor,
                            scale: float | None, gqa: bool, compiled: bool = True) -> torch.Tensor:
    """q: [b, heads, s, hn], k/v: [b, groups, s, hn] -> [b, heads, s, hn] under the block-diagonal causal mask
    of `document_ids` (CUDA for training; FlexAttention on CPU has a forward only). compiled=False runs
    FlexAttention's eager reference, which evaluates the same mask densely (tests on machines where
    inductor cannot compile for the CPU)."""
    block_mask = _derived(document_ids, "block_mask", document_block_mask)
    if compiled:
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    from torch.nn.attention import flex_attention as flex

    return flex.flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


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
        elif q.is_cuda:
            context = flex_document_attention(q, k, v, _check_document_ids(attention_mask), self.softmax_scale, gqa)
        else:
            spans = _derived(_check_document_ids(attention_mask), "spans", document_spans)
            context = per_document_attention(q, k, v, spans, self.softmax_scale, gqa)
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return context.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], self.hidden_size_per_partition)


class UnfusedCoreAttention(DotProductAttention):
    """megatron's local module (keeps the [s, s] scores), given packed rows' document ids like SDPA is."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if attention_mask is not None:
            attention_mask = _derived(_check_document_ids(attention_mask), "dense", document_mask)
        return super().forward(query, key, value, attention_mask, *args, **kwargs)
