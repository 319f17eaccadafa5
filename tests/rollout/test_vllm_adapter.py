"""VLLMEngine's translation layer against the real vLLM classes on CPU (engine args, the config vLLM
builds and the runner it selects, SamplingParams, CompletionOutput, per-rank counts). The processors:
test_vllm_logits_processor.py (V1 runner), test_vllm_logits_processor_v2.py (V2 runner). The GPU test at
the end runs the whole engine."""

from __future__ import annotations

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm import AsyncEngineArgs  # noqa: E402
from vllm import SamplingParams as VSamplingParams  # noqa: E402
from vllm.logprobs import Logprob  # noqa: E402
from vllm.outputs import CompletionOutput, WeightVersionSpan  # noqa: E402
from vllm.sampling_params import RequestOutputKind  # noqa: E402
from vllm.v1.sample.logits_processor import _load_custom_logitsprocs as load_custom  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    validate_logits_processors_parameters,
)

from forkrl.rollout.dual_temperature import EXTRA_ARGS_KEY, SAMPLE_KEY, entropy_at_unit_temperature  # noqa: E402
from forkrl.rollout.sampling import GenerationDefaults  # noqa: E402
from forkrl.rollout.types import DualTemperatureParams, GenerateRequest, SamplingParams  # noqa: E402
from forkrl.rollout.vllm_engine import (  # noqa: E402
    DUAL_TEMPERATURE_PROCESSORS,
    VLLMEngineConfig,
    build_vllm_config,
    engine_args_for,
    merge_rank_counts,
    sample_from_completion,
    sample_seed,
    to_vllm_sampling_params,
)
from forkrl.rollout.vllm_logits_processor import DualTemperatureLogitsProcessor  # noqa: E402
from forkrl.rollout.vllm_logits_processor_v2 import DualTemperatureLogitsProcessorV2  # noqa: E402
from tests.rollout.helpers import one_torch_thread, save_model, tiny  # noqa: E402

DUAL = DualTemperatureParams(t_high=1.6, t_low=0.6, threshold=0.7)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def test_engine_args_are_real_vllm_engine_args() -> None:
    config = VLLMEngineConfig(max_model_len=4096, tensor_parallel_size=2)
    engine_args = AsyncEngineArgs(**engine_args_for("/models/x", config))
    assert engine_args.logprobs_mode == "processed_logprobs"
    assert engine_args.enable_prefix_caching is True
    assert engine_args.generation_config == "auto"
    assert engine_args.worker_extension_cls == "forkrl.rollout.vllm_worker.ForkrlWorkerExtension"
    assert engine_args.tensor_parallel_size == 2
    assert engine_args.logits_processors == [DUAL_TEMPERATURE_PROCESSORS["v2"]]
    assert engine_args.enable_chunked_prefill is None  # the V2 processor sees prefill chunks; vLLM decides
    v1 = AsyncEngineArgs(**engine_args_for("/models/x", config, runner="v1"))
    assert v1.enable_chunked_prefill is False
    (loaded,) = load_custom(tuple(v1.logits_processors))
    assert loaded is DualTemperatureLogitsProcessor
    no_dual = engine_args_for("/models/x", VLLMEngineConfig(dual_temperature=False), runner="v1")
    assert "logits_processors" not in no_dual and "enable_chunked_prefill" not in no_dual


@pytest.mark.parametrize("forced_runner", [None, "0"], ids=["default", "VLLM_USE_V2_MODEL_RUNNER=0"])
def test_the_runner_vllm_builds_loads_the_registered_processor(tmp_path, monkeypatch, forced_runner) -> None:
    """What VLLMEngine builds, up to the processors: vLLM's config for the engine's default settings, then
    a dual-temperature request validated and the registered processor built by the loader of the runner
    that config selects (V2 by default, on CUDA and here; V1 when forced). A vLLM that changes either side
    fails here first."""
    from types import SimpleNamespace

    from vllm.platforms import current_platform
    from vllm.v1.worker.gpu.sample.logits_processor import (
        build_custom_logits_processors,
        build_custom_logits_processors_params_validator,
    )

    if forced_runner is None:
        monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    else:
        monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", forced_runner)
    config = VLLMEngineConfig(max_model_len=256, max_num_seqs=8)
    if current_platform.is_unspecified():  # no GPU: give vLLM a device type; its sleep mode needs a GPU
        monkeypatch.setattr(current_platform, "device_type", "cpu")
        config = config.model_copy(update={"enable_sleep_mode": False})  # neither enters the runner choice
    vllm_config, _, runner = build_vllm_config(str(save_model(tmp_path / "model")), config)
    assert runner == ("v2" if forced_runner is None else "v1")
    assert vllm_config.use_v2_model_runner == (runner == "v2")
    registered = vllm_config.model_config.logits_processors
    assert registered == [DUAL_TEMPERATURE_PROCESSORS[runner]]
    assert vllm_config.scheduler_config.enable_chunked_prefill == (runner == "v2")
    request = GenerateRequest(prompt_token_ids=[1, 2], sampling=SamplingParams(dual_temperature=DUAL))
    params = to_vllm_sampling_params(request, 0, 1, GenerationDefaults())
    if vllm_config.use_v2_model_runner:
        build_custom_logits_processors_params_validator(registered)(params)
        # The RequestState fields the builder hands to processors (the real one needs pinned memory).
        request_state = SimpleNamespace(
            device=torch.device("cpu"),
            max_num_reqs=8,
            vocab_size=64,
            all_token_ids=None,
            prompt_len=None,
            prefill_len=None,
            total_len=None,
        )
        (processor,) = build_custom_logits_processors(vllm_config, request_state, False, registered)
        assert isinstance(processor, DualTemperatureLogitsProcessorV2)
        assert processor.add_request(0, params) is True
    else:
        validate_logits_processors_parameters(registered, params)
        # build_logitsprocs also builds vLLM's built-in processors, which need pinned memory: load only ours.
        (loaded,) = load_custom(tuple(registered))
        processor = loaded(vllm_config, torch.device("cpu"), False)
        assert isinstance(processor, DualTemperatureLogitsProcessor)
        assert processor.row_of_index.shape == (8,)  # sized from the built scheduler config


def test_rank_answers_merge_into_one_count_per_sample() -> None:
    answers = [{"a": 3, "b": 0}, {"a": 3, "b": 0}, {}]  # two TP ranks of the last stage, one earlier stage
    assert merge_rank_counts({"a": 7, "b": 2, "never-scheduled": 0}, answers) == {
        "a": 3,
        "b": 0,
        "never-scheduled": 0,
    }
    with pytest.raises(RuntimeError, match="lost"):
        merge_rank_counts({"a": 7, "lost": 1}, answers)


def test_sampling_params_translation() -> None:
    request = GenerateRequest(
        request_id="r1",
        prompt_token_ids=[1, 2, 3],
        n=3,
        max_new_tokens=17,
        stop_token_ids=[9],
        seed=5,
        sampling=SamplingParams(top_p=0.9),
    )
    defaults = GenerationDefaults(temperature=0.7, top_k=20)
    params = [to_vllm_sampling_params(request, j, 5, defaults) for j in range(3)]
    first = params[0]
    assert isinstance(first, VSamplingParams)
    assert (first.n, first.temperature, first.top_p, first.top_k) == (1, 0.7, 0.9, 20)
    assert (first.max_tokens, first.stop_token_ids, first.ignore_eos) == (17, [9], False)
    assert first.logprobs == 0 and first.detokenize is False
    assert first.output_kind == RequestOutputKind.FINAL_ONLY
    assert first.extra_args is None
    assert len({p.seed for p in params}) == 3
    assert [p.seed for p in params] == [sample_seed(5, j) for j in range(3)]

    greedy = to_vllm_sampling_params(
        request.model_copy(update={"sampling": SamplingParams(temperature=0)}), 0, 5, defaults
    )
    assert greedy.temperature == 0.0 and greedy.top_p == 1.0 and greedy.top_k == 0


def test_dual_temperature_translation_is_accepted_by_the_processor() -> None:
    request = GenerateRequest(request_id="r2", prompt_token_ids=[1], sampling=SamplingParams(dual_temperature=DUAL))
    params = to_vllm_sampling_params(request, 1, 8, GenerationDefaults(temperature=0.5))
    assert params.temperature == 1.0
    assert DualTemperatureParams.model_validate(params.extra_args[EXTRA_ARGS_KEY]) == DUAL
    assert params.extra_args[SAMPLE_KEY] == "r2/1/8"
    keyed = to_vllm_sampling_params(request, 1, 8, GenerationDefaults(), sample_key="r2/1/8f3a")
    assert keyed.extra_args[SAMPLE_KEY] == "r2/1/8f3a"
    DualTemperatureLogitsProcessor.validate_params(params)
    bad = VSamplingParams(temperature=1.0, extra_args={EXTRA_ARGS_KEY: {"t_high": -1}})
    with pytest.raises(ValueError, match="t_high"):
        DualTemperatureLogitsProcessor.validate_params(bad)
    hot = VSamplingParams(temperature=0.8, extra_args={EXTRA_ARGS_KEY: DUAL.model_dump()})
    with pytest.raises(ValueError, match="temperature"):
        DualTemperatureLogitsProcessor.validate_params(hot)


def test_sample_from_completion() -> None:
    completion = CompletionOutput(
        index=0,
        text="",
        token_ids=[5, 7, 1],
        cumulative_logprob=None,
        logprobs=[{5: Logprob(-0.5)}, {7: Logprob(-1.25), 3: Logprob(-0.1)}, {1: Logprob(-2.0)}],
        finish_reason="stop",
        weight_versions=[WeightVersionSpan("4", 0, 3)],
    )
    sample = sample_from_completion(completion, fallback_version=0)
    assert (sample.token_ids, sample.logprobs) == ([5, 7, 1], [-0.5, -1.25, -2.0])
    assert (sample.finish_reason, sample.weight_version) == ("stop", 4)
    completion.weight_versions = [WeightVersionSpan("4", 0, 1), WeightVersionSpan("5", 1, 3)]
    assert sample_from_completion(completion, 0).finish_reason == "abort"  # mixed versions: never trained on



def _high_decisions(model, prompt: list[int], tokens: list[int], dual: DualTemperatureParams) -> tuple[int, int]:
    """(clearly high, too close to call) decisions of an absolute threshold over the emitted tokens, from a
    float64 CPU pass: GPU float32 entropies may differ by ~1e-5, so tokens that near tau can go either way."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].double()
    entropy = entropy_at_unit_temperature(logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)])
    near = (entropy - dual.threshold).abs() < 1e-3
    return int(((entropy > dual.threshold) & ~near).sum()), int(near.sum())


@pytest.mark.gpu
def test_vllm_engine_generates_with_processed_logprobs(tmp_path) -> None:
    from forkrl.rollout.vllm_engine import VLLMEngine
    from tests.rollout.helpers import reference_logprobs, save_model

    path = save_model(tmp_path / "model", dtype="float32")
    engine = VLLMEngine(str(path), VLLMEngineConfig(gpu_memory_utilization=0.3, max_model_len=256, enforce_eager=True))
    try:
        model, tokenizer = tiny(0, "float32")
        prompt = tokenizer("What is 3+4?").input_ids
        requests = [
            GenerateRequest(prompt_token_ids=prompt, n=4, max_new_tokens=16, seed=3, sampling={"temperature": 0.8}),
            GenerateRequest(
                prompt_token_ids=prompt, n=4, max_new_tokens=16, seed=3, sampling={"dual_temperature": DUAL}
            ),
        ]
        results = engine.generate(requests)
        assert engine.model_runner == "v2"  # what vLLM 0.33 builds on CUDA
        for sample in results[0].samples:
            expected = reference_logprobs(model, prompt, sample.token_ids, 0.8)
            assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), expected, atol=2e-3)
        for sample in results[1].samples:
            clear, near = _high_decisions(model, prompt, sample.token_ids, DUAL)
            assert clear <= sample.num_high_temperature_tokens <= clear + near
        assert all(s.weight_version == 0 for r in results for s in r.samples)
        new_model, _ = tiny(1, "float32")
        engine.update_weights(new_model.named_parameters(), version=1)
        assert engine.generate(requests[:1])[0].samples[0].weight_version == 1
    finally:
        engine.close()
