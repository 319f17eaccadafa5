"""Weight sync for real: a learner process and a rollout server process on 127.0.0.1 over gloo.

After a sync the server's sampling log-probs for a response equal the learner's log-softmax (1e-5,
float64 model), and the version increments. A learner that dies half-way through a sync leaves the
server serving the previous version; the next sync succeeds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import torch

from forkrl.rollout.client import RolloutClient, RolloutRequestError, push_weights
from forkrl.rollout.weight_sync import WeightSyncCommit
from tests.rollout.helpers import REPO, one_torch_thread, reference_logprobs, save_model, start_server, tiny
from tests.rollout.learner_process import fixed_request


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sync")
    model_dir = save_model(workdir / "model", seed=0, dtype="float64")
    process = start_server(model_dir, workdir, "--num-threads", "1", "--seed", "0")
    yield process, workdir
    process.stop()


def _run_learner(url: str, workdir, seed: int, version: int, *extra: str) -> tuple[int, dict | None, str]:
    out = workdir / f"learner-{seed}-{version}-{time.monotonic_ns()}.json"
    command = [sys.executable, "-m", "tests.rollout.learner_process", "--url", url]
    command += ["--seed", str(seed), "--version", str(version), "--out", str(out), *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    record = json.loads(out.read_text()) if out.exists() else None
    return done.returncode, record, done.stderr[-3000:]


def _server_sample(url: str, seed_of_weights: int) -> tuple[list, list, torch.Tensor]:
    """A fixed request on the server, and the log-probs of its tokens under tiny(seed_of_weights)."""

    async def call():
        async with RolloutClient(url) as client:
            return (await client.generate([request]))[0], await client.readyz()

    _, tokenizer = tiny(0, "float64")
    request = fixed_request(tokenizer)
    result, ready = asyncio.run(call())
    sample = result.samples[0]
    model, _ = tiny(seed_of_weights, "float64")
    expected = reference_logprobs(model, request.prompt_token_ids, sample.token_ids)
    return sample, ready, expected


@pytest.mark.slow
def test_sync_over_gloo_then_interrupted_sync_then_recovery(server) -> None:
    process, workdir = server
    code, record, stderr = _run_learner(process.url, workdir, 1, 1)
    assert code == 0, stderr
    assert (record["version_before"], record["version_after"]) == (0, 1)
    assert record["sent_tensors"] == len(list(tiny(1, "float64")[0].named_parameters()))
    for sample in record["samples"]:
        assert sample["weight_version"] == 1
        server_lp = torch.tensor(sample["server_logprobs"], dtype=torch.float64)
        learner_lp = torch.tensor(sample["learner_logprobs"], dtype=torch.float64)
        assert torch.allclose(server_lp, learner_lp, atol=1e-5)
    # The base weights (seed 0) would give different log-probs: the sync really changed the model.
    prompt = fixed_request(tiny(0, "float64")[1]).prompt_token_ids
    base = reference_logprobs(tiny(0, "float64")[0], prompt, record["samples"][0]["token_ids"])
    synced = torch.tensor(record["samples"][0]["server_logprobs"], dtype=torch.float64)
    assert not torch.allclose(base, synced, atol=1e-3)

    # A learner with new weights (seed 2) dies after handing over 10 of 24 tensors.
    code, record, stderr = _run_learner(process.url, workdir, 2, 2, "--die-after", "10")
    assert code == 3 and record is None, stderr

    async def wait_failed() -> dict:
        async with RolloutClient(process.url) as client:
            for _ in range(300):
                health = await client.health()
                if health["weight_sync"] == "failed":
                    return health
                await asyncio.sleep(0.1)
            return health

    health = asyncio.run(wait_failed())
    assert health["weight_sync"] == "failed" and health["weight_version"] == 1, health
    sample, ready, expected = _server_sample(process.url, seed_of_weights=1)
    assert ready.ready and ready.weight_version == 1
    assert sample.weight_version == 1
    assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), expected, atol=1e-5)

    async def commit_anyway():
        async with RolloutClient(process.url) as client:
            await client.weights(WeightSyncCommit(version=2, timeout_s=5))

    with pytest.raises(RolloutRequestError) as info:
        asyncio.run(commit_anyway())
    assert info.value.status_code == 409

    async def push_again():  # the learner comes back and syncs version 2 in full
        async with RolloutClient(process.url) as client:
            await push_weights([client], tiny(2, "float64")[0].named_parameters(), 2, master_addr="127.0.0.1",
                               timeout_s=60)

    asyncio.run(push_again())
    sample, ready, expected = _server_sample(process.url, seed_of_weights=2)
    assert ready.weight_version == 2 and sample.weight_version == 2
    assert torch.allclose(torch.tensor(sample.logprobs, dtype=torch.float64), expected, atol=1e-5)
