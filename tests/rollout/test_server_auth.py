"""A real `python -m forkrl.rollout` process started with FORKRL_CONTROL_TOKEN: its control endpoints
answer 401 without the token (or with a wrong one) and change nothing; with it, checkpoint loads, weight
syncs, sleep and wake work; generation and probes stay open; a weight sync from a sender without the
token is refused by the replica, which keeps serving its weights."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from forkrl.rollout.client import RolloutClient, RolloutRequestError, push_weights
from forkrl.rollout.control_token import CONTROL_TOKEN_ENV, new_control_token
from forkrl.rollout.weight_checkpoint import write_checkpoint
from tests.rollout.helpers import REPO, one_torch_thread, save_model, start_server, tiny

LOOPBACK = "127.0.0.1"
TOKEN = new_control_token()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server-auth")
    model_dir = save_model(workdir / "model", seed=0, dtype="float32")
    learner, _ = tiny(1, "float32")
    checkpoint = write_checkpoint(learner.named_parameters(), workdir / "v7").parent
    process = start_server(model_dir, workdir, "--num-threads", "1", env={CONTROL_TOKEN_ENV: TOKEN})
    yield process, checkpoint, learner
    process.stop()


def _state(url: str) -> tuple[int | None, bool]:
    health = httpx.get(f"{url}/v1/health", timeout=30).json()
    return health["weight_version"], health["sleeping"]


def _unauthorized_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("forkrl_rollout_unauthorized_requests_total{"))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer " + new_control_token()},
                                     {"Authorization": TOKEN}])  # no "Bearer ": not the header's form
def test_control_calls_without_the_token_get_401_and_change_nothing(served, headers) -> None:
    process, checkpoint, _ = served
    before, refused_before = _state(process.url), _unauthorized_count(process.url)
    calls = [
        ("/v1/weights", {"action": "load_checkpoint", "path": str(checkpoint), "version": 7}),
        ("/v1/weights", {"action": "abort"}),
        ("/v1/sleep", {"level": 2}),
        ("/v1/wake", None),
    ]
    for path, body in calls:
        response = httpx.post(f"{process.url}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["fields"] == [{"field": "Authorization", "message": "missing or wrong control token"}]
        assert TOKEN not in response.text
    assert _state(process.url) == before
    assert _unauthorized_count(process.url) == refused_before + len(calls)
    # Generation and probes need no token.
    assert httpx.get(f"{process.url}/readyz", timeout=30).status_code == 200
    generated = httpx.post(f"{process.url}/v1/generate", timeout=60,
                           json={"requests": [{"prompt_token_ids": [5, 6], "max_new_tokens": 2, "seed": 1}]})
    assert generated.status_code == 200 and '"result"' in generated.text


def test_with_the_token_control_calls_and_weight_syncs_work(served) -> None:
    process, checkpoint, learner = served

    async def scenario() -> None:
        async with RolloutClient(process.url, control_token=TOKEN) as client:
            assert (await client.load_checkpoint(str(checkpoint), 7))["weight_version"] == 7
            assert (await client.sleep(1))["sleeping"] is True
            assert (await client.wake())["sleeping"] is False
            stats = await push_weights([client], learner.named_parameters(), 8, master_addr=LOOPBACK,
                                       timeout_s=30, token=TOKEN)
            assert stats.num_tensors == len(list(learner.named_parameters()))
            assert (await client.readyz()).weight_version == 8
            # A sender without the token: the replica refuses its weights and keeps version 8.
            with pytest.raises(PermissionError, match="rank 1 holds a control token and refuses a sender without one"):
                await push_weights([client], learner.named_parameters(), 9, master_addr=LOOPBACK, timeout_s=30)
            assert (await client.health())["weight_version"] == 8
        async with RolloutClient(process.url) as anonymous:
            with pytest.raises(RolloutRequestError) as info:
                await anonymous.sleep(1)
            assert info.value.status_code == 401

    asyncio.run(scenario())


def test_a_token_too_short_to_be_a_secret_stops_the_replica_at_start(tmp_path) -> None:
    model_dir = save_model(tmp_path / "model", seed=0, dtype="float32")
    done = subprocess.run([sys.executable, "-m", "forkrl.rollout", "--engine", "hf", "--model", str(model_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, CONTROL_TOKEN_ENV: "hunter2"})
    assert done.returncode != 0
    assert CONTROL_TOKEN_ENV in done.stderr and "at least 16 characters" in done.stderr
