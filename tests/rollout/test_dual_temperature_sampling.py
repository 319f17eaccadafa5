"""Dual-temperature decoding in HFEngine: sampled frequencies follow softmax(z / T) of the intended
regime (chi-square, p > 1e-3) and reject the other regime (p < 1e-3), at the first token (absolute
threshold) and at the second token (running-quantile state after one update)."""

from __future__ import annotations

import pytest
import torch

from forkrl.rollout.dual_temperature import entropy_at_unit_temperature
from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
from forkrl.rollout.types import DualTemperatureParams, GenerateRequest, SamplingParams
from tests.rollout.helpers import chi_square_pvalue, next_token_logits, one_torch_thread, tiny

T_HIGH, T_LOW = 1.6, 0.6
SAMPLES = 4000
P_THRESHOLD = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = tiny(0, "float64")
    engine = HFEngine(model, config=HFEngineConfig(max_batch_size=SAMPLES))
    prompt = tokenizer("What is 3+4?").input_ids  # first-token entropy ~1.2 nats: a spread distribution
    return model, engine, prompt


def _generate(engine: HFEngine, prompt: list[int], params: DualTemperatureParams, steps: int, seed: int):
    request = GenerateRequest(
        prompt_token_ids=prompt,
        n=SAMPLES,
        max_new_tokens=steps,
        ignore_eos=True,
        seed=seed,
        sampling=SamplingParams(dual_temperature=params),
    )
    return engine.generate([request])[0]


def _entropy(logits: torch.Tensor) -> float:
    return float(entropy_at_unit_temperature(logits.unsqueeze(0)))


@pytest.mark.parametrize("regime", ["high", "low"])
def test_first_token_follows_the_tempered_distribution(setup, regime: str) -> None:
    model, engine, prompt = setup
    logits = next_token_logits(model, prompt)
    entropy = _entropy(logits)
    threshold = entropy - 0.2 if regime == "high" else entropy + 0.2
    params = DualTemperatureParams(t_high=T_HIGH, t_low=T_LOW, threshold=threshold)
    result = _generate(engine, prompt, params, steps=1, seed=2024)
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in result.samples]), minlength=logits.numel())
    intended, other = (T_HIGH, T_LOW) if regime == "high" else (T_LOW, T_HIGH)
    assert chi_square_pvalue(counts, (logits / intended).softmax(-1)) > P_THRESHOLD
    assert chi_square_pvalue(counts, (logits / other).softmax(-1)) < P_THRESHOLD
    assert result.high_temperature_fraction == (1.0 if regime == "high" else 0.0)


def _running_params(entropy_first: float, target_tau: float) -> DualTemperatureParams:
    """Running-quantile parameters whose threshold is `target_tau` after the first token."""
    rho = 0.5
    if target_tau > entropy_first - 0.05:  # first token high: tau rises by lr * (1 - rho)
        tau0 = max(0.0, min(entropy_first, target_tau) - 0.05)
        lr = (target_tau - tau0) / (1 - rho)
    else:  # first token low: tau falls by lr * rho
        tau0 = entropy_first + 0.05
        lr = (tau0 - target_tau) / rho
    return DualTemperatureParams(
        t_high=T_HIGH, t_low=T_LOW, threshold_mode="running_quantile", threshold=tau0, rho=rho, quantile_lr=lr
    )


@pytest.mark.parametrize("regime", ["high", "low"])
def test_second_token_follows_the_running_threshold(setup, regime: str) -> None:
    model, engine, prompt = setup
    first_logits = next_token_logits(model, prompt)
    entropy_first = _entropy(first_logits)
    first_token = int((first_logits / T_HIGH).softmax(-1).argmax())  # the most frequent first token
    second_logits = next_token_logits(model, [*prompt, first_token])
    entropy_second = _entropy(second_logits)
    target = entropy_second - 0.15 if regime == "high" else entropy_second + 0.15
    params = _running_params(entropy_first, max(target, 0.0))
    first_high = entropy_first > params.threshold

    result = _generate(engine, prompt, params, steps=2, seed=77)
    first_temperature = T_HIGH if first_high else T_LOW
    first_counts = torch.bincount(
        torch.tensor([s.token_ids[0] for s in result.samples]), minlength=first_logits.numel()
    )
    assert chi_square_pvalue(first_counts, (first_logits / first_temperature).softmax(-1)) > P_THRESHOLD

    followers = [s for s in result.samples if s.token_ids[0] == first_token]
    assert len(followers) > 500
    second_counts = torch.bincount(torch.tensor([s.token_ids[1] for s in followers]), minlength=second_logits.numel())
    intended, other = (T_HIGH, T_LOW) if regime == "high" else (T_LOW, T_HIGH)
    assert chi_square_pvalue(second_counts, (second_logits / intended).softmax(-1)) > P_THRESHOLD
    assert chi_square_pvalue(second_counts, (second_logits / other).softmax(-1)) < P_THRESHOLD
    expected_high = int(first_high) + int(regime == "high")
    assert all(s.num_high_temperature_tokens == expected_high for s in followers)
    assert all(
        s.logprobs[1] == pytest.approx(float((second_logits / intended).log_softmax(-1)[s.token_ids[1]]), abs=1e-5)
        for s in followers[:50]
    )
