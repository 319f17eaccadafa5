"""Replica health in the pool: a replica marked down serves again only once it answers, and a step
with every replica down waits for one to come back instead of failing at once."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.controller.replica_pool import ReplicaPool


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _serve_later(port: int, delay_s: float) -> list[ThreadingHTTPServer]:
    started: list[ThreadingHTTPServer] = []

    def run() -> None:
        time.sleep(delay_s)
        server = ThreadingHTTPServer((LOCAL_BIND_HOST, port), _Healthz)
        started.append(server)
        server.serve_forever(poll_interval=0.1)

    threading.Thread(target=run, daemon=True).start()
    return started


def _free_port() -> int:
    from forkrl.rollout.network import bind_port

    return bind_port(LOCAL_BIND_HOST)


def test_all_replicas_down_waits_until_one_answers_again() -> None:
    port = _free_port()
    url = f"http://{LOCAL_BIND_HOST}:{port}"
    logs: list[str] = []
    pool = ReplicaPool([url], connect_timeout_s=1.0, log=logs.append)
    pool.mark_down(url, "connection refused")
    assert pool.serving == [] and pool.failures_total == 1
    started = _serve_later(port, delay_s=1.5)
    try:
        begin = time.monotonic()
        asyncio.run(pool.wait_for_serving(timeout_s=30, poll_s=0.2))
        assert pool.serving == [url] and time.monotonic() - begin >= 1.0
        assert any("waiting up to 30s" in line for line in logs) and any("answers again" in line for line in logs)
    finally:
        asyncio.run(pool.aclose())
        for server in started:
            server.shutdown()


def test_waiting_for_a_replica_that_never_comes_back_fails_with_the_reason() -> None:
    url = f"http://{LOCAL_BIND_HOST}:{_free_port()}"
    pool = ReplicaPool([url], connect_timeout_s=0.5, log=lambda _: None)
    pool.mark_down(url, "stream silent for 60s")
    with pytest.raises(RuntimeError, match="stream silent for 60s"):
        asyncio.run(pool.wait_for_serving(timeout_s=1.0, poll_s=0.2))
    asyncio.run(pool.aclose())
