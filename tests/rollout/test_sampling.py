"""Sampling math: top-k/top-p against an independent per-row implementation (and vLLM's), the seeded
uniform streams, default resolution, and the inverse-CDF draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forkrl.rollout.sampling import (
    GenerationDefaults,
    RowSampling,
    apply_top_k_top_p,
    resolve_sampling,
    sample_step,
    stream_keys,
    stream_uniforms,
)
from forkrl.rollout.types import DualTemperatureParams, SamplingParams
from tests.rollout.helpers import chi_square_pvalue, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def _reference_mask(row: list[float], k: int, p: float) -> list[bool]:
    """Kept tokens, written from the definitions: top-k keeps logits >= the k-th largest; top-p drops
    the least likely tokens while the dropped mass (of the renormalised top-k set) stays <= 1 - p."""
    values = np.array(row, dtype=np.float64)
    keep = np.ones(len(row), dtype=bool)
    if k > 0:
        keep &= values >= np.sort(values)[::-1][k - 1]
    if p < 1:
        probs = np.where(keep, np.exp(values - values[keep].max()), 0.0)
        probs /= probs.sum()
        dropped = 0.0
        order = [i for i in np.argsort(values, kind="stable") if keep[i]]
        for index in order[:-1]:
            if dropped + probs[index] <= 1 - p + 1e-12:
                dropped += probs[index]
                keep[index] = False
            else:
                break
    return keep.tolist()


def test_top_k_top_p_match_the_definitions() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn((6, 12), generator=generator, dtype=torch.float64) * 2
    top_k = torch.tensor([0, 3, 0, 5, 1, 12])
    top_p = torch.tensor([1.0, 1.0, 0.6, 0.8, 0.3, 0.95], dtype=torch.float64)
    masked = apply_top_k_top_p(logits, top_k, top_p)
    for row in range(6):
        expected = _reference_mask(logits[row].tolist(), int(top_k[row]), float(top_p[row]))
        assert torch.isfinite(masked[row]).tolist() == expected
        kept = torch.isfinite(masked[row])
        assert torch.equal(masked[row][kept], logits[row][kept])


def test_top_k_top_p_agree_with_vllm() -> None:
    vllm_ops = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn((8, 40), generator=generator) * 3
    top_k = torch.tensor([40, 3, 40, 7, 1, 40, 20, 2])
    top_p = torch.tensor([1.0, 1.0, 0.5, 0.9, 0.2, 0.99, 0.7, 1.0])
    ours = apply_top_k_top_p(logits, torch.where(top_k == 40, 0, top_k), top_p)
    theirs = vllm_ops.apply_top_k_top_p_pytorch(logits.clone(), top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))


def test_stream_uniforms_are_deterministic_distinct_and_uniform() -> None:
    keys = stream_keys(1234, np.arange(4000))
    first = stream_uniforms(keys, 0)
    assert torch.equal(first, stream_uniforms(stream_keys(1234, np.arange(4000)), 0))
    assert len(set(keys.tolist())) == 4000
    assert not torch.equal(first, stream_uniforms(keys, 1))
    assert not torch.equal(first, stream_uniforms(stream_keys(1235, np.arange(4000)), 0))
    assert float(first.min()) >= 0.0 and float(first.max()) < 1.0
    values = torch.cat([first, stream_uniforms(keys, 7)])
    counts = torch.histc(values, bins=20, min=0.0, max=1.0)
    assert chi_square_pvalue(counts, torch.full((20,), 1 / 20)) > 1e-3
    # Consecutive steps of one stream are uncorrelated.
    along = torch.stack([stream_uniforms(keys[:1], step) for step in range(2000)]).squeeze(1)
    correlation = torch.corrcoef(torch.stack([along[:-1], along[1:]]))[0, 1]
    assert abs(float(correlation)) < 0.1


def test_resolve_sampling_prefers_request_then_generation_config() -> None:
    defaults = GenerationDefaults(temperature=0.6, top_p=0.95, top_k=20)
    assert resolve_sampling(SamplingParams(), defaults).temperature == 0.6
    resolved = resolve_sampling(SamplingParams(temperature=1.0, top_k=-1), defaults)
    assert (resolved.temperature, resolved.top_p, resolved.top_k) == (1.0, 0.95, 0)
    neutral = resolve_sampling(SamplingParams(), GenerationDefaults())
    assert (neutral.temperature, neutral.top_p, neutral.top_k, neutral.greedy) == (1.0, 1.0, 0, False)
    greedy = resolve_sampling(SamplingParams(temperature=0.0, top_p=0.5), defaults)
    assert greedy.greedy and greedy.top_p == 1.0 and greedy.top_k == 0
    dual = resolve_sampling(SamplingParams(dual_temperature=DualTemperatureParams()), defaults)
    assert dual.temperature == 1.0 and not dual.greedy


def test_sample_step_draws_from_the_processed_distribution() -> None:
    """4000 rows of the same logits at T = 0.7, top-p 0.9: frequencies and log-probs match."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows_count = 4000
    resolved = [resolve_sampling(SamplingParams(temperature=0.7, top_p=0.9), GenerationDefaults())] * rows_count
    rows = RowSampling.build(resolved, stream_keys(7, np.arange(rows_count)), "cpu")
    out = sample_step(logits.repeat(rows_count, 1), rows, step=0)
    processed = apply_top_k_top_p((logits / 0.7).unsqueeze(0), torch.tensor([0]), torch.tensor([0.9]))[0]
    expected = processed.double().softmax(-1)
    counts = torch.bincount(out.tokens, minlength=6)
    assert counts[expected == 0].sum() == 0
    assert chi_square_pvalue(counts[expected > 0], expected[expected > 0]) > 1e-3
    assert torch.allclose(out.logprobs.double(), expected.log()[out.tokens], atol=1e-6)


def test_greedy_rows_take_the_argmax_with_unit_temperature_logprobs() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
    resolved = [resolve_sampling(SamplingParams(temperature=0.0), GenerationDefaults())] * 2
    out = sample_step(logits, RowSampling.build(resolved, stream_keys(0, [0, 1]), "cpu"), step=0)
    assert out.tokens.tolist() == [1, 0]
    assert torch.allclose(out.logprobs, logits.log_softmax(-1)[[0, 1], [1, 0]])
