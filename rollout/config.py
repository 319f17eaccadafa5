"""Configuration of one rollout replica and the engine factory (HF or vLLM)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forkrl.rollout.engine import RolloutEngine
from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.rollout.service import ServiceConfig
from forkrl.rollout.vllm_engine import VLLMEngineConfig


class RolloutServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers (CPU/dev); vllm: GPU.")
    model: str = Field(min_length=1, description="Hugging Face model directory.")
    host: str = Field(LOCAL_BIND_HOST, description="Interface to listen on (0.0.0.0 or the pod IP in a pod).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    run: str = Field("", description="Value of the `run` label of every metric.")
    replica: str = Field("", description="Value of the `replica` label of every metric.")
    hf: HFEngineConfig = Field(default_factory=HFEngineConfig, description="HFEngine settings.")
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig, description="VLLMEngine settings.")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Batching and swap policy.")


def build_engine(config: RolloutServerConfig) -> RolloutEngine:
    if config.engine == "hf":
        return HFEngine.from_pretrained(config.model, config.hf)
    from forkrl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(config.model, config.vllm)
