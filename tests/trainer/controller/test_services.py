"""Replica discovery: a headless Service name expands to one URL per pod address, re-resolved per step."""

from __future__ import annotations

import asyncio
import socket

import pytest

from forkrl.rollout.types import GenerateRequest
from forkrl.trainer.controller.replica_pool import ReplicaPool, expand_endpoints


def fake_dns(table: dict[str, list[str]]):
    def getaddrinfo(host, port, family=0, type=0, *args):
        if host not in table:
            raise socket.gaierror(f"unknown host {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in table[host]]

    return getaddrinfo


def test_headless_service_expands_to_pod_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"job-rollout.ns.svc": ["127.0.0.12", "127.0.0.11"],
                                                         "single.ns.svc": ["127.0.0.20"]}))
    urls = expand_endpoints(["http://job-rollout.ns.svc:8000", "http://single.ns.svc:8000", "http://gone.svc:80"])
    assert urls == ["http://127.0.0.11:8000", "http://127.0.0.12:8000", "http://single.ns.svc:8000",
                    "http://gone.svc:80"]


def test_pool_refresh_follows_scaling(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"job-rollout.ns.svc": ["127.0.0.11", "127.0.0.12"]}
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns(table))
    pool = ReplicaPool(["http://127.0.0.1:9000"], endpoints=["http://job-rollout.ns.svc:8000"])
    assert pool.urls == ["http://127.0.0.1:9000", "http://127.0.0.11:8000", "http://127.0.0.12:8000"]
    table["job-rollout.ns.svc"] = ["127.0.0.12", "127.0.0.13", "127.0.0.14"]  # scaled up, one pod replaced
    assert pool.refresh() == ["http://127.0.0.1:9000", "http://127.0.0.12:8000", "http://127.0.0.13:8000",
                              "http://127.0.0.14:8000"]
    pool.remove("http://127.0.0.1:9000")
    assert "http://127.0.0.1:9000" not in pool.urls and len(pool.clients) == 3
    asyncio.run(pool.aclose())


def test_dropped_clients_are_closed_once_no_call_uses_them() -> None:
    """Issue 15: a dropped member's client stayed open until the end of the run, and aclose() left the pool
    holding closed clients."""
    async def scenario() -> None:
        gone, kept = "http://127.0.0.1:9001", "http://127.0.0.1:9002"
        pool = ReplicaPool([gone, kept])
        dropped = pool.clients[gone]
        started, release = asyncio.Event(), asyncio.Event()

        async def slow_generate(requests: list[GenerateRequest]) -> list[str]:
            started.set()
            await release.wait()
            return [f"result of {r.request_id}" for r in requests]

        dropped.generate = slow_generate  # type: ignore[method-assign]
        call = asyncio.create_task(pool.generate([GenerateRequest(request_id="a", prompt_token_ids=[1])]))
        await started.wait()
        pool.remove(gone)  # the operator scaled down while a call is still using that replica
        await pool.probe_down()  # another call starting meanwhile must not close the client in use
        assert not dropped._http.is_closed
        release.set()
        assert await call == ["result of a"]
        await pool.versions([])  # the next call, with none running, closes it
        assert dropped._http.is_closed
        survivor = pool.clients[kept]
        await pool.aclose()
        assert survivor._http.is_closed and pool.clients == {} and pool.urls == []

    asyncio.run(scenario())
