"""Per-key lookups on an asyncio loop coalesced into batched calls, at most one call in flight.

`VLLMEngine` needs each finished sample's high-temperature count from the vLLM workers, which only a
collective RPC can reach. Samples finish one by one (and each request's result is delivered as soon as
its samples are done), so one RPC per sample would be thousands of RPCs per batch, while waiting for the
end of `generate()` would deliver every result late. Here every lookup made while no call is running
starts one; lookups made while it runs wait for it and go together into the next one. Samples that
finish in the same engine step therefore share one call, and a `generate()` makes at most as many
calls as there are waves of finishing samples, never one per sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

Value = TypeVar("Value")
Query = TypeVar("Query")


class BatchedLookup(Generic[Query, Value]):
    """`await lookup(key, query)` -> value, answered by `fetch({key: query, ...})` -> {key: value}.

    A key that `fetch` leaves out of its answer fails with KeyError; an exception of `fetch` fails every
    lookup of that call. Use from one event loop.
    """

    def __init__(self, fetch: Callable[[dict[str, Query]], Awaitable[Mapping[str, Value]]]) -> None:
        self._fetch = fetch
        self._waiting: dict[str, tuple[Query, asyncio.Future[Value]]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.calls = 0
        """Number of `fetch` calls made so far."""

    async def lookup(self, key: str, query: Query) -> Value:
        if key in self._waiting:
            raise ValueError(f"key {key!r} is already being looked up")
        future: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (query, future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        # The first await lets every lookup made in the current loop iteration join this call.
        await asyncio.sleep(0)
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            self.calls += 1
            try:
                answer = await self._fetch({key: query for key, (query, _) in batch.items()})
            except Exception as exc:  # handed to every lookup of this call, not raised here
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            for key, (_, future) in batch.items():
                if future.done():  # the caller went away
                    continue
                if key in answer:
                    future.set_result(answer[key])
                else:
                    future.set_exception(KeyError(key))
