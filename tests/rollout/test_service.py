"""RolloutService: a weight swap during generation under each in-flight policy (no sample mixes two
versions), failure isolation inside a batch, metrics bookkeeping."""

from __future__ import annotations

import asyncio

import pytest

from forkrl.rollout.hf_engine import HFEngine
from forkrl.rollout.metrics import RolloutMetrics
from forkrl.rollout.service import RolloutService, ServiceConfig
from forkrl.rollout.tiny_model import TinyModelSpec, build_tiny_model
from forkrl.rollout.types import GenerateRequest
from forkrl.rollout.weight_checkpoint import write_checkpoint
from forkrl.rollout.weight_sync import WeightCheckpointLoad
from tests.rollout.helpers import one_torch_thread, tiny


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    learner, _ = tiny(1, "float32")
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(learner.named_parameters(), path)
    return str(path)


def _metric(metrics: RolloutMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"run": "", "replica": "", **labels})
    return 0.0 if value is None else value


async def _wait(predicate, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.002)


def _swap_during_generation(policy: str, checkpoint: str):
    """Starts a long request, installs version 1 while it decodes, then runs a short request."""
    model, tokenizer = build_tiny_model(TinyModelSpec(max_position_embeddings=1024))
    metrics = RolloutMetrics()
    service = RolloutService(HFEngine(model), ServiceConfig(in_flight_policy=policy), metrics)
    prompt = tokenizer("12+7*3=").input_ids
    long_request = GenerateRequest(prompt_token_ids=prompt, n=2, max_new_tokens=500, ignore_eos=True, seed=1)
    short_request = GenerateRequest(prompt_token_ids=prompt, n=2, max_new_tokens=4, ignore_eos=True, seed=2)

    async def scenario():
        await service.start()
        try:
            (in_flight,) = service.submit([long_request])
            await _wait(lambda: service.busy)
            await service.weights(WeightCheckpointLoad(path=checkpoint, version=1))
            after = await service.generate([short_request])
            return await in_flight, after[0]
        finally:
            await service.stop()

    return (*asyncio.run(scenario()), metrics)


def test_finish_policy_lets_the_running_batch_end_on_the_old_weights(checkpoint) -> None:
    in_flight, after, metrics = _swap_during_generation("finish", checkpoint)
    assert {s.weight_version for s in in_flight.samples} == {0}
    assert [len(s.token_ids) for s in in_flight.samples] == [500, 500]
    assert {s.finish_reason for s in in_flight.samples} == {"length"}
    assert {s.weight_version for s in after.samples} == {1}
    assert _metric(metrics, "forkrl_rollout_aborted_requests_total") == 0
    assert _metric(metrics, "forkrl_rollout_weight_version") == 1


def test_abort_retry_policy_regenerates_on_the_new_weights(checkpoint) -> None:
    in_flight, after, metrics = _swap_during_generation("abort_retry", checkpoint)
    assert {s.weight_version for s in in_flight.samples} == {1}
    assert {s.finish_reason for s in in_flight.samples} == {"length"}
    assert [len(s.token_ids) for s in in_flight.samples] == [500, 500]
    assert {s.weight_version for s in after.samples} == {1}
    assert _metric(metrics, "forkrl_rollout_aborted_requests_total") == 1
    assert _metric(metrics, "forkrl_rollout_requests_total", status="ok") == 2


def test_abort_policy_returns_the_partial_samples_as_aborted(checkpoint) -> None:
    in_flight, after, metrics = _swap_during_generation("abort", checkpoint)
    assert {s.finish_reason for s in in_flight.samples} == {"abort"}
    assert {s.weight_version for s in in_flight.samples} == {0}
    assert all(len(s.token_ids) < 500 and len(s.logprobs) == len(s.token_ids) for s in in_flight.samples)
    assert {s.weight_version for s in after.samples} == {1}
    assert _metric(metrics, "forkrl_rollout_requests_total", status="aborted") == 1


class _PoisonedEngine(HFEngine):
    """Raises for any batch holding a request whose id starts with "poison"."""

    def generate(self, requests, **kwargs):
        if any(r.request_id.startswith("poison") for r in requests):
            raise RuntimeError("poisoned request")
        return super().generate(requests, **kwargs)


def test_one_failing_request_does_not_take_down_the_batch() -> None:
    model, tokenizer = tiny(0, "float32")
    metrics = RolloutMetrics()
    service = RolloutService(_PoisonedEngine(model), ServiceConfig(), metrics)
    prompt = tokenizer("1+2=").input_ids
    requests = [
        GenerateRequest(request_id="good-0", prompt_token_ids=prompt, max_new_tokens=5, ignore_eos=True, seed=0),
        GenerateRequest(request_id="poison", prompt_token_ids=prompt, max_new_tokens=5, seed=0),
        GenerateRequest(request_id="good-2", prompt_token_ids=prompt, n=3, max_new_tokens=5, ignore_eos=True, seed=0),
    ]

    async def scenario():
        await service.start()
        try:
            return [outcome async for outcome in service.generate_as_completed(requests)]
        finally:
            await service.stop()

    outcomes = dict(asyncio.run(scenario()))
    assert isinstance(outcomes[1], RuntimeError) and "poisoned" in str(outcomes[1])
    assert outcomes[0].request_id == "good-0" and len(outcomes[0].samples) == 1
    assert outcomes[2].request_id == "good-2" and len(outcomes[2].samples) == 3
    assert _metric(metrics, "forkrl_rollout_requests_total", status="error") == 1
    assert _metric(metrics, "forkrl_rollout_requests_total", status="ok") == 2
    assert _metric(metrics, "forkrl_rollout_generated_tokens_total") == 5 * 4
    assert _metric(metrics, "forkrl_rollout_prompt_tokens_total") == len(prompt) * 4
