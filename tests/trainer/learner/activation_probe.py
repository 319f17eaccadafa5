"""Measure what forkrl's megatron layers keep for backward: `python -m tests.trainer.learner.activation_probe`.

Builds a small Qwen2-architecture model with the learner's own layer spec on CPU (fp32, TP=1, a fake
one-rank process group), runs one forward per (attention, batch, sequence) and sums the bytes of every
distinct storage autograd saves while a transformer layer runs (saved_tensors_hooks; parameters excluded).
Prints one JSON object: the architecture and, per case, the bytes per layer. A subprocess, because megatron's
parallel state is process-global.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
import torch.distributed as dist
import transformers

CASES = (("sdpa", 1, 512), ("sdpa", 2, 1024), ("unfused", 1, 512), ("unfused", 1, 1024))
HF_CONFIG = dict(vocab_size=128, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, max_position_embeddings=4096)


def saved_bytes_per_layer(model: torch.nn.Module, layers: list[torch.nn.Module], batch: int, seq: int) -> float:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    contexts: list[Any] = []

    def enter(module: torch.nn.Module, args: Any) -> None:
        contexts.append(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        contexts[-1].__enter__()

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        contexts.pop().__exit__(None, None, None)

    handles = [handle for layer in layers
               for handle in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))]
    try:
        ids = torch.randint(0, HF_CONFIG["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
        output = model(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq), attention_mask=None)
        del output
    finally:
        for handle in handles:
            handle.remove()
    return sum(storages.values()) / len(layers)


def main() -> int:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from forkrl.trainer.learner import cpu_shim
    from forkrl.trainer.learner.arch import ModelArch
    from forkrl.trainer.learner.config import LearnerSpec
    from forkrl.trainer.learner.model import build_model_chunks, transformer_config

    cpu_shim.install()
    torch.manual_seed(0)
    hf_config = transformers.Qwen2Config(**HF_CONFIG).to_dict()
    arch = ModelArch.from_hf(hf_config)
    config = transformer_config(arch, LearnerSpec(dtype="float32"), has_gpu=False)
    dist.init_process_group("fake", rank=0, world_size=1, store=FakeStore())
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    model_parallel_cuda_manual_seed(0)  # megatron's initialisers fork its RNG tracker
    results = []
    for attention, batch, seq in CASES:
        (model,) = build_model_chunks(arch, config, 4096, True, attention=attention)
        layers = list(model.decoder.layers)
        results.append({"attention": attention, "batch": batch, "seq": seq,
                        "bytes_per_layer": saved_bytes_per_layer(model, layers, batch, seq)})
    json.dump({"hf_config": hf_config, "cases": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
