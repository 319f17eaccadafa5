"""`VLLMEngine`: the production GPU rollout engine on vLLM's v1 `AsyncLLM` (needs `forkrl[gpu]`).

vLLM is imported lazily, so this module loads without it; the translation functions at the top are
pure and tested on CPU against the real vLLM classes. The engine:
- submits each of the `n` samples of a prompt as its own request with a derived seed (the prompt's KV
  blocks are shared through prefix caching) and `logprobs=0` in `processed_logprobs` mode, so every
  sample carries the log-prob of its token under the distribution it was drawn from, like `HFEngine`;
- resolves unset sampling values from the model's generation config (`generation_config="auto"`);
- registers the dual-temperature logits processor of the model runner vLLM builds for its config (vLLM
  0.33 builds the V2 runner on CUDA and falls back to V1 where V2 lacks a feature; each runner's loader
  accepts only its own interface), and the `ForkrlWorkerExtension` weight receiver;
- attaches to each sample the exact number of its tokens drawn at the high temperature: the workers keep
  the counts by sample until read, and finished samples are read together (`BatchedLookup`: one
  collective RPC per wave of finishing samples, not one per sample). vLLM gives a logits processor no way
  to return a value with a request's output, hence the RPC; see `dual_temperature_state.py`;
- tags weights with vLLM's weight version and reads the per-sample version spans back (no mixing).
`AsyncLLM` runs on a private event loop thread so that weight-sync RPCs can overlap generation.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from forkrl.rollout.batched_lookup import BatchedLookup
from forkrl.rollout.dual_temperature import EXTRA_ARGS_KEY, SAMPLE_KEY
from forkrl.rollout.engine import (
    EngineHealth,
    EngineUnavailableError,
    ResultCallback,
    WeightSyncConflictError,
    check_request_fits,
)
from forkrl.rollout.sampling import GenerationDefaults, resolve_sampling, stream_keys
from forkrl.rollout.types import GenerateRequest, GenerateResult, RequestValidationError, SampleResult
from forkrl.rollout.weight_sync import WeightSyncBegin

ModelRunner = Literal["v1", "v2"]
DUAL_TEMPERATURE_PROCESSORS: dict[ModelRunner, str] = {
    "v2": "forkrl.rollout.vllm_logits_processor_v2:DualTemperatureLogitsProcessorV2",
    "v1": "forkrl.rollout.vllm_logits_processor:DualTemperatureLogitsProcessor",
}
WORKER_EXTENSION = "forkrl.rollout.vllm_worker.ForkrlWorkerExtension"


class VLLMEngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per replica.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    max_model_len: int | None = Field(None, ge=16, description="Context length; default: the model's.")
    max_num_seqs: int = Field(256, ge=1, le=65536, description="Sequences decoded together.")
    dtype: str = Field("auto", description="Weights dtype (auto, bfloat16, float16, float32).")
    seed: int = Field(0, ge=0, description="Engine seed; also seeds the draws of unseeded requests.")
    enable_prefix_caching: bool = Field(True, description="Share prompt KV blocks between samples.")
    enable_sleep_mode: bool = Field(True, description="Allow sleep/wake (frees KV and weights memory).")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs.")
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="auto: weights from the path (version 0); dummy: random init, no version."
    )
    dual_temperature: bool = Field(
        True,
        description="Register the dual-temperature logits processor (on vLLM's V1 runner: chunked prefill off).",
    )
    staging_device: Literal["cpu", "cuda"] = Field("cpu", description="Where a received sync is staged.")


def engine_args_for(model_path: str, config: VLLMEngineConfig, runner: ModelRunner = "v2") -> dict[str, Any]:
    """Keyword arguments of vLLM's `AsyncEngineArgs` for a vLLM that builds the `runner` model runner."""
    args: dict[str, Any] = {
        "model": model_path,
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "max_num_seqs": config.max_num_seqs,
        "dtype": config.dtype,
        "seed": config.seed,
        "enable_prefix_caching": config.enable_prefix_caching,
        "enable_sleep_mode": config.enable_sleep_mode,
        "enforce_eager": config.enforce_eager,
        "load_format": config.load_format,
        "logprobs_mode": "processed_logprobs",
        "generation_config": "auto",
        "worker_extension_cls": WORKER_EXTENSION,
    }
    if config.max_model_len is not None:
        args["max_model_len"] = config.max_model_len
    if config.dual_temperature:
        args["logits_processors"] = [DUAL_TEMPERATURE_PROCESSORS[runner]]
        if runner == "v1":  # V1 shows no positions: a prefill chunk's discarded row would count as a token
            args["enable_chunked_prefill"] = False
            if config.max_model_len is not None:
                args["max_num_batched_tokens"] = max(config.max_model_len, 8192)
    return args


def model_runner_of(vllm_config: Any) -> ModelRunner:
    """The model runner vLLM builds for a `VllmConfig` (the property its frontend and workers decide by)."""
    return "v2" if vllm_config.use_v2_model_runner else "v1"


def build_vllm_config(model_path: str, config: VLLMEngineConfig) -> tuple[Any, Any, ModelRunner]:
    """(VllmConfig, AsyncEngineArgs, runner): what vLLM builds for this engine, with the dual-temperature
    processor of the runner that config selects.

    The config is built with the V2 processor (vLLM's default runner on CUDA; the runner choice does not
    depend on the processors) and built again with the V1 arguments only when it selects V1, whose
    processor needs chunked prefill off, a scheduler setting fixed at build time.
    """
    from vllm import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    args = AsyncEngineArgs(**engine_args_for(model_path, config, "v2"))
    vllm_config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    runner = model_runner_of(vllm_config)
    if runner == "v1" and config.dual_temperature:
        args = AsyncEngineArgs(**engine_args_for(model_path, config, "v1"))
        vllm_config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        if model_runner_of(vllm_config) != "v1":
            raise RuntimeError("vLLM chose its model runner differently with chunked prefill off")
    return vllm_config, args, runner


def merge_rank_counts(emitted: dict[str, int], per_rank: Sequence[dict[str, int]]) -> dict[str, int]:
    """High-temperature counts by sample key from the workers' answers.

    The ranks that hold a key (every tensor-parallel rank of the last pipeline stage) computed it from the
    same logits, so any one answers. A key no rank holds never reached a worker (aborted before it was
    scheduled): its count is exactly 0 if it emitted nothing, and unknown otherwise (raises).
    """
    counts: dict[str, int] = {}
    for answer in per_rank:
        for key, count in (answer or {}).items():
            counts.setdefault(key, int(count))
    lost = [key for key, n in emitted.items() if key not in counts and n > 0]
    if lost:
        raise RuntimeError(f"no vLLM worker holds the high-temperature count of samples {lost}")
    return {key: counts.get(key, 0) for key in emitted}


def generation_defaults_from(diff: dict[str, Any]) -> GenerationDefaults:
    """From vLLM's `ModelConfig.get_diff_sampling_param()` (eos handling stays inside vLLM)."""
    return GenerationDefaults(temperature=diff.get("temperature"), top_p=diff.get("top_p"), top_k=diff.get("top_k"))


def sample_seed(seed: int, sample_index: int) -> int:
    """vLLM seed of sample j of a request: the request's SplitMix64 stream key, 63 bits."""
    return int(stream_keys(seed, [sample_index])[0] >> np.uint64(1))


def to_vllm_sampling_params(
    request: GenerateRequest,
    sample_index: int,
    seed: int,
    defaults: GenerationDefaults,
    sample_key: str | None = None,
):
    """vLLM `SamplingParams` of sample `sample_index` of `request` (n = 1, FINAL_ONLY output).

    `sample_key`: the key of the sample's dual-temperature state in the workers; it must be unique among
    the samples a replica has not finished (VLLMEngine passes the vLLM request id)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    resolved = resolve_sampling(request.sampling, defaults)
    extra_args = None
    if resolved.dual_temperature is not None:
        extra_args = {
            EXTRA_ARGS_KEY: resolved.dual_temperature.model_dump(),
            SAMPLE_KEY: sample_key or f"{request.request_id}/{sample_index}/{seed}",
        }
    return SamplingParams(
        n=1,
        temperature=0.0 if resolved.greedy else resolved.temperature,
        top_p=resolved.top_p,
        top_k=resolved.top_k,
        seed=sample_seed(seed, sample_index),
        max_tokens=request.max_new_tokens,
        stop_token_ids=list(request.stop_token_ids),
        ignore_eos=request.ignore_eos,
        logprobs=0,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
        extra_args=extra_args,
    )


def sample_from_completion(completion: Any, fallback_version: int) -> SampleResult:
    """`SampleResult` from a vLLM `CompletionOutput` requested with `logprobs=0`.

    A sample whose tokens span several weight versions (cannot happen under the service's swap protocol)
    is reported as aborted so that it is never trained on.
    """
    token_ids = [int(t) for t in completion.token_ids]
    entries = completion.logprobs or []
    logprobs = [float(entries[i][token].logprob) for i, token in enumerate(token_ids) if i < len(entries)]
    if len(logprobs) != len(token_ids):
        raise ValueError(f"logprobs: {len(logprobs)} log-probs for {len(token_ids)} tokens")
    spans = completion.weight_versions or []
    versions = {span.version for span in spans}
    finish = completion.finish_reason or "abort"
    if finish not in ("stop", "length", "abort"):
        finish = "abort"
    if len(versions) > 1:
        finish = "abort"
    version = int(next(iter(versions))) if len(versions) == 1 else fallback_version
    return SampleResult(token_ids=token_ids, logprobs=logprobs, finish_reason=finish, weight_version=version)


class VLLMEngine:
    def __init__(self, model_path: str, config: VLLMEngineConfig | None = None) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        self.config = config or VLLMEngineConfig()
        self.model_name = model_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()
        vllm_config, args, self.model_runner = build_vllm_config(model_path, self.config)
        self.engine = self._run(self._create(AsyncLLM, vllm_config, args))
        model_config = self.engine.model_config
        self.defaults = generation_defaults_from(model_config.get_diff_sampling_param())
        self.max_context = int(model_config.max_model_len)
        self.vocab_size = int(model_config.get_vocab_size())
        self._version: int | None = 0 if self.config.load_format == "auto" else None
        self._sleeping = False
        self._sync_state: tuple[str, str] = ("idle", "")
        self._lock = threading.RLock()
        self._seed_rng = np.random.default_rng(self.config.seed)
        if self._version is not None:
            self._run(self.engine.update_weight_version(str(self._version)))

    async def _create(self, cls, vllm_config, args):
        # On the loop thread: AsyncLLM starts its output handler on the running loop.
        return cls.from_vllm_config(
            vllm_config, enable_log_requests=args.enable_log_requests, disable_log_stats=args.disable_log_stats
        )

    def _run(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        return self._run(self.engine.collective_rpc(method, args=args))

    @property
    def weight_version(self) -> int | None:
        return self._version

    def validate_request(self, request: GenerateRequest) -> None:
        check_request_fits(request, self.model_name, self.vocab_size, self.max_context)
        if request.sampling.dual_temperature is not None and not self.config.dual_temperature:
            raise RequestValidationError("sampling.dual_temperature", "engine started without the processor")

    def generate(
        self,
        requests: Sequence[GenerateRequest],
        *,
        on_result: ResultCallback | None = None,
        abort: threading.Event | None = None,
        on_phase: Callable[[str, float], None] | None = None,
    ) -> list[GenerateResult]:
        with self._lock:
            if self._sleeping or self._version is None:
                raise EngineUnavailableError("engine is sleeping" if self._sleeping else "engine has no weights")
            for request in requests:
                self.validate_request(request)
            started = time.perf_counter()
            results = self._run(self._generate(list(requests), on_result, abort, self._version))
            if on_phase is not None:
                on_phase("generate", time.perf_counter() - started)
            return results

    async def _generate(self, requests, on_result, abort, version: int) -> list[GenerateResult]:
        seeds = [r.seed if r.seed is not None else int(self._seed_rng.integers(0, 2**63)) for r in requests]
        ids = {(i, j): f"{r.request_id}/{j}/{uuid.uuid4().hex[:8]}" for i, r in enumerate(requests) for j in range(r.n)}
        high_temperature_counts: BatchedLookup[int, int] = BatchedLookup(self._high_temperature_counts)

        async def one_sample(i: int, j: int) -> SampleResult:
            params = to_vllm_sampling_params(requests[i], j, seeds[i], self.defaults, sample_key=ids[(i, j)])
            final = None
            prompt = {"prompt_token_ids": list(requests[i].prompt_token_ids)}
            async for output in self.engine.generate(prompt, params, ids[(i, j)]):
                final = output
            sample = sample_from_completion(final.outputs[0], version)
            if params.extra_args:
                sample.num_high_temperature_tokens = await high_temperature_counts.lookup(
                    params.extra_args[SAMPLE_KEY], len(sample.token_ids)
                )
            return sample

        async def one_request(i: int) -> GenerateResult:
            samples = await asyncio.gather(*(one_sample(i, j) for j in range(requests[i].n)))
            result = GenerateResult(requests[i].request_id, list(samples), seeds[i], len(requests[i].prompt_token_ids))
            if on_result is not None:
                on_result(i, result)
            return result

        async def watch_abort() -> None:
            while abort is not None:
                if abort.is_set():
                    await self.engine.abort(list(ids.values()))
                    return
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch_abort())
        try:
            return list(await asyncio.gather(*(one_request(i) for i in range(len(requests)))))
        finally:
            watcher.cancel()

    async def _high_temperature_counts(self, emitted: dict[str, int]) -> dict[str, int]:
        per_rank = await self.engine.collective_rpc("forkrl_high_temperature_counts", args=(emitted,))
        return merge_rank_counts(emitted, per_rank)

    # Weights ----------------------------------------------------------------------------------------

    def _install(self, version: int) -> None:
        self._run(self.engine.reset_prefix_cache())  # cached KV was computed by the old weights
        self._run(self.engine.update_weight_version(str(version)))
        self._version = version

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """In-process tensors (Ray actor, tests): shipped to the workers through the RPC channel."""
        with self._lock:
            self._rpc("forkrl_load_tensors", [(name, tensor.detach().cpu()) for name, tensor in weights])
            self._install(version)

    def load_checkpoint(self, path: str, version: int) -> None:
        with self._lock:
            self._rpc("forkrl_load_checkpoint", path)
            self._install(version)

    def begin_weight_sync(self, begin: WeightSyncBegin, token: str | None = None) -> None:
        try:
            self._rpc("forkrl_begin_weight_sync", begin.model_dump(), self.config.staging_device, token)
        except RuntimeError as exc:
            raise WeightSyncConflictError(str(exc)) from exc

    def commit_weight_sync(self, version: int, timeout_s: float) -> None:
        with self._lock:
            self._rpc("forkrl_commit_weight_sync", version, timeout_s)
            self._install(version)

    def abort_weight_sync(self) -> None:
        self._rpc("forkrl_abort_weight_sync")

    def sleep(self, level: int = 1) -> None:
        with self._lock:
            self._run(self.engine.sleep(level))
            self._sleeping = True
            if level == 2:
                self._version = None

    def wake(self) -> None:
        with self._lock:
            self._run(self.engine.wake_up())
            self._sleeping = False

    def health(self) -> EngineHealth:
        state, error = self._rpc("forkrl_weight_sync_state")[0]
        return EngineHealth(
            engine="vllm",
            model=self.model_name,
            weight_version=self._version,
            sleeping=self._sleeping,
            max_context=self.max_context,
            vocab_size=self.vocab_size,
            weight_receivers=self.config.tensor_parallel_size,
            kv_cache_usage=_kv_cache_usage(),
            weight_sync=state,
            weight_sync_error=error,
            device="cuda",
        )

    def close(self) -> None:
        self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)


def _kv_cache_usage() -> float:
    from vllm.v1.metrics.reader import Gauge, get_metrics_snapshot

    for metric in get_metrics_snapshot():
        if isinstance(metric, Gauge) and metric.name == "vllm:kv_cache_usage_perc":
            return float(metric.value)
    return 0.0
