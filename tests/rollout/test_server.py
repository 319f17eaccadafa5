"""HTTP round trips against a real `python -m forkrl.rollout --engine hf` process: generation equals the
in-process engine, results stream as requests finish, bad input gets a 4xx naming the field, metrics
count what was generated, sleep/wake, and the CLI rejects an unknown model path."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from forkrl.rollout.client import RolloutClient, RolloutRequestError
from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
from forkrl.rollout.types import GenerateRequest
from tests.rollout.helpers import REPO, one_torch_thread, save_model, start_server, tiny


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    model_dir = save_model(workdir / "model", seed=0, dtype="float32")
    process = start_server(model_dir, workdir, "--num-threads", "1", "--run", "test-run", "--replica", "r0")
    yield process, model_dir
    process.stop()


def _prompt(text: str) -> list[int]:
    return tiny(0, "float32")[1](text).input_ids


def _requests() -> list[GenerateRequest]:
    return [
        GenerateRequest(request_id="a", prompt_token_ids=_prompt("12+7*3="), n=3, max_new_tokens=10, seed=1),
        GenerateRequest(
            request_id="b",
            prompt_token_ids=_prompt("9*9="),
            n=2,
            max_new_tokens=6,
            seed=2,
            sampling={"temperature": 0.7},
        ),
        GenerateRequest(
            request_id="c",
            prompt_token_ids=_prompt("What is 3+4?"),
            n=2,
            max_new_tokens=8,
            seed=3,
            sampling={"dual_temperature": {"t_high": 1.4, "t_low": 0.7}},
        ),
    ]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_generate_round_trip_equals_the_in_process_engine(served) -> None:
    process, model_dir = served
    requests = _requests()

    async def call():
        async with RolloutClient(process.url) as client:
            before = await client.metrics_text()
            results = await client.generate(requests)
            return before, results, await client.metrics_text()

    before, results, after = asyncio.run(call())
    local = HFEngine.from_pretrained(model_dir, HFEngineConfig()).generate(requests)
    # The replica served without torchvision (rollout/text_only.py); this process has it, as transformers
    # imports it wherever it is installed, and the two generate the same.
    assert "torchvision" in sys.modules
    mapped = Path(f"/proc/{process.process.pid}/maps").read_text()
    assert "/torch/" in mapped and "/torchvision/" not in mapped
    assert [r.request_id for r in results] == ["a", "b", "c"]
    for remote, expected in zip(results, local, strict=True):
        assert [s.token_ids for s in remote.samples] == [s.token_ids for s in expected.samples]
        for got, want in zip(remote.samples, expected.samples, strict=True):
            assert got.logprobs == pytest.approx(want.logprobs, abs=1e-6)
            assert (got.finish_reason, got.weight_version) == (want.finish_reason, 0)
    tokens = sum(len(s.token_ids) for r in results for s in r.samples)
    delta = _metric(after, "forkrl_rollout_generated_tokens_total") - _metric(
        before, "forkrl_rollout_generated_tokens_total"
    )
    assert delta == tokens
    dual_tokens = sum(len(s.token_ids) for s in results[2].samples)
    high = sum(s.num_high_temperature_tokens for s in results[2].samples)
    assert _metric(after, "forkrl_rollout_dual_temperature_tokens_total") >= dual_tokens
    assert _metric(after, "forkrl_rollout_dual_temperature_high_tokens_total") >= high
    assert _metric(after, "forkrl_rollout_weight_version") == 0
    assert 'run="test-run"' in after and 'replica="r0"' in after
    for name in ("forkrl_rollout_queue_depth_requests", "forkrl_rollout_kv_cache_usage_ratio"):
        assert _metric(after, name) >= 0
    # Phases are reported when the engine's decode loop ends, which may be after the last result was streamed
    # back: the decode observation is eventually there, not necessarily at the first scrape.
    deadline = time.monotonic() + 30
    while 'forkrl_rollout_phase_seconds_count{phase="decode"' not in after.replace('replica="r0",run="test-run",', ""):
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
        after = httpx.get(f"{process.url}/metrics").text


def test_results_stream_back_as_each_request_finishes(served) -> None:
    process, _ = served
    body = {
        "requests": [
            {"prompt_token_ids": _prompt("1+1="), "max_new_tokens": 300, "ignore_eos": True, "seed": 1},
            {"prompt_token_ids": _prompt("2+2="), "max_new_tokens": 2, "ignore_eos": True, "seed": 2},
        ]
    }
    with httpx.stream("POST", f"{process.url}/v1/generate", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert [line["index"] for line in lines] == [1, 0]
    assert len(lines[1]["result"]["samples"][0]["token_ids"]) == 300


@pytest.mark.parametrize(
    ("request_fields", "status", "field"),
    [
        ({"sampling": {"temperature": -1}}, 422, "requests[0].sampling.temperature"),
        ({"sampling": {"top_p": 0}}, 422, "requests[0].sampling.top_p"),
        ({"sampling": {"top_p": 1.5}}, 422, "requests[0].sampling.top_p"),
        ({"n": 0}, 422, "requests[0].n"),
        ({"prompt_token_ids": [5] * 600}, 400, "requests[0].prompt_token_ids"),
        ({"max_new_tokens": 600}, 400, "requests[0].max_new_tokens"),
        ({"prompt_token_ids": [5, 100000]}, 400, "requests[0].prompt_token_ids"),
        ({"model": "/no/such/model"}, 404, "requests[0].model"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(served, request_fields: dict, status: int, field: str) -> None:
    process, _ = served
    body = {"requests": [{"prompt_token_ids": [5, 6], "max_new_tokens": 4, **request_fields}]}
    response = httpx.post(f"{process.url}/v1/generate", json=body, timeout=30)
    assert response.status_code == status, response.text
    payload = response.json()
    assert field in [f["field"] for f in payload["fields"]]
    assert field in payload["error"]


def test_bad_batches_and_weights_calls(served) -> None:
    process, _ = served
    empty = httpx.post(f"{process.url}/v1/generate", json={"requests": []}, timeout=30)
    assert empty.status_code == 422 and empty.json()["fields"][0]["field"] == "requests"
    second_bad = {"requests": [{"prompt_token_ids": [5]}, {"prompt_token_ids": [5], "n": -3}]}
    response = httpx.post(f"{process.url}/v1/generate", json=second_bad, timeout=30)
    assert response.status_code == 422 and response.json()["fields"][0]["field"] == "requests[1].n"
    commit = httpx.post(f"{process.url}/v1/weights", json={"action": "commit", "version": 3}, timeout=30)
    assert commit.status_code == 409 and commit.json()["fields"][0]["field"] == "version"
    load = httpx.post(
        f"{process.url}/v1/weights", json={"action": "load_checkpoint", "path": "/nope", "version": 1}, timeout=30
    )
    assert load.status_code == 404 and load.json()["fields"][0]["field"] == "path"
    unknown = httpx.post(f"{process.url}/v1/weights", json={"action": "explode"}, timeout=30)
    assert unknown.status_code == 422

    async def via_client():
        async with RolloutClient(process.url, max_retries=0) as client:
            await client.generate([GenerateRequest(prompt_token_ids=[5] * 600, max_new_tokens=1)])

    with pytest.raises(RolloutRequestError) as info:
        asyncio.run(via_client())
    assert info.value.status_code == 400 and info.value.fields[0]["field"] == "requests[0].prompt_token_ids"
    # The server still serves good requests.
    assert httpx.get(f"{process.url}/readyz", timeout=30).json() == {
        "ready": True, "weight_version": 0, "reason": "", "model": str(served[1])
    }  # fmt: skip


def test_sleep_and_wake(served) -> None:
    process, _ = served
    assert httpx.post(f"{process.url}/v1/sleep", json={"level": 1}, timeout=30).json()["sleeping"] is True
    ready = httpx.get(f"{process.url}/readyz", timeout=30)
    assert ready.status_code == 503 and "sleeping" in ready.json()["reason"]
    blocked = httpx.post(f"{process.url}/v1/generate", json={"requests": [{"prompt_token_ids": [5]}]}, timeout=30)
    assert blocked.status_code == 503
    assert httpx.get(f"{process.url}/healthz", timeout=30).status_code == 200  # alive while asleep
    assert "forkrl_rollout_sleeping{" in httpx.get(f"{process.url}/metrics", timeout=30).text
    assert httpx.post(f"{process.url}/v1/wake", timeout=30).json()["sleeping"] is False
    assert httpx.get(f"{process.url}/readyz", timeout=30).status_code == 200


def test_cli_rejects_an_unknown_model_path(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "forkrl.rollout", "--engine", "hf", "--model", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--model" in done.stderr and "missing" in done.stderr
