"""forkrl.rollout: rollout engines (HF, vLLM), dual-temperature decoding, weight sync, rollout service.

Names are imported lazily so that `forkrl.rollout.verifier` (a separate service) does not pay for
torch/transformers at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DualTemperatureParams": "types",
    "FinishReason": "types",
    "GenerateRequest": "types",
    "GenerateResult": "types",
    "RequestValidationError": "types",
    "RolloutBatch": "types",
    "SampleResult": "types",
    "SamplingParams": "types",
    "EngineHealth": "engine",
    "RolloutEngine": "engine",
    "HFEngine": "hf_engine",
    "HFEngineConfig": "hf_engine",
    "VLLMEngine": "vllm_engine",
    "VLLMEngineConfig": "vllm_engine",
    "RolloutClient": "client",
    "ensure_weights": "client",
    "push_weights": "client",
    "WeightSender": "weight_sync",
    "WeightReceiver": "weight_sync",
    "create_app": "server",
    "RolloutServerConfig": "config",
    "build_engine": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkrl.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(f"forkrl.rollout.{module}"), name)
