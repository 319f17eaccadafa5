"""Hugging Face <-> megatron parameter names and tensor-parallel layouts, one table per family.

A rule maps one megatron parameter (name relative to its `GPTModel` chunk, `{i}` = layer) to the
Hugging Face tensors it is made of and a layout kind that says how TP shards it:

- `replicated`: the same tensor on every TP rank (norms).
- `rows`:       split along dim 0 (vocab-parallel embedding / output layer).
- `cols`:       split along dim 1 (row-parallel linears: attention out, MLP down).
- `qkv`:        q, k, v fused per query group: rank r holds groups [r*G/tp, (r+1)*G/tp), each group
                laid out as [its q heads, its k head, its v head] (weight or bias).
- `gate_up`:    SwiGLU gate and up stacked per rank: [gate rows of r; up rows of r].

`shard_from_hf` builds a rank's shard while reading only that rank's slices; `merge_to_hf` turns the
TP-gathered shards back into the Hugging Face tensors. Both are pure functions of shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from forkrl.trainer.learner.arch import ModelArch

Layout = Literal["replicated", "rows", "cols", "qkv", "gate_up"]


@dataclasses.dataclass(frozen=True)
class Rule:
    megatron: str
    hf: tuple[str, ...]
    layout: Layout


_EMBED = Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "rows")
_FINAL_NORM = Rule("decoder.final_layernorm.weight", ("model.norm.weight",), "replicated")
_LM_HEAD = Rule("output_layer.weight", ("lm_head.weight",), "rows")
_TIED_LM_HEAD = Rule("output_layer.weight", ("model.embed_tokens.weight",), "rows")

_P = "model.layers.{i}."
_COMMON_LAYER = (
    Rule("input_layernorm.weight", (_P + "input_layernorm.weight",), "replicated"),
    Rule(
        "self_attention.linear_qkv.weight",
        (_P + "self_attn.q_proj.weight", _P + "self_attn.k_proj.weight", _P + "self_attn.v_proj.weight"),
        "qkv",
    ),
    Rule("self_attention.linear_proj.weight", (_P + "self_attn.o_proj.weight",), "cols"),
    Rule("pre_mlp_layernorm.weight", (_P + "post_attention_layernorm.weight",), "replicated"),
    Rule("mlp.linear_fc1.weight", (_P + "mlp.gate_proj.weight", _P + "mlp.up_proj.weight"), "gate_up"),
    Rule("mlp.linear_fc2.weight", (_P + "mlp.down_proj.weight",), "cols"),
)
_QKV_BIAS = Rule(
    "self_attention.linear_qkv.bias",
    (_P + "self_attn.q_proj.bias", _P + "self_attn.k_proj.bias", _P + "self_attn.v_proj.bias"),
    "qkv",
)
_QK_NORM = (
    Rule("self_attention.q_layernorm.weight", (_P + "self_attn.q_norm.weight",), "replicated"),
    Rule("self_attention.k_layernorm.weight", (_P + "self_attn.k_norm.weight",), "replicated"),
)

# One table per family: the per-layer rules (names relative to `decoder.layers.{local}.`).
LAYER_TABLES: dict[str, tuple[Rule, ...]] = {
    "qwen2": (*_COMMON_LAYER, _QKV_BIAS),
    "qwen3": (*_COMMON_LAYER, *_QK_NORM),
    "llama": _COMMON_LAYER,
}


def layer_rules(arch: ModelArch) -> tuple[Rule, ...]:
    return LAYER_TABLES[arch.family]


def top_rules(arch: ModelArch) -> dict[str, Rule]:
    """Rules for the parameters outside the decoder layers, keyed by megatron name."""
    head = _TIED_LM_HEAD if arch.tie_embeddings else _LM_HEAD
    return {r.megatron: r for r in (_EMBED, _FINAL_NORM, head)}


def hf_shapes(rule: Rule, arch: ModelArch) -> list[tuple[int, ...]]:
    """Full (unsharded) Hugging Face shapes of a rule's tensors."""
    h, hd = arch.hidden_size, arch.head_dim
    q, kv = arch.num_heads * hd, arch.num_kv_heads * hd
    name = rule.megatron
    if name.startswith("embedding") or name.startswith("output_layer"):
        return [(arch.vocab_size, h)]
    if name.endswith("layernorm.weight") and ("q_layernorm" in name or "k_layernorm" in name):
        return [(hd,)]
    if name.endswith("layernorm.weight"):
        return [(h,)]
    if name.endswith("linear_qkv.weight"):
        return [(q, h), (kv, h), (kv, h)]
    if name.endswith("linear_qkv.bias"):
        return [(q,), (kv,), (kv,)]
    if name.endswith("linear_proj.weight"):
        return [(h, q)]
    if name.endswith("linear_fc1.weight"):
        return [(arch.ffn_hidden_size, h), (arch.ffn_hidden_size, h)]
    if name.endswith("linear_fc2.weight"):
        return [(h, arch.ffn_hidden_size)]
    raise KeyError(f"no shape rule for {name}")


# A reader returns rows [start, stop) along `dim` of one HF tensor (everything along other dims).
SliceReader = Callable[[int, int, int], torch.Tensor]


def shard_from_hf(
    layout: Layout,
    readers: Sequence[SliceReader],
    shapes: Sequence[tuple[int, ...]],
    arch: ModelArch,
    tp_rank: int,
    tp_size: int,
) -> torch.Tensor:
    """This TP rank's megatron shard, reading only its slices of the HF tensors."""
    if layout == "replicated":
        return readers[0](0, 0, shapes[0][0])
    if layout in ("rows", "cols"):
        dim = 0 if layout == "rows" else 1
        size = shapes[0][dim] // tp_size
        return readers[0](dim, tp_rank * size, (tp_rank + 1) * size)
    if layout == "gate_up":
        size = shapes[0][0] // tp_size
        return torch.cat([read(0, tp_rank * size, (tp_rank + 1) * size) for read in readers], dim=0)
    if layout == "qkv":
        hd = arch.head_dim
        heads_per_group = arch.num_heads // arch.num_kv_heads
        groups = arch.num_kv_heads // tp_size
        g0 = tp_rank * groups
        q = readers[0](0, g0 * heads_per_group * hd, (g0 + groups) * heads_per_group * hd)
        k = readers[1](0, g0 * hd, (g0 + groups) * hd)
        v = readers[2](0, g0 * hd, (g0 + groups) * hd)
        tail = q.shape[1:]
        fused = torch.cat(
            [
                q.reshape(groups, heads_per_group * hd, *tail),
                k.reshape(groups, hd, *tail),
                v.reshape(groups, hd, *tail),
            ],
            dim=1,
        )
        return fused.reshape(groups * (heads_per_group + 2) * hd, *tail)
    raise ValueError(f"unknown layout {layout!r}")


def merge_to_hf(layout: Layout, shards: Sequence[torch.Tensor], arch: ModelArch) -> list[torch.Tensor]:
    """The HF tensors of a rule from all TP ranks' shards (in TP-rank order); never views of the shards."""
    if layout == "replicated":
        return [shards[0].clone()]
    if layout == "rows":
        return [torch.cat(list(shards), dim=0)]
    if layout == "cols":
        return [torch.cat(list(shards), dim=1)]
    if layout == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)]
    if layout == "qkv":
        hd = arch.head_dim
        heads_per_group = arch.num_heads // arch.num_kv_heads
        full = torch.cat(list(shards), dim=0)
        tail = full.shape[1:]
        grouped = full.reshape(arch.num_kv_heads, (heads_per_group + 2) * hd, *tail)
        q, k, v = grouped.split([heads_per_group * hd, hd, hd], dim=1)
        return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]
    raise ValueError(f"unknown layout {layout!r}")


def is_tp_sharded(layout: Layout) -> bool:
    return layout != "replicated"
