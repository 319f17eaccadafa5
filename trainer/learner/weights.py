"""Import a Hugging Face safetensors checkpoint into sharded megatron chunks, and stream it back out.

Import: every rank opens the checkpoint lazily and reads only the slices its TP shard needs for the
layers its PP stage holds. Export: a generator over Hugging Face (name, tensor) pairs in layer
order; the owning stage gathers one parameter over TP at a time and (by default) sends it to global
rank 0, so no rank ever holds more than one layer's parameter of the full model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.models.gpt import GPTModel
from safetensors import safe_open

from forkrl.trainer.learner.arch import ModelArch
from forkrl.trainer.learner.hf_mapping import (
    Rule,
    SliceReader,
    hf_shapes,
    is_tp_sharded,
    layer_rules,
    merge_to_hf,
    shard_from_hf,
    top_rules,
)
from forkrl.trainer.learner.model import global_layer_index
from forkrl.trainer.learner.parallel import ParallelLayout


class SafetensorsCheckpoint:
    """Lazy, slice-wise reader of a Hugging Face safetensors checkpoint (one file or an index)."""

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        index = root / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            self._files = {name: root / file for name, file in weight_map.items()}
        else:
            files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root]
            if not files or not files[0].is_file():
                raise FileNotFoundError(f"no safetensors checkpoint at {root}")
            self._files = {}
            for file in files:
                with safe_open(str(file), framework="pt") as handle:
                    self._files.update({name: file for name in handle.keys()})  # noqa: SIM118
        self._stack = ExitStack()
        self._open: dict[Path, object] = {}

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def names(self) -> set[str]:
        return set(self._files)

    def _handle(self, name: str) -> Any:
        if name not in self._files:
            raise KeyError(f"tensor {name!r} is not in the checkpoint")
        file = self._files[name]
        if file not in self._open:
            self._open[file] = self._stack.enter_context(safe_open(str(file), framework="pt"))
        return self._open[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def reader(self, name: str) -> SliceReader:
        tensor_slice = self._handle(name).get_slice(name)

        def read(dim: int, start: int, stop: int) -> torch.Tensor:
            index = (slice(start, stop),) if dim == 0 else (slice(None), slice(start, stop))
            return tensor_slice[index]

        return read


def _resolve(name: str, chunk: GPTModel, arch: ModelArch) -> tuple[Rule, int | None]:
    """The rule of a megatron parameter and its global layer index (None outside the layers)."""
    if name.startswith("decoder.layers."):
        _, _, local, suffix = name.split(".", 3)
        layer = global_layer_index(chunk.decoder.layers[int(local)])
        for rule in layer_rules(arch):
            if rule.megatron == suffix:
                return rule, layer
        raise KeyError(f"no {arch.family} mapping for layer parameter {suffix!r}")
    rules = top_rules(arch)
    if name not in rules:
        raise KeyError(f"no {arch.family} mapping for parameter {name!r}")
    return rules[name], None


def _hf_names(rule: Rule, layer: int | None) -> list[str]:
    return [n.format(i=layer) for n in rule.hf]


@torch.no_grad()
def import_hf_weights(
    chunks: Sequence[GPTModel], arch: ModelArch, checkpoint_dir: str | Path, layout: ParallelLayout
) -> int:
    """Copy this rank's slices of a HF checkpoint into the (unwrapped) chunks. Returns tensors loaded.

    Raises naming the tensor on a missing name or a shape that disagrees with the architecture.
    """
    loaded = 0
    with SafetensorsCheckpoint(checkpoint_dir) as ckpt:
        for chunk in chunks:
            for name, param in chunk.named_parameters():
                rule, layer = _resolve(name, chunk, arch)
                names = _hf_names(rule, layer)
                shapes = hf_shapes(rule, arch)
                for hf_name, expected in zip(names, shapes, strict=True):
                    if ckpt.shape(hf_name) != expected:
                        raise ValueError(f"{hf_name}: checkpoint shape {ckpt.shape(hf_name)}, config says {expected}")
                shard = shard_from_hf(
                    rule.layout, [ckpt.reader(n) for n in names], shapes, arch, layout.tp_rank, layout.tp
                )
                if shard.shape != param.shape:
                    raise ValueError(f"{name}: shard {tuple(shard.shape)} vs parameter {tuple(param.shape)}")
                param.copy_(shard.to(param.dtype))
                loaded += 1
    return loaded


def _rule_for(name: str, layer: int | None, arch: ModelArch) -> Rule:
    if layer is None:
        return top_rules(arch)[name]
    suffix = name.split(".", 3)[3]
    return next(rule for rule in layer_rules(arch) if rule.megatron == suffix)


def _owned_items(chunks: Sequence[GPTModel], arch: ModelArch) -> list[tuple[int, int, str, int | None]]:
    """(order, chunk index, megatron name, global layer) of this stage's exportable params, in HF order."""
    items = []
    for chunk_index, chunk in enumerate(chunks):
        for rule_order, (name, _) in enumerate(chunk.named_parameters()):
            _, layer = _resolve(name, chunk, arch)
            if name == "output_layer.weight" and arch.tie_embeddings:
                continue  # the tied head is the embedding, exported by the first stage
            if layer is not None:
                order = (layer + 1) * 1000 + rule_order
            elif name.startswith("embedding"):
                order = 0
            else:
                order = (arch.num_layers + 1) * 1000 + rule_order
            items.append((order, chunk_index, name, layer))
    return items


@torch.no_grad()
def export_hf_weights(
    chunks: Sequence[GPTModel],
    arch: ModelArch,
    layout: ParallelLayout,
    gather_to_rank0: bool = True,
    dtype: torch.dtype | None = None,
    values: Callable[[torch.nn.Parameter], torch.Tensor] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) in layer order. Collective: iterate it to the end on every rank.

    gather_to_rank0=True: everything is yielded on global rank 0 (one tensor in flight at a time);
    other ranks yield nothing. False: each stage's TP-rank-0 (of DP replica 0) yields its own layers.
    dtype: cast the yielded tensors (e.g. bfloat16 for the rollout engine); default = parameter dtype.
    values: what to export per parameter (default its data; e.g. its gradient), same shape and dtype.
    """
    if layout.dp_rank != 0:
        return
    per_stage: list[list[tuple[int, int, str, int | None]]] = [[] for _ in range(layout.pp)]
    dist.all_gather_object(per_stage, _owned_items(chunks, arch), group=layout.pp_group)
    schedule = sorted(
        (order, stage, ci, name, layer) for stage, items in enumerate(per_stage) for order, ci, name, layer in items
    )
    pp_ranks = dist.get_process_group_ranks(layout.pp_group)
    first = next(p for c in chunks for p in c.parameters())
    for _, stage, chunk_index, name, layer in schedule:
        rule = _rule_for(name, layer, arch)
        names = _hf_names(rule, layer)
        if stage == layout.pp_rank:
            param = dict(chunks[chunk_index].named_parameters())[name]
            param = values(param).detach() if values is not None else param.detach()
            shards = [param]
            if is_tp_sharded(rule.layout) and layout.tp > 1:
                shards = [torch.empty_like(param) for _ in range(layout.tp)]
                dist.all_gather(shards, param.contiguous(), group=layout.tp_group)
            if layout.tp_rank != 0:
                continue
            for hf_name, tensor in zip(names, merge_to_hf(rule.layout, shards, arch), strict=True):
                tensor = tensor if dtype is None else tensor.to(dtype)
                if gather_to_rank0 and layout.global_rank != 0:
                    dist.send(tensor.contiguous(), dst=0)
                else:
                    yield hf_name, tensor
        elif gather_to_rank0 and layout.global_rank == 0:
            # Rank 0 is TP-rank 0 of stage 0; the owner stage's TP-rank 0 sends in this same order.
            for hf_name, shape in zip(names, hf_shapes(rule, arch), strict=True):
                buffer = torch.empty(shape, dtype=dtype or first.dtype, device=first.device)
                dist.recv(buffer, src=pp_ranks[stage])
                yield hf_name, buffer
