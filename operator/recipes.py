"""Ready experiments for chart `rlvrjob`, each selected with one value.

- `recipe`: the objective. `forking-top20` is DAPO on the top 20% highest-entropy tokens (the 80/20 paper),
  `dapo` is DAPO on all tokens, `archer` is dual-token constraints (the Archer paper).
- `modelSize`: the learner's layout and the pods' GPUs for a model class.

Each is a spec fragment, written by `forkrl crd --write` into `helm/rlvrjob/files/recipes/`. The chart
merges the fragments under the user's values, so any value the user sets wins.

The size fragments come from `forkrl plan`. It picks the recommended TP/PP/DP layout for the model
preset on the stated nodes (8 x 80 GiB GPUs each), for one packed row of
`max_prompt_tokens + max_response_tokens` per micro-batch. The rollout gets half as many GPUs as the
learner. Each vLLM replica's tensor-parallel size is the smallest power of two at which the bf16
weights take at most half of one GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OBJECTIVE_RECIPES: dict[str, dict[str, Any]] = {
    "forking-top20": {"objective": {"name": "forking", "rho": 0.2, "select": "top", "clip_eps_low": 0.2,
                                    "clip_eps_high": 0.28}},
    "dapo": {"objective": {"name": "dapo", "clip_eps_low": 0.2, "clip_eps_high": 0.28}},
    "archer": {"objective": {"name": "archer", "rho": 0.8, "eps_knowledge_low": 0.2, "eps_knowledge_high": 0.2,
                             "eps_reasoning_low": 0.5, "eps_reasoning_high": 0.5, "beta_knowledge": 1e-3,
                             "beta_reasoning": 0.0}},
}
GPUS_PER_NODE = 8
GPU_MEMORY_GIB = 80.0
PROMPT_TOKENS, RESPONSE_TOKENS = 2048, 20480


@dataclass(frozen=True)
class ModelSize:
    preset: str
    """`forkrl plan --model` name."""
    nodes: int
    """Learner nodes of GPUS_PER_NODE GPUs."""


MODEL_SIZES: dict[str, ModelSize] = {
    "7b": ModelSize("qwen2.5-7b", 1),
    "8b": ModelSize("qwen3-8b", 1),
    "32b": ModelSize("qwen2.5-32b", 4),
}


def rollout_tensor_parallel(parameters: int) -> int:
    """Smallest power of two at which bf16 weights take at most half of one GPU."""
    tp = 1
    while parameters * 2 / tp > GPU_MEMORY_GIB * 2**30 / 2:
        tp *= 2
    return tp


def size_recipe(size: str) -> dict[str, Any]:
    """The spec fragment of a model size, from `forkrl plan`'s recommendation."""
    from forkrl.trainer.learner.arch import ModelArch
    from forkrl.trainer.learner.plan import Cluster, Workload, plan
    from forkrl.trainer.learner.presets import preset

    chosen = MODEL_SIZES[size]
    arch = ModelArch.from_hf(preset(chosen.preset))
    tokens = PROMPT_TOKENS + RESPONSE_TOKENS
    _, best = plan(arch, Cluster(chosen.nodes, GPUS_PER_NODE, GPU_MEMORY_GIB), Workload(tokens=tokens))
    if best is None:
        raise ValueError(f"modelSize {size}: forkrl plan finds no layout for {chosen.preset} on {chosen.nodes} nodes")
    learner_gpus = chosen.nodes * GPUS_PER_NODE
    replica_gpus = rollout_tensor_parallel(arch.num_parameters())
    return {
        "model": {"max_prompt_tokens": PROMPT_TOKENS, "max_response_tokens": RESPONSE_TOKENS},
        "learner": {
            "parallel": {"tensor_parallel": best.tp, "pipeline_parallel": best.pp, "sequence_parallel": True},
            "micro_batch": {"mode": "packed", "max_tokens": tokens},
            "activation_recompute": best.recompute,
            "dtype": "bfloat16",
        },
        "resources": {"learner_ranks": learner_gpus, "gpus_per_learner": 1, "cpus_per_learner": 8},
        "rollout": {"engine": "vllm", "replicas": max(1, learner_gpus // 2 // replica_gpus)},
        "cluster": {
            "learner": {"ranks_per_pod": GPUS_PER_NODE, "memory_per_rank": "96Gi"},
            "rollout": {"gpus": replica_gpus, "cpu": str(8 * replica_gpus), "memory": f"{96 * replica_gpus}Gi"},
        },
    }


def recipe_files() -> dict[str, dict[str, Any]]:
    """File name under helm/rlvrjob/files/recipes/ -> spec fragment."""
    files = {f"recipe-{name}.yaml": fragment for name, fragment in OBJECTIVE_RECIPES.items()}
    files.update({f"size-{size}.yaml": size_recipe(size) for size in MODEL_SIZES})
    return files
