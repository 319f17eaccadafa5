"""Request validation names the offending field; results round-trip; RolloutBatch pads correctly."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from forkrl.rollout.types import (
    DualTemperatureParams,
    GenerateRequest,
    GenerateResult,
    RolloutBatch,
    SampleResult,
    SamplingParams,
)


def _error_locs(exc: ValidationError) -> list[tuple]:
    return [tuple(e["loc"]) for e in exc.errors()]


@pytest.mark.parametrize(
    ("sampling", "loc"),
    [
        ({"temperature": -0.5}, ("sampling", "temperature")),
        ({"top_p": 0.0}, ("sampling", "top_p")),
        ({"top_p": 1.5}, ("sampling", "top_p")),
        ({"top_k": -2}, ("sampling", "top_k")),
        ({"dual_temperature": {"t_high": 0}}, ("sampling", "dual_temperature", "t_high")),
        ({"dual_temperature": {"rho": 1.2}}, ("sampling", "dual_temperature", "rho")),
    ],
)
def test_bad_sampling_values_name_the_field(sampling: dict, loc: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateRequest(prompt_token_ids=[1, 2], sampling=sampling)
    assert loc in _error_locs(info.value)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"n": 0}, ("n",)),
        ({"max_new_tokens": 0}, ("max_new_tokens",)),
        ({"prompt_token_ids": []}, ("prompt_token_ids",)),
        ({"prompt_token_ids": [3, -1]}, ("prompt_token_ids", 1)),
        ({"seed": -1}, ("seed",)),
        ({"unknown": 1}, ("unknown",)),
    ],
)
def test_bad_request_fields_name_the_field(fields: dict, loc: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateRequest(**{"prompt_token_ids": [1], **fields})
    assert loc in _error_locs(info.value)


def test_dual_temperature_and_temperature_conflict_names_temperature() -> None:
    with pytest.raises(ValidationError) as info:
        SamplingParams(temperature=0.7, dual_temperature=DualTemperatureParams())
    assert "temperature: must be left unset" in str(info.value)
    # Either one alone is fine.
    assert SamplingParams(dual_temperature=DualTemperatureParams(t_high=1.2)).dual_temperature.t_high == 1.2


def test_result_round_trip_and_high_temperature_fraction() -> None:
    result = GenerateResult(
        request_id="r",
        samples=[
            SampleResult([4, 5, 6], [-0.1, -0.2, -0.3], "length", 3, num_high_temperature_tokens=1),
            SampleResult([7], [-0.5], "stop", 3, num_high_temperature_tokens=1),
        ],
        seed=11,
        prompt_length=2,
    )
    again = GenerateResult.from_dict(result.to_dict())
    assert again == result
    assert again.weight_version == 3
    assert again.high_temperature_fraction == pytest.approx(2 / 4)


def test_rollout_batch_pads_and_groups() -> None:
    requests = [
        GenerateRequest(request_id="a", prompt_token_ids=[1, 2, 3], n=2),
        GenerateRequest(request_id="b", prompt_token_ids=[9], n=1),
    ]
    results = [
        GenerateResult(
            "a", [SampleResult([5], [-1.0], "stop", 2), SampleResult([6, 7], [-0.5, -0.25], "length", 2)], 0, 3
        ),
        GenerateResult("b", [SampleResult([8, 8, 8], [-0.1, -0.2, -0.3], "length", 2)], 0, 1),
    ]
    batch = RolloutBatch.from_results(requests, results, pad_token_id=0)
    assert batch.num_samples == 3
    assert batch.prompt_ids.tolist() == [[1, 2, 3], [1, 2, 3], [9, 0, 0]]
    assert batch.prompt_lengths.tolist() == [3, 3, 1]
    assert batch.response_ids.tolist() == [[5, 0, 0], [6, 7, 0], [8, 8, 8]]
    assert batch.response_mask.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert batch.response_lengths.tolist() == [1, 2, 3]
    expected = torch.tensor([[-1.0, 0, 0], [-0.5, -0.25, 0], [-0.1, -0.2, -0.3]])
    assert torch.equal(batch.sampling_logprobs, expected)
    assert batch.group_id.tolist() == [0, 0, 1]
    assert batch.weight_version.tolist() == [2, 2, 2]
    assert batch.finish_reasons == ["stop", "length", "length"]


def test_rollout_batch_rejects_mismatched_results() -> None:
    requests = [GenerateRequest(request_id="a", prompt_token_ids=[1])]
    results = [GenerateResult("zzz", [SampleResult([5], [-1.0], "stop", 0)], 0, 1)]
    with pytest.raises(ValueError, match=r"results\[0\].request_id"):
        RolloutBatch.from_results(requests, results)
