"""VerifierClient retry policy against scripted HTTP answers (httpx MockTransport, no sleeping)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import httpx
import pytest

from forkrl.rollout.verifier.client import (
    VerifierClient,
    VerifierProtocolError,
    VerifierRequestError,
    VerifierUnavailable,
)

Handler = Callable[[httpx.Request], httpx.Response]


def _ok(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    results = [
        {"id": item["id"], "task": item["task"], "reward": 1.0, "correct": True, "reason": "ok", "latency_s": 0.0}
        for item in items
    ]
    return httpx.Response(200, json={"results": results})


def _items(count: int) -> list[dict]:
    return [{"task": "math", "id": f"i{n}", "response": r"\boxed{1}", "ground_truth": "1"} for n in range(count)]


def _scripted(*answers: Handler | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A transport handler answering with `answers` in turn, then with _ok; records every request."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if queue else _ok
        if isinstance(answer, Exception):
            raise answer
        return answer(request)

    return handler, seen


def _client(handler: Handler, delays: list[float], **options: object) -> VerifierClient:
    async def no_sleep(seconds: float) -> None:
        delays.append(seconds)

    return VerifierClient(
        "http://verifier.test",
        transport=httpx.MockTransport(handler),
        rng=random.Random(0),
        sleep=no_sleep,
        **options,
    )


def _run(client: VerifierClient, items: list[dict]) -> list:
    async def go() -> list:
        async with client:
            return await client.verify(items)

    return asyncio.run(go())


def test_retries_5xx_and_connection_errors_with_growing_backoff() -> None:
    request = httpx.Request("POST", "http://verifier.test/v1/verify")
    handler, seen = _scripted(
        lambda _: httpx.Response(503),
        httpx.ConnectError("refused", request=request),
        lambda _: httpx.Response(500),
        httpx.ReadTimeout("slow", request=request),
    )
    delays: list[float] = []
    results = _run(_client(handler, delays, backoff_initial_s=0.5, backoff_max_s=3.0), _items(3))
    assert [r.id for r in results] == ["i0", "i1", "i2"] and len(seen) == 5
    caps = [0.5, 1.0, 2.0, 3.0]  # initial * 2^(attempt-1), capped at backoff_max_s
    assert len(delays) == 4 and all(0.0 <= d <= cap for d, cap in zip(delays, caps, strict=True))


def test_429_retry_after_is_honoured() -> None:
    handler, seen = _scripted(lambda _: httpx.Response(429, headers={"Retry-After": "7"}))
    delays: list[float] = []
    _run(_client(handler, delays), _items(1))
    assert len(seen) == 2 and len(delays) == 1 and 7.0 <= delays[0] <= 8.0


def test_client_errors_are_not_retried() -> None:
    handler, seen = _scripted(lambda _: httpx.Response(422, json={"fields": ["items[0].ground_truth"]}))
    with pytest.raises(VerifierRequestError, match=r"items\[0\]\.ground_truth") as error:
        _run(_client(handler, []), _items(1))
    assert error.value.status == 422 and len(seen) == 1


def test_exhausted_retries_raise_unavailable() -> None:
    handler, seen = _scripted(*[lambda _: httpx.Response(502)] * 10)
    with pytest.raises(VerifierUnavailable, match="after 3 retries"):
        _run(_client(handler, [], max_retries=3), _items(1))
    assert len(seen) == 4


def test_results_must_echo_the_ids_in_order() -> None:
    def shuffled(request: httpx.Request) -> httpx.Response:
        response = _ok(request)
        body = json.loads(response.content)
        body["results"].reverse()
        return httpx.Response(200, json=body)

    handler, _ = _scripted(shuffled)
    with pytest.raises(VerifierProtocolError):
        _run(_client(handler, []), _items(2))


def test_chunks_are_sent_separately_and_reassembled_in_order() -> None:
    handler, seen = _scripted()
    results = _run(_client(handler, [], max_batch_items=2, max_concurrent_batches=2), _items(5))
    assert [r.id for r in results] == [f"i{n}" for n in range(5)]
    sizes = sorted(len(json.loads(request.content)["items"]) for request in seen)
    assert sizes == [1, 2, 2]


def test_invalid_items_fail_before_sending() -> None:
    handler, seen = _scripted()
    bad = _items(2)
    del bad[1]["ground_truth"]
    with pytest.raises(ValueError, match=r"(?s)items\[1\].*ground_truth"):
        _run(_client(handler, []), bad)
    duplicate = _items(2)
    duplicate[1]["id"] = "i0"
    with pytest.raises(ValueError, match="unique"):
        _run(_client(handler, []), duplicate)
    assert seen == []
