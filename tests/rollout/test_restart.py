"""A replica that restarts comes back without weights: the controller's helper detects the stale version
through /readyz and re-pushes; a replica already at the version is left alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from forkrl.rollout.client import RolloutClient, RolloutUnavailableError, ensure_weights, push_weights
from forkrl.rollout.types import GenerateRequest
from tests.rollout.helpers import one_torch_thread, reference_logprobs, save_model, start_server, tiny

LOOPBACK = "127.0.0.1"  # the replica under test runs on this host


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def _learner_weights():
    return tiny(1, "float64")[0].named_parameters()


@pytest.mark.slow
def test_restarted_replica_is_detected_and_re_pushed(tmp_path) -> None:
    model_dir = save_model(tmp_path / "model", seed=0, dtype="float64")
    first = start_server(model_dir, tmp_path, "--num-threads", "1")
    port = first.port
    prompt = tiny(1, "float64")[1]("What is 3+4?").input_ids
    request = GenerateRequest(prompt_token_ids=prompt, n=2, max_new_tokens=10, ignore_eos=True, seed=4)

    async def before_restart() -> list[int]:
        async with RolloutClient(first.url) as client:
            await push_weights([client], _learner_weights(), 1, master_addr=LOOPBACK)
            return await ensure_weights([client], 1, _learner_weights, master_addr=LOOPBACK)

    try:
        assert asyncio.run(before_restart()) == []  # current: nothing pushed
    finally:
        first.kill()

    second = start_server(model_dir, tmp_path, "--num-threads", "1", "--load-format", "dummy", port=port)
    try:

        async def after_restart():
            async with RolloutClient(second.url, max_retries=0) as client:
                await client.wait_live()
                stale_status = await client.readyz()
                try:
                    await client.generate([request])
                    refused = False
                except RolloutUnavailableError:
                    refused = True
                stale = await ensure_weights([client], 1, _learner_weights, master_addr=LOOPBACK)
                return stale_status, refused, stale, await client.readyz(), await client.generate([request])

        stale_status, refused, stale, ready, results = asyncio.run(after_restart())
    finally:
        second.stop()
    assert second.port == port
    assert (stale_status.ready, stale_status.weight_version) == (False, None)
    assert "no weights" in stale_status.reason
    assert refused
    assert stale == [0]
    assert (ready.ready, ready.weight_version) == (True, 1)
    learner, _ = tiny(1, "float64")
    for sample in results[0].samples:
        assert sample.weight_version == 1
        expected = reference_logprobs(learner, prompt, sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), expected, atol=1e-5)
