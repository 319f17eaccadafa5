"""Specs of the services a run talks to: the model, the rollout replicas and the reward verifier."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forkrl.rollout.tiny_model import TinyModelSpec
from forkrl.rollout.types import SamplingParams
from forkrl.rollout.verifier.config import CodeRewardConfig, MathRewardConfig


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Spec):
    """The policy: a Hugging Face checkpoint directory, or a tiny random model built from a config."""

    path: str | None = Field(
        None, description="Hugging Face model directory (config.json, safetensors, tokenizer). Exclusive with tiny."
    )
    tiny: TinyModelSpec | None = Field(
        None, description="Build a tiny Qwen2-architecture model with random init and the offline char tokenizer."
    )
    max_prompt_tokens: int = Field(512, ge=1, le=1_000_000, description="Prompts longer than this are skipped.")
    max_response_tokens: int = Field(
        256, ge=1, le=1_000_000, description="Generation cap per response (L_max of overlong shaping)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("model: set exactly one of `path` (a Hugging Face checkpoint) or `tiny`")
        return self


class WeightSyncSpec(_Spec):
    """How new weights reach the rollout replicas after every update."""

    method: Literal["broadcast", "checkpoint"] = Field(
        "broadcast", description="Push over a collective from the learner (no disk), or write a safetensors "
        "directory under checkpoint.dir (shared storage) that replicas load."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Collective of a broadcast: auto = NCCL when the learner and every replica hold "
        "their weights on GPU, else gloo. nccl with a CPU side is rejected."
    )
    timeout_s: float = Field(300.0, gt=0, le=86400, description="Rendezvous and per-collective timeout of one sync.")
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, description="checkpoint method: weight directories kept (older ones are pruned)."
    )


class RolloutSpec(_Spec):
    """Rollout replicas: engine, how many, where, and how they sample."""

    engine: Literal["hf", "vllm"] = Field("hf", description="`hf` (transformers, CPU) or `vllm` (GPU).")
    replicas: int = Field(1, ge=0, le=1024, description="Replicas started by forkrl (0 = only `endpoints`).")
    endpoints: list[str] = Field(
        default_factory=list, description="Extra external rollout services (http://host:port), e.g. on Kubernetes."
    )
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(temperature=1.0, top_p=1.0),
        description="Sampling of training rollouts (spec: T = 1.0, top-p 1.0; dual temperature optional). The "
        "temperature must be set and equal learner.temperature; with dual_temperature, t_low must equal it.",
    )
    max_batch_size: int = Field(
        256, ge=1, le=65536, description="Sequences decoded together by one replica (vLLM: max_num_seqs, its own "
        "default). On the `hf` engine a round's samples beyond it decode one batch after another: 768 samples of the "
        "main job's shape took 2.8-3.3 s in batches of 64 and 1.3-1.9 s in batches of 256 (one thread)."
    )
    torch_threads: int = Field(
        1, ge=1, le=1024, description="torch intra-op threads of each `hf` replica (local or a pod). Decoding a "
        "small model is a chain of small ops: on the main job a second thread left the wall time unchanged "
        "and doubled the CPU time (bench/rollout.py --threads)."
    )
    in_flight_on_sync: Literal["finish", "abort"] = Field(
        "finish", description="Requests running when new weights arrive: finish on the old version or abort+retry."
    )
    weight_sync: WeightSyncSpec = Field(default_factory=WeightSyncSpec, description="Weight sync to replicas.")
    connect_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A replica that accepts no connection within this is treated as down."
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A generate stream silent this long (keepalives come every 5 s) is "
        "treated as a lost replica; its requests are retried on the others."
    )
    replica_wait_s: float = Field(
        600.0, gt=0, le=86400, description="When every replica is down, how long a step waits for one to answer "
        "again (pods restarting, a node drained) before the run fails."
    )
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM KV-cache memory share (GPU).")

    @model_validator(mode="after")
    def _some_replica(self) -> RolloutSpec:
        if self.replicas == 0 and not self.endpoints:
            raise ValueError("rollout: replicas is 0 and no endpoints are given; nothing would generate")
        return self


class VerifierSpec(_Spec):
    """The reward-verifier service: an existing endpoint, or a local process started by forkrl."""

    endpoint: str | None = Field(None, description="http://host:port of a running verifier; None = start one.")
    workers: int | None = Field(None, ge=1, le=1024, description="Worker processes of a local verifier (None = CPUs).")
    math: MathRewardConfig = Field(default_factory=MathRewardConfig, description="Math reward settings.")
    code: CodeRewardConfig = Field(default_factory=CodeRewardConfig, description="Code reward settings.")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="Timeout of one verify call.")
    max_retries: int = Field(8, ge=0, le=100, description="Retries (exponential backoff) before a step fails.")
