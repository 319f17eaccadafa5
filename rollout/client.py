"""Async client of a rollout replica, used by the controller, plus the weight-push helpers.

`RolloutClient.generate_stream` retries transport failures and 5xx answers with exponential backoff,
re-sending only the requests whose results have not arrived yet. 4xx answers raise
`RolloutRequestError` at once (with the offending fields). `run_weight_sync` drives one sync (begin,
the senders' broadcast, commit or abort) to a set of replicas, `push_weights` is that with this
process as the only sender; `ensure_weights` finds replicas whose version is stale (e.g. restarted ones) through
/readyz and re-pushes to them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
import torch
from pydantic import BaseModel

from forkrl.rollout.control_token import bearer_header
from forkrl.rollout.types import GenerateRequest, GenerateResult
from forkrl.rollout.weight_sync import (
    DEFAULT_BUCKET_BYTES,
    SendStats,
    SyncSource,
    WeightCheckpointLoad,
    WeightSender,
    WeightSyncAbort,
    WeightSyncBegin,
    WeightSyncCommit,
)


class RolloutRequestError(Exception):
    """The replica rejected the call (4xx) or a request failed inside it."""

    def __init__(self, status_code: int, message: str, fields: list[dict] | None = None) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.fields = fields or []


class RolloutUnavailableError(Exception):
    """The replica could not be reached (or kept answering 5xx) within the retry budget."""


class _Retryable(Exception):
    pass


@dataclass(frozen=True)
class ReadyStatus:
    ready: bool
    weight_version: int | None
    reason: str
    model: str


def _error_of(response: httpx.Response) -> RolloutRequestError:
    try:
        body = response.json()
        return RolloutRequestError(response.status_code, body.get("error", response.text), body.get("fields"))
    except ValueError:
        return RolloutRequestError(response.status_code, response.text)


class RolloutClient:
    """timeout_s: the longest a whole call may take (a weight commit waits for the receive).
    connect_timeout_s: a replica whose host is gone (cable pulled, node lost) fails fast here.
    idle_timeout_s: a generate stream with nothing for this long (the server sends a keepalive line
    every few seconds) is treated as a lost connection and retried elsewhere.
    probe_timeout_s: liveness and version probes.
    control_token: the job's control token, sent with every request (the replica requires it on its
    control endpoints: weights, sleep, wake)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
        probe_timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        control_token: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._stream_timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s, read=idle_timeout_s)
        self._probe_timeout = httpx.Timeout(probe_timeout_s, connect=min(connect_timeout_s, probe_timeout_s))
        self._http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
                                       transport=transport, headers=bearer_header(control_token))

    async def __aenter__(self) -> RolloutClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _backoff(self, attempt: int, cause: BaseException) -> None:
        if attempt > self.max_retries:
            raise RolloutUnavailableError(f"{self.base_url}: {cause}") from cause
        await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    async def generate_stream(self, requests: Sequence[GenerateRequest]) -> AsyncIterator[tuple[int, GenerateResult]]:
        """Yields (index into `requests`, result) as each request finishes on the replica."""
        remaining = dict(enumerate(requests))
        attempt = 0
        while remaining:
            indices = sorted(remaining)
            body = {"requests": [remaining[i].model_dump(mode="json") for i in indices]}
            try:
                async with self._http.stream("POST", "/v1/generate", json=body,
                                             timeout=self._stream_timeout) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        error = _error_of(response)
                        if response.status_code >= 500:
                            raise _Retryable(str(error))
                        raise error
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        original = indices[item["index"]]
                        if "error" in item:
                            err = item["error"]
                            raise RolloutRequestError(500, f"requests[{original}]: {err['type']}: {err['message']}")
                        del remaining[original]
                        yield original, GenerateResult.from_dict(item["result"])
                if remaining:
                    raise _Retryable("stream ended before every result arrived")
            except (httpx.TransportError, _Retryable) as exc:
                attempt += 1
                await self._backoff(attempt, exc)

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        results: list[GenerateResult | None] = [None] * len(requests)
        async for index, result in self.generate_stream(requests):
            results[index] = result
        return results  # type: ignore[return-value]

    async def _request(self, method: str, path: str, body: dict | None = None, retry: bool = True,
                       probe: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                if probe:
                    response = await self._http.request(method, path, json=body, timeout=self._probe_timeout)
                else:
                    response = await self._http.request(method, path, json=body)
                if response.status_code >= 500 and response.status_code != 503 and retry:
                    raise _Retryable(response.text)
                return response
            except (httpx.TransportError, _Retryable) as exc:
                if not retry:
                    raise RolloutUnavailableError(f"{self.base_url}: {exc}") from exc
                attempt += 1
                await self._backoff(attempt, exc)

    async def readyz(self, retry: bool = True) -> ReadyStatus:
        body = (await self._request("GET", "/readyz", retry=retry, probe=True)).json()
        return ReadyStatus(body["ready"], body["weight_version"], body["reason"], body["model"])

    async def healthz(self) -> bool:
        try:
            return (await self._request("GET", "/healthz", retry=False, probe=True)).status_code == 200
        except RolloutUnavailableError:
            return False

    async def wait_live(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.healthz():
            if time.monotonic() > deadline:
                raise RolloutUnavailableError(f"{self.base_url}: not live after {timeout_s}s")
            await asyncio.sleep(poll_s)

    async def health(self) -> dict:
        return (await self._request("GET", "/v1/health", probe=True)).json()

    async def metrics_text(self) -> str:
        return (await self._request("GET", "/metrics")).text

    async def weights(self, action: BaseModel) -> dict:
        """POST /v1/weights; not retried (begin is not idempotent)."""
        response = await self._request("POST", "/v1/weights", action.model_dump(mode="json"), retry=False)
        if response.status_code >= 400:
            raise _error_of(response)
        return response.json()

    async def load_checkpoint(self, path: str, version: int) -> dict:
        return await self.weights(WeightCheckpointLoad(path=path, version=version))

    async def sleep(self, level: int = 1) -> dict:
        response = await self._request("POST", "/v1/sleep", {"level": level})
        if response.status_code >= 400:
            raise _error_of(response)
        return response.json()

    async def wake(self) -> dict:
        response = await self._request("POST", "/v1/wake")
        if response.status_code >= 400:
            raise _error_of(response)
        return response.json()


@dataclass(frozen=True)
class SyncLayout:
    """Group ranks of one sync: the sender is rank 0 of every source's group, replica i's receivers start
    at `offsets[i]`."""

    world_size: int
    offsets: list[int]
    devices: list[str]
    """Where each replica's received weights land ("cpu" or "cuda")."""


async def sync_layout(clients: Sequence[RolloutClient]) -> SyncLayout:
    """Asks every replica how many receiver ranks it has (vLLM: its TP size; HF: 1) and on what device."""
    healths = await asyncio.gather(*(client.health() for client in clients))
    receivers = [int(h["weight_receivers"]) for h in healths]
    return SyncLayout(1 + sum(receivers), [1 + sum(receivers[:i]) for i in range(len(clients))],
                      [str(h.get("device", "cpu")) for h in healths])


async def run_weight_sync(
    clients: Sequence[RolloutClient],
    layout: SyncLayout,
    sources: Sequence[SyncSource],
    version: int,
    send: Callable[[], Awaitable[object]],
    *,
    backend: Literal["gloo", "nccl"],
    timeout_s: float,
) -> object:
    """begin on every replica -> `send()` (the senders broadcast) -> commit everywhere; returns what
    `send` returned. On any failure every replica is told to abort and keeps serving its old version."""
    try:
        begins = [
            WeightSyncBegin(version=version, sources=list(sources), world_size=layout.world_size, rank_offset=offset,
                            backend=backend, timeout_s=timeout_s)
            for offset in layout.offsets
        ]
        await asyncio.gather(*(client.weights(b) for client, b in zip(clients, begins, strict=True)))
        result = await send()
        commit = WeightSyncCommit(version=version, timeout_s=timeout_s)
        await asyncio.gather(*(client.weights(commit) for client in clients))
        return result
    except BaseException:
        await asyncio.gather(*(client.weights(WeightSyncAbort()) for client in clients), return_exceptions=True)
        raise


async def push_weights(
    clients: Sequence[RolloutClient],
    weights: Iterable[tuple[str, torch.Tensor]],
    version: int,
    *,
    master_addr: str,
    backend: Literal["gloo", "nccl"] = "gloo",
    master_port: int = 0,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    timeout_s: float = 300.0,
    device: torch.device | str | None = None,
    token: str | None = None,
) -> SendStats:
    """One sync of `weights` (HF names) from this process, the only sender, to every replica.

    `master_addr`: the address the replicas reach this process at. `token`: the job's control token
    (the replicas' clients carry it too). A learner with several senders (one per pipeline stage) uses
    `sync_layout` + `run_weight_sync` directly.
    """
    layout = await sync_layout(clients)
    sender = WeightSender(master_addr=master_addr, master_port=master_port, backend=backend,
                          group_name=f"forkrl-weights/v{version}/{uuid.uuid4().hex[:8]}", timeout_s=timeout_s,
                          bucket_bytes=bucket_bytes, device=device, token=token)
    try:
        async def send() -> SendStats:
            return await asyncio.to_thread(sender.send, weights, version, layout.world_size)

        stats = await run_weight_sync(clients, layout, [sender.source()], version, send, backend=backend,
                                      timeout_s=timeout_s)
        assert isinstance(stats, SendStats)
        return stats
    finally:
        sender.close()


async def ensure_weights(
    clients: Sequence[RolloutClient],
    expected_version: int,
    weights_fn: Callable[[], Iterable[tuple[str, torch.Tensor]]],
    **push_kwargs,
) -> list[int]:
    """Re-pushes `weights_fn()` as `expected_version` to every replica serving another version.

    Returns the indices of the replicas that were stale (empty when all were current).
    """
    statuses = await asyncio.gather(*(client.readyz() for client in clients))
    stale = [i for i, status in enumerate(statuses) if status.weight_version != expected_version]
    if stale:
        await push_weights([clients[i] for i in stale], weights_fn(), expected_version, **push_kwargs)
    return stale
