"""Replica discovery: a headless Service name expands to one URL per pod address, re-resolved per step."""

from __future__ import annotations

import asyncio
import socket

import pytest

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
