"""Async client of the verifier service, used by the training controller.

Batches are split into chunks of `max_batch_items` and sent concurrently. Connection errors,
timeouts, 5xx and 429 are retried with exponential backoff and full jitter; a 429/503 `Retry-After`
is honoured. Scoring is a pure function of the item, so resending a chunk whose response was lost is
harmless; the client checks that every chunk comes back with exactly its ids in order, so a caller
never sees a sample scored twice or lost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import TypeAdapter

from forkrl.rollout.verifier.schemas import CodeItem, MathItem, VerifyItem, VerifyResponse, VerifyResult

_ITEM_ADAPTER: TypeAdapter[MathItem | CodeItem] = TypeAdapter(VerifyItem)
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class VerifierError(RuntimeError):
    """Base class of the client's errors."""


class VerifierRequestError(VerifierError):
    """The service rejected the request (4xx other than 429); retrying cannot help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"verifier rejected the request with {status}: {body[:1000]}")
        self.status, self.body = status, body


class VerifierUnavailable(VerifierError):
    """Retries were exhausted."""


class VerifierProtocolError(VerifierError):
    """The response does not hold exactly the request's ids in order."""


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class VerifierClient:
    """`await client.verify(items)` -> one VerifyResult per item, in order."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 8,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 30.0,
        max_batch_items: int = 512,
        max_concurrent_batches: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if max_batch_items < 1 or max_concurrent_batches < 1 or max_retries < 0:
            raise ValueError("max_batch_items and max_concurrent_batches must be >= 1, max_retries >= 0")
        self.max_retries = max_retries
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.max_batch_items = max_batch_items
        self._semaphore = asyncio.Semaphore(max_concurrent_batches)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport
        )

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Delay before retry `attempt` (1-based): full jitter, or the server's Retry-After plus a little."""
        if retry_after_s is not None:
            return retry_after_s + self._rng.uniform(0.0, min(1.0, 0.1 * retry_after_s + 0.05))
        return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1)))

    async def verify(self, items: Sequence[MathItem | CodeItem | Mapping[str, Any]]) -> list[VerifyResult]:
        """Score `items`; raises ValueError for invalid items (naming the field) or duplicate ids."""
        parsed: list[MathItem | CodeItem] = []
        for index, item in enumerate(items):
            try:
                parsed.append(item if isinstance(item, (MathItem, CodeItem)) else _ITEM_ADAPTER.validate_python(item))
            except ValueError as error:
                raise ValueError(f"items[{index}]: {error}") from error
        ids = [item.id for item in parsed]
        if len(set(ids)) != len(ids):
            raise ValueError("items: ids must be unique within one verify call")
        chunks = [parsed[i : i + self.max_batch_items] for i in range(0, len(parsed), self.max_batch_items)]
        answers = await asyncio.gather(*(self._send(chunk) for chunk in chunks))
        return [result for answer in answers for result in answer]

    async def _send(self, chunk: list[MathItem | CodeItem]) -> list[VerifyResult]:
        body = {"items": [item.model_dump(mode="json", exclude_none=True) for item in chunk]}
        async with self._semaphore:
            attempt = 0
            while True:
                retry_after: float | None = None
                try:
                    response = await self._http.post("/v1/verify", json=body)
                except httpx.TransportError as error:
                    failure = f"{type(error).__name__}: {error}"
                else:
                    if response.status_code == 200:
                        return self._check(chunk, VerifyResponse.model_validate_json(response.content).results)
                    if response.status_code not in _RETRYABLE_STATUS:
                        raise VerifierRequestError(response.status_code, response.text)
                    failure = f"HTTP {response.status_code}: {response.text[:200]}"
                    retry_after = _retry_after_s(response)
                attempt += 1
                if attempt > self.max_retries:
                    raise VerifierUnavailable(f"verifier unavailable after {self.max_retries} retries: {failure}")
                await self._sleep(self.backoff_s(attempt, retry_after))

    @staticmethod
    def _check(chunk: list[MathItem | CodeItem], results: list[VerifyResult]) -> list[VerifyResult]:
        sent, got = [item.id for item in chunk], [result.id for result in results]
        if sent != got:
            raise VerifierProtocolError(f"sent ids {sent[:5]}... ({len(sent)}), got {got[:5]}... ({len(got)})")
        return results

    async def health(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def info(self) -> dict[str, Any]:
        response = await self._http.get("/v1/info")
        response.raise_for_status()
        return response.json()
