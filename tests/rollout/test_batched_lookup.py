"""BatchedLookup: lookups made together share one call; lookups made during a call share the next."""

from __future__ import annotations

import asyncio

import pytest

from forkrl.rollout.batched_lookup import BatchedLookup


def test_lookups_coalesce_into_one_call_per_wave() -> None:
    calls: list[dict[str, int]] = []
    release = asyncio.Event()

    async def fetch(queries: dict[str, int]) -> dict[str, int]:
        calls.append(dict(queries))
        if len(calls) == 1:
            await release.wait()
        return {key: 10 * query for key, query in queries.items()}

    async def main() -> list[int]:
        lookup: BatchedLookup[int, int] = BatchedLookup(fetch)
        first = [asyncio.ensure_future(lookup.lookup(f"a{i}", i)) for i in range(3)]
        await asyncio.sleep(0.01)  # the first call is now running
        second = [asyncio.ensure_future(lookup.lookup(f"b{i}", i + 5)) for i in range(4)]
        await asyncio.sleep(0.01)
        release.set()
        values = await asyncio.gather(*first, *second)
        assert lookup.calls == 2
        return values

    values = asyncio.run(main())
    assert values == [0, 10, 20, 50, 60, 70, 80]
    assert calls == [{"a0": 0, "a1": 1, "a2": 2}, {"b0": 5, "b1": 6, "b2": 7, "b3": 8}]


def test_missing_keys_and_failed_calls_reach_only_their_lookups() -> None:
    async def fetch(queries: dict[str, int]) -> dict[str, int]:
        if "boom" in queries:
            raise RuntimeError("worker failed")
        return {key: query for key, query in queries.items() if key != "gone"}

    async def main() -> None:
        lookup: BatchedLookup[int, int] = BatchedLookup(fetch)
        kept, gone = lookup.lookup("kept", 3), lookup.lookup("gone", 4)
        results = await asyncio.gather(kept, gone, return_exceptions=True)
        assert results[0] == 3 and isinstance(results[1], KeyError)
        with pytest.raises(RuntimeError, match="worker failed"):
            await lookup.lookup("boom", 1)
        assert await lookup.lookup("after", 2) == 2  # a failed call does not stop later ones

    asyncio.run(main())
