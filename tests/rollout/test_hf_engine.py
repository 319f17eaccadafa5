"""HFEngine against plain `model.generate` and an independent forward pass; batching invariances;
stop/length/abort; validation; weight installs; sleep levels."""

from __future__ import annotations

import threading

import pytest
import torch

from forkrl.rollout.dual_temperature import DualTemperatureRows, dual_temperature_step, entropy_at_unit_temperature
from forkrl.rollout.engine import EngineUnavailableError, RolloutEngine
from forkrl.rollout.hf_attention import GQA_SDPA
from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
from forkrl.rollout.sampling import apply_top_k_top_p
from forkrl.rollout.types import DualTemperatureParams, GenerateRequest, RequestValidationError, SamplingParams
from tests.rollout.helpers import next_token_logits, one_torch_thread, reference_logprobs, tiny

PROMPTS = ["12+7*3=", "9*9=", "What is 3+4?", "(2+3)*(4-1)="]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def engine64() -> HFEngine:
    model, _ = tiny(0, "float64")
    return HFEngine(model, config=HFEngineConfig(max_batch_size=64))


def _ids(text: str) -> list[int]:
    return tiny(0, "float64")[1](text).input_ids


def test_greedy_matches_model_generate_for_every_prompt_in_one_batch() -> None:
    model, tokenizer = tiny(0, "float32")
    engine = HFEngine(model)
    assert isinstance(engine, RolloutEngine)
    requests = [
        GenerateRequest(prompt_token_ids=tokenizer(p).input_ids, max_new_tokens=24, sampling={"temperature": 0})
        for p in PROMPTS
    ]
    results = engine.generate(requests)
    for request, result in zip(requests, results, strict=True):
        with torch.no_grad():
            plain = model.generate(
                torch.tensor([request.prompt_token_ids]),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        expected = plain[0, len(request.prompt_token_ids) :].tolist()
        assert result.samples[0].token_ids == expected
        stopped = expected[-1] == tokenizer.eos_token_id
        assert result.samples[0].finish_reason == ("stop" if stopped else "length")


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 1.0}, {"temperature": 0.7}, {"temperature": 1.3, "top_p": 0.8}, {"temperature": 0.9, "top_k": 5}],
)
def test_sampling_logprobs_equal_log_softmax_of_the_model(engine64: HFEngine, sampling: dict) -> None:
    model, _ = tiny(0, "float64")
    requests = [
        GenerateRequest(prompt_token_ids=_ids(p), n=3, max_new_tokens=16, seed=17, sampling=sampling) for p in PROMPTS
    ]
    temperature = sampling["temperature"]
    for request, result in zip(requests, engine64.generate(requests), strict=True):
        for sample in result.samples:
            ids = torch.tensor([request.prompt_token_ids + sample.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0].double()[len(request.prompt_token_ids) - 1 : -1] / temperature
            rows = len(sample.token_ids)
            masked = apply_top_k_top_p(
                logits,
                torch.full((rows,), sampling.get("top_k", 0)),
                torch.full((rows,), sampling.get("top_p", 1.0), dtype=torch.float64),
            )
            expected = masked.log_softmax(-1).gather(1, torch.tensor(sample.token_ids).unsqueeze(1)).squeeze(1)
            assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), expected, atol=1e-5)
            if "top_p" not in sampling and "top_k" not in sampling:  # the plain log-softmax of the model
                plain = reference_logprobs(model, request.prompt_token_ids, sample.token_ids, temperature)
                assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), plain, atol=1e-5)


def test_grouped_kv_heads_in_sdpa_sample_what_transformers_attention_samples() -> None:
    """The engine hands SDPA grouped key/value heads as they are (rollout/hf_attention.py); a copy of the model
    on transformers' own SDPA (heads repeated) samples the same tokens with the same log-probs from
    left-padded prompts of different lengths, prefill and decode."""
    model, tokenizer = tiny(0, "float32")
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    grouped = HFEngine(model)
    repeated = HFEngine(tiny(0, "float32")[0], config=HFEngineConfig(grouped_query_sdpa=False))
    assert grouped.model.config._attn_implementation == GQA_SDPA
    assert repeated.model.config._attn_implementation == "sdpa"
    requests = [GenerateRequest(prompt_token_ids=tokenizer(p).input_ids, n=3, max_new_tokens=16, seed=i)
                for i, p in enumerate(PROMPTS)]
    for ours, theirs in zip(grouped.generate(requests), repeated.generate(requests), strict=True):
        assert [s.token_ids for s in ours.samples] == [s.token_ids for s in theirs.samples]
        for a, b in zip(ours.samples, theirs.samples, strict=True):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-6)


def test_models_outside_transformers_attention_interface_keep_their_attention() -> None:
    model, _ = tiny(0, "float32")
    model.__class__ = type("LegacyQwen2", (type(model),), {"_supports_attention_backend": False})
    assert HFEngine(model).model.config._attn_implementation == "sdpa"
    on_cpu, _ = tiny(0, "float32")
    assert HFEngine(on_cpu).model.config._attn_implementation == GQA_SDPA


def test_seeded_samples_do_not_depend_on_batch_composition_or_chunking() -> None:
    model, _ = tiny(0, "float64")
    request = GenerateRequest(prompt_token_ids=_ids("12+7*3="), n=10, max_new_tokens=12, seed=99)
    alone = HFEngine(model).generate([request])[0]
    others = [GenerateRequest(prompt_token_ids=_ids(p), n=3, max_new_tokens=20, seed=5) for p in PROMPTS]
    chunked = HFEngine(model, config=HFEngineConfig(max_batch_size=4)).generate([*others, request])[-1]
    assert [s.token_ids for s in chunked.samples] == [s.token_ids for s in alone.samples]
    assert len({tuple(s.token_ids) for s in alone.samples}) > 1  # samples of one request differ
    reseeded = HFEngine(model).generate([request.model_copy(update={"seed": 100})])[0]
    assert [s.token_ids for s in reseeded.samples] != [s.token_ids for s in alone.samples]


def test_unseeded_requests_report_the_seed_that_reproduces_them(engine64: HFEngine) -> None:
    request = GenerateRequest(prompt_token_ids=_ids("5+5="), n=2, max_new_tokens=8)
    first = engine64.generate([request])[0]
    again = engine64.generate([request.model_copy(update={"seed": first.seed})])[0]
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in first.samples]


def test_stop_tokens_and_length(engine64: HFEngine) -> None:
    prompt = _ids("12+7*3=")
    greedy = engine64.generate(
        [GenerateRequest(prompt_token_ids=prompt, max_new_tokens=10, sampling={"temperature": 0})]
    )
    tokens = greedy[0].samples[0].token_ids
    stop_at = tokens[3]
    first = tokens.index(stop_at)
    stopped = engine64.generate(
        [
            GenerateRequest(
                prompt_token_ids=prompt, max_new_tokens=10, stop_token_ids=[stop_at], sampling={"temperature": 0}
            )
        ]
    )[0].samples[0]
    assert stopped.token_ids == tokens[: first + 1]
    assert stopped.finish_reason == "stop"
    assert len(stopped.logprobs) == len(stopped.token_ids)
    assert greedy[0].samples[0].finish_reason in ("length", "stop")


def test_abort_stops_every_sample_with_finish_abort(engine64: HFEngine) -> None:
    abort = threading.Event()
    abort.set()
    result = engine64.generate(
        [GenerateRequest(prompt_token_ids=_ids("1+1="), n=3, max_new_tokens=50, ignore_eos=True)], abort=abort
    )[0]
    assert [s.finish_reason for s in result.samples] == ["abort"] * 3
    assert all(s.token_ids == [] for s in result.samples)


def test_on_result_fires_early_for_short_requests(engine64: HFEngine) -> None:
    order: list[int] = []
    requests = [
        GenerateRequest(prompt_token_ids=_ids("1+1="), max_new_tokens=60, ignore_eos=True, seed=1),
        GenerateRequest(prompt_token_ids=_ids("2+2="), max_new_tokens=2, ignore_eos=True, seed=2),
    ]
    engine64.generate(requests, on_result=lambda index, result: order.append(index))
    assert order == [1, 0]


def test_validation_names_the_field(engine64: HFEngine) -> None:
    too_long = GenerateRequest(prompt_token_ids=[5] * engine64.max_context, max_new_tokens=1)
    with pytest.raises(RequestValidationError) as info:
        engine64.validate_request(too_long)
    assert info.value.field == "prompt_token_ids"
    over = GenerateRequest(prompt_token_ids=[5] * 10, max_new_tokens=engine64.max_context)
    with pytest.raises(RequestValidationError) as info:
        engine64.validate_request(over)
    assert info.value.field == "max_new_tokens"
    with pytest.raises(RequestValidationError) as info:
        engine64.validate_request(GenerateRequest(prompt_token_ids=[engine64.vocab_size]))
    assert info.value.field == "prompt_token_ids"
    with pytest.raises(RequestValidationError) as info:
        engine64.validate_request(GenerateRequest(prompt_token_ids=[5], model="other-model"))
    assert (info.value.field, info.value.status_code) == ("model", 404)


def test_update_weights_is_all_or_nothing_and_bumps_the_version() -> None:
    model, _ = build_fresh()
    engine = HFEngine(model)
    new_model, _ = tiny(1, "float32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [*new_model.named_parameters(), ("model.not_a_layer.weight", torch.zeros(1))]
    with pytest.raises(ValueError, match="unknown parameter name"):
        engine.update_weights(bad, version=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="missing"):
        engine.update_weights(list(new_model.named_parameters())[:3], version=1)
    assert engine.weight_version == 0
    engine.update_weights(new_model.named_parameters(), version=1)
    assert engine.weight_version == 1
    assert all(torch.equal(new_model.state_dict()[k], v) for k, v in model.state_dict().items())


def build_fresh():
    from forkrl.rollout.tiny_model import build_tiny_model

    return build_tiny_model()


def test_sleep_level_two_drops_weights_until_a_push() -> None:
    model, tokenizer = build_fresh()
    engine = HFEngine(model)
    request = GenerateRequest(prompt_token_ids=tokenizer("7*6=").input_ids, max_new_tokens=6, seed=3)
    before = engine.generate([request])[0].samples[0]
    engine.sleep(1)
    with pytest.raises(EngineUnavailableError, match="sleeping"):
        engine.generate([request])
    engine.wake()
    assert engine.generate([request])[0].samples[0] == before
    engine.sleep(2)
    assert engine.health().weight_version is None and engine.health().sleeping
    engine.wake()
    with pytest.raises(EngineUnavailableError, match="no weights"):
        engine.generate([request])
    reference, _ = tiny(0, "float32")
    engine.update_weights(reference.named_parameters(), version=5)
    after = engine.generate([request])[0].samples[0]
    assert after.token_ids == before.token_ids and after.weight_version == 5
    assert after.logprobs == pytest.approx(before.logprobs, abs=1e-6)


def test_dual_temperature_counts_high_tokens(engine64: HFEngine) -> None:
    prompt = _ids("12+7*3=")
    always_high = SamplingParams(dual_temperature={"threshold": 0.0, "t_high": 1.5, "t_low": 0.5})
    never_high = SamplingParams(dual_temperature={"threshold": 50.0, "t_high": 1.5, "t_low": 0.5})
    results = engine64.generate(
        [
            GenerateRequest(
                prompt_token_ids=prompt, n=2, max_new_tokens=8, ignore_eos=True, seed=1, sampling=always_high
            ),
            GenerateRequest(
                prompt_token_ids=prompt, n=2, max_new_tokens=8, ignore_eos=True, seed=1, sampling=never_high
            ),
        ]
    )
    assert results[0].high_temperature_fraction == 1.0
    assert results[1].high_temperature_fraction == 0.0
    model, _ = tiny(0, "float64")
    for result, temperature in ((results[0], 1.5), (results[1], 0.5)):
        for sample in result.samples:
            expected = reference_logprobs(model, prompt, sample.token_ids, temperature)
            assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), expected, atol=1e-5)


def test_dual_temperature_count_is_exact_over_the_emitted_tokens(engine64: HFEngine) -> None:
    """Thresholds inside the model's entropy range: each sample's count equals the high-temperature
    decisions of an independent teacher-forced pass over exactly its emitted tokens."""
    model, _ = tiny(0, "float64")
    prompts = [_ids(p) for p in PROMPTS[:2]]
    start = float(entropy_at_unit_temperature(next_token_logits(model, prompts[0]).unsqueeze(0)))
    params = [
        DualTemperatureParams(t_high=1.4, t_low=0.7, threshold_mode="running_quantile", threshold=start, rho=0.3),
        DualTemperatureParams(t_high=1.2, t_low=0.8, threshold=start),
    ]
    requests = [
        GenerateRequest(prompt_token_ids=prompt, n=3, max_new_tokens=20, seed=7, sampling={"dual_temperature": p})
        for prompt in prompts
        for p in params
    ]
    results = engine64.generate(requests)
    total_high = total_tokens = 0
    for request, result in zip(requests, results, strict=True):
        for sample in result.samples:
            ids = torch.tensor([request.prompt_token_ids + sample.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0].double()
            first = len(request.prompt_token_ids) - 1
            rows = DualTemperatureRows.from_params([request.sampling.dual_temperature])
            expected = 0
            for step in logits[first : first + len(sample.token_ids)]:
                _, high, rows.tau = dual_temperature_step(step.unsqueeze(0), rows)
                expected += int(high[0])
            assert sample.num_high_temperature_tokens == expected
            total_high += expected
            total_tokens += len(sample.token_ids)
    assert 0 < total_high < total_tokens  # both temperatures were drawn
