"""Backpressure (429 + Retry-After, 413), the client riding out a full queue, and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forkrl.rollout.verifier.client import VerifierClient
from tests.rollout.verifier.conftest import ServerProcess, run_server

SLEEPER = "```python\nimport time\ntime.sleep({seconds})\nprint('done')\n```"


def _sleeper(item_id: str, seconds: float) -> dict:
    tests = {"style": "stdio", "cases": [{"input": "", "output": "done"}]}
    return {"task": "code", "id": item_id, "response": SLEEPER.format(seconds=seconds), "tests": tests}


def _math(item_id: str) -> dict:
    return {"task": "math", "id": item_id, "response": r"\boxed{4}", "ground_truth": "4"}


def _pending(server: ServerProcess) -> int:
    info = httpx.get(f"{server.url}/v1/info", timeout=10).json()
    return info["queued"] + info["inflight"]


def _post_in_background(server: ServerProcess, items: list[dict]) -> tuple[threading.Thread, dict]:
    box: dict[str, httpx.Response] = {}

    def post() -> None:
        box["response"] = httpx.post(f"{server.url}/v1/verify", json={"items": items}, timeout=120)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, box


def _wait_pending(server: ServerProcess, count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _pending(server) < count:
        assert time.monotonic() < deadline, f"queue never reached {count} items"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {"run": "backpressure", "workers": 1, "max_queue_items": 3, "max_body_mb": 1}
    with run_server(tmp_path_factory.mktemp("small"), config) as server:
        yield server


def test_full_queue_gets_429_with_retry_after(small_server: ServerProcess) -> None:
    thread, box = _post_in_background(small_server, [_sleeper(f"s{i}", 1.5) for i in range(3)])
    _wait_pending(small_server, 3)
    refused = httpx.post(f"{small_server.url}/v1/verify", json={"items": [_math("late")]}, timeout=30)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    thread.join(60)
    assert [r["reason"] for r in box["response"].json()["results"]] == ["ok", "ok", "ok"]
    metrics = httpx.get(f"{small_server.url}/metrics").text
    assert "forkrl_verifier_requests_total{replica=" in metrics and 'status="429"' in metrics


def test_batch_larger_than_the_queue_is_413(small_server: ServerProcess) -> None:
    response = httpx.post(f"{small_server.url}/v1/verify", json={"items": [_math(f"m{i}") for i in range(4)]})
    assert response.status_code == 413 and "max_queue_items=3" in response.json()["detail"]


def test_oversized_body_is_413(small_server: ServerProcess) -> None:
    item = {**_math("big"), "response": "x" * (1 << 20) + r"\boxed{4}"}  # just over 1 MiB of JSON
    response = httpx.post(f"{small_server.url}/v1/verify", json={"items": [item]})
    assert response.status_code == 413 and "max_body_mb=1" in response.json()["detail"]


def test_client_rides_out_a_full_queue(small_server: ServerProcess) -> None:
    thread, box = _post_in_background(small_server, [_sleeper(f"t{i}", 1.5) for i in range(3)])
    _wait_pending(small_server, 3)
    delays: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(seconds)

    async def run() -> list:
        async with VerifierClient(small_server.url, max_retries=30, sleep=recording_sleep) as client:
            return await client.verify([_math("patient")])

    started = time.monotonic()
    results = asyncio.run(run())
    assert [(r.id, r.reason.value) for r in results] == [("patient", "ok")]
    assert delays and min(delays) >= 1.0  # every wait honoured the server's Retry-After of >= 1 s
    assert time.monotonic() - started >= 1.0
    thread.join(60)
    assert box["response"].status_code == 200


def test_graceful_shutdown_drains_in_flight_work(tmp_path: Path) -> None:
    with run_server(tmp_path, {"run": "shutdown", "workers": 1}) as server:
        thread, box = _post_in_background(server, [_sleeper("inflight", 1.5), _math("queued")])
        _wait_pending(server, 2)
        server.process.send_signal(signal.SIGTERM)
        thread.join(60)
        # uvicorn re-raises the caught SIGTERM once its shutdown (drain included) has completed.
        assert server.process.wait(60) in (0, -signal.SIGTERM)
        results = box["response"].json()["results"]
        assert [(r["id"], r["reason"]) for r in results] == [("inflight", "ok"), ("queued", "ok")]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/healthz", timeout=2)
