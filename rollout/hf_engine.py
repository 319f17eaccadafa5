"""`HFEngine`: the CPU / development rollout engine on `transformers`, used by local mode and tests.

Genuinely batched (see `hf_decode.py`), seeded per request, returning the sampling log-prob of every
generated token under the distribution it was sampled from (`types.py` documents the convention).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from forkrl.rollout.engine import (
    EngineHealth,
    EngineUnavailableError,
    ResultCallback,
    WeightSyncConflictError,
    check_request_fits,
)
from forkrl.rollout.hf_attention import use_gqa_sdpa
from forkrl.rollout.hf_decode import DecodeContext, RequestPlan, decode_chunk, plan_chunks
from forkrl.rollout.sampling import GenerationDefaults, resolve_sampling
from forkrl.rollout.types import GenerateRequest, GenerateResult, SampleResult
from forkrl.rollout.weight_checkpoint import iter_checkpoint_tensors
from forkrl.rollout.weight_sync import ParamSpec, WeightReceiver, WeightSyncBegin


class HFEngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(512, ge=1, le=65536, description="Rows (samples) decoded together.")
    max_context: int | None = Field(
        None, ge=2, description="Prompt + generated tokens per sample; default: the model's positions."
    )
    dtype: Literal["auto", "float32", "float64", "bfloat16"] = Field("auto", description="Weights dtype.")
    device: str = Field("cpu", description="torch device of the model.")
    seed: int | None = Field(None, ge=0, description="Seeds the draws of seeds for unseeded requests.")
    compact_fraction: float = Field(
        0.25, gt=0, le=1, description="Drop finished rows from the batch once this fraction has finished."
    )
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="auto: weights from the path (version 0); dummy: random init, no version."
    )
    grouped_query_sdpa: bool = Field(
        True,
        description="On CPU, hand SDPA grouped key/value heads as they are instead of transformers' copy to every "
        "query head (rollout/hf_attention.py; same values, about half the attention time). The engine switches "
        "its model's attention implementation.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch intra-op threads, process-wide (from_pretrained sets it); small models on "
        "shared cores run fastest with 1.",
    )


def generation_defaults(model: PreTrainedModel) -> GenerationDefaults:
    """Sampling values set in the model's generation config, and its end-of-sequence ids."""
    config = model.generation_config
    diff = config.to_diff_dict() if config is not None else {}
    eos: set[int] = set()
    for source in (getattr(config, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, list | tuple):
            eos.update(int(x) for x in source)
    return GenerationDefaults(
        temperature=diff.get("temperature"),
        top_p=diff.get("top_p"),
        top_k=diff.get("top_k"),
        eos_token_ids=tuple(sorted(eos)),
    )


class HFEngine:
    def __init__(
        self,
        model: PreTrainedModel,
        *,
        model_name: str = "model",
        config: HFEngineConfig | None = None,
        weight_version: int | None = 0,
    ) -> None:
        self.config = config or HFEngineConfig()
        self.model = model.eval().requires_grad_(False)
        if self.config.grouped_query_sdpa:
            use_gqa_sdpa(self.model)
        self.model_name = model_name
        self.device = torch.device(self.config.device)
        self.defaults = generation_defaults(model)
        self.vocab_size = int(model.config.vocab_size)
        self.max_context = self.config.max_context or int(model.config.max_position_embeddings)
        self.pad_token_id = int(getattr(model.config, "pad_token_id", None) or 0)
        self.expected = {n: ParamSpec(tuple(t.shape), t.dtype) for n, t in model.state_dict().items()}
        self.required = {name for name, _ in model.named_parameters()}
        self._version = weight_version
        self._sleep_level = 0
        self._lock = threading.RLock()
        self._receiver: WeightReceiver | None = None
        self._sync_lock = threading.Lock()  # receiving overlaps generation; only the install takes _lock
        self._seed_rng = np.random.default_rng(self.config.seed)
        self._kv_tokens = 0
        self._stashed_buffers: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, config: HFEngineConfig | None = None) -> HFEngine:
        config = config or HFEngineConfig()
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model: {path} is not a model directory")
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        if config.load_format == "dummy":
            model_config = AutoConfig.from_pretrained(path)
            if dtype == "auto":  # from_config wants a concrete dtype: the checkpoint's
                saved = getattr(model_config, "dtype", None) or torch.float32
                dtype = getattr(torch, saved) if isinstance(saved, str) else saved
            model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
            version = None
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            version = 0
        return cls(model.to(config.device), model_name=str(path), config=config, weight_version=version)

    @property
    def weight_version(self) -> int | None:
        return self._version

    def validate_request(self, request: GenerateRequest) -> None:
        check_request_fits(request, self.model_name, self.vocab_size, self.max_context)

    def _check_can_generate(self) -> None:
        if self._sleep_level:
            raise EngineUnavailableError("engine is sleeping")
        if self._version is None:
            raise EngineUnavailableError("engine has no weights (push a weight version)")

    def generate(
        self,
        requests: Sequence[GenerateRequest],
        *,
        on_result: ResultCallback | None = None,
        abort: threading.Event | None = None,
        on_phase: Callable[[str, float], None] | None = None,
    ) -> list[GenerateResult]:
        with self._lock:
            self._check_can_generate()
            for request in requests:
                self.validate_request(request)
            started = time.perf_counter()
            plans = [self._plan(request) for request in requests]
            results: list[GenerateResult | None] = [None] * len(requests)
            remaining = [request.n for request in requests]

            def on_sample(index: int, sample_index: int, sample: SampleResult) -> None:
                plans[index].samples[sample_index] = sample
                remaining[index] -= 1
                if remaining[index] == 0:
                    results[index] = GenerateResult(
                        request_id=requests[index].request_id,
                        samples=list(plans[index].samples),  # type: ignore[arg-type]
                        seed=plans[index].seed,
                        prompt_length=len(requests[index].prompt_token_ids),
                        generate_seconds=time.perf_counter() - started,
                    )
                    if on_result is not None:
                        on_result(index, results[index])  # type: ignore[arg-type]

            ctx = DecodeContext(
                model=self.model,
                device=self.device,
                weight_version=self._version,  # type: ignore[arg-type]
                pad_token_id=self.pad_token_id,
                compact_fraction=self.config.compact_fraction,
                abort=abort,
                on_sample=on_sample,
                on_phase=on_phase or (lambda phase, seconds: None),
                on_kv_tokens=self._set_kv_tokens,
            )
            for chunk in plan_chunks(list(requests), self.config.max_batch_size):
                decode_chunk(ctx, chunk, plans)
            return results  # type: ignore[return-value]

    def _plan(self, request: GenerateRequest) -> RequestPlan:
        seed = request.seed if request.seed is not None else int(self._seed_rng.integers(0, 2**63))
        stops = list(dict.fromkeys(request.stop_token_ids))
        if not request.ignore_eos:
            stops += [i for i in self.defaults.eos_token_ids if i not in stops]
        return RequestPlan(
            request=request,
            seed=seed,
            sampling=resolve_sampling(request.sampling, self.defaults),
            stop_ids=stops,
            samples=[None] * request.n,
        )

    def _set_kv_tokens(self, tokens: int) -> None:
        self._kv_tokens = tokens

    # Weights ----------------------------------------------------------------------------------------

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        with self._lock:
            if self._sleep_level:
                raise EngineUnavailableError("engine is sleeping; wake it before installing weights")
            staged: dict[str, torch.Tensor] = {}
            for name, tensor in weights:
                spec = self.expected.get(name)
                if spec is None:
                    raise ValueError(f"weights: unknown parameter name {name!r}")
                if tuple(tensor.shape) != spec.shape:
                    raise ValueError(f"weights: {name} has shape {tuple(tensor.shape)}, expected {spec.shape}")
                staged[name] = tensor
            missing = self.required - set(staged)
            if missing:
                raise ValueError(f"weights: missing {len(missing)} parameters, e.g. {sorted(missing)[:4]}")
            state = self.model.state_dict()
            with torch.no_grad():
                for name, tensor in staged.items():
                    state[name].copy_(tensor.to(device=state[name].device, dtype=state[name].dtype))
            self._version = version

    def load_checkpoint(self, path: str, version: int) -> None:
        self.update_weights(iter_checkpoint_tensors(path), version)

    def begin_weight_sync(self, begin: WeightSyncBegin, token: str | None = None) -> None:
        with self._sync_lock:
            if self._receiver is not None and self._receiver.state == "receiving":
                raise WeightSyncConflictError(
                    f"version: sync of version {self._receiver.begin.version} is still receiving"
                )
            device = self.device if begin.backend == "nccl" else torch.device("cpu")  # gloo carries CPU tensors
            self._receiver = WeightReceiver(begin, device=device, expected=self.expected, required=self.required,
                                            token=token)
            self._receiver.start()

    def commit_weight_sync(self, version: int, timeout_s: float) -> None:
        with self._sync_lock:
            receiver = self._receiver
        if receiver is None:
            raise WeightSyncConflictError("version: no weight sync was begun")
        if receiver.begin.version != version:
            raise WeightSyncConflictError(f"version: begun sync is version {receiver.begin.version}, not {version}")
        # A failed receive raises here and stays visible in health() until the next begin.
        staged = receiver.join(timeout_s)
        self.update_weights(staged.items(), version)
        with self._sync_lock:
            if self._receiver is receiver:
                self._receiver = None

    def abort_weight_sync(self) -> None:
        # A receiving thread cannot be interrupted; it fails on its own when the sender goes away.
        self._receiver = None

    # Lifecycle --------------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        if level not in (1, 2):
            raise ValueError(f"level: must be 1 or 2, got {level}")
        with self._lock:
            if level == 2 and self._sleep_level < 2:
                # Non-persistent buffers (rotary tables) are not part of a weight push: keep them.
                self._stashed_buffers = {n: b.clone() for n, b in self.model.named_buffers()}
                self.model.to("meta")
                self._version = None
            self._sleep_level = max(self._sleep_level, level)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def wake(self) -> None:
        with self._lock:
            if self._sleep_level == 2:
                self.model.to_empty(device=self.device)
                with torch.no_grad():
                    for name, buffer in self.model.named_buffers():
                        buffer.copy_(self._stashed_buffers[name])
                self.model.tie_weights()
                self._stashed_buffers = {}
            self._sleep_level = 0

    def health(self) -> EngineHealth:
        receiver = self._receiver
        budget = self.config.max_batch_size * self.max_context
        return EngineHealth(
            engine="hf",
            model=self.model_name,
            weight_version=self._version,
            sleeping=bool(self._sleep_level),
            max_context=self.max_context,
            vocab_size=self.vocab_size,
            weight_receivers=1,
            kv_cache_usage=min(1.0, self._kv_tokens / budget),
            weight_sync=receiver.state if receiver is not None else "idle",
            weight_sync_error=receiver.error if receiver is not None else "",
            device=self.device.type,
        )

    def close(self) -> None:
        self._receiver = None
