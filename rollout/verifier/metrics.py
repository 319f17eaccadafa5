"""Prometheus metrics of one verifier service (`forkrl_verifier_*`, labels `run` and `replica`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class VerifierMetrics:
    """A private registry per service instance, so several apps in one process never collide."""

    def __init__(self, run: str, replica: str) -> None:
        self.registry = CollectorRegistry()
        self._base = {"run": run, "replica": replica}
        base = ["run", "replica"]
        self.requests = Counter(
            "forkrl_verifier_requests_total", "HTTP requests by route and status code.",
            [*base, "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "forkrl_verifier_request_duration_seconds", "HTTP request latency by route.",
            [*base, "route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.items = Counter(
            "forkrl_verifier_items_total", "Scored items by task and reason.",
            [*base, "task", "reason"], registry=self.registry,
        )  # fmt: skip
        self.item_seconds = Histogram(
            "forkrl_verifier_item_duration_seconds", "Time to score one item (excluding queueing) by task.",
            [*base, "task"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.sandbox_kills = Counter(
            "forkrl_verifier_sandbox_kills_total", "Sandboxed programs killed at a wall-clock or output limit.",
            base, registry=self.registry,
        )  # fmt: skip
        self.worker_restarts = Counter(
            "forkrl_verifier_worker_restarts_total", "Worker processes replaced, by cause (crash, timeout).",
            [*base, "cause"], registry=self.registry,
        )  # fmt: skip
        self.rejected_items = Counter(
            "forkrl_verifier_rejected_items_total", "Items refused with 429 because the queue was full.",
            base, registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "forkrl_verifier_queue_depth", "Items waiting for a worker.", base, registry=self.registry
        )
        self.inflight = Gauge(
            "forkrl_verifier_inflight_items", "Items being scored by a worker.", base, registry=self.registry
        )
        self.workers = Gauge("forkrl_verifier_workers", "Live worker processes.", base, registry=self.registry)

        for counter in (self.sandbox_kills, self.rejected_items):
            counter.labels(**self._base)  # exported as 0 before the first event

    def bind_pool(self, queued: Callable[[], float], inflight: Callable[[], float], live: Callable[[], float]) -> None:
        """Gauges read the pool at scrape time."""
        self.queue_depth.labels(**self._base).set_function(queued)
        self.inflight.labels(**self._base).set_function(inflight)
        self.workers.labels(**self._base).set_function(live)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(**self._base, route=route, status=str(status)).inc()
        self.request_seconds.labels(**self._base, route=route).observe(seconds)

    def item(self, task: str, reason: str, seconds: float, sandbox_kills: int = 0) -> None:
        self.items.labels(**self._base, task=task, reason=reason).inc()
        self.item_seconds.labels(**self._base, task=task).observe(seconds)
        if sandbox_kills:
            self.sandbox_kills.labels(**self._base).inc(sandbox_kills)

    def restart(self, cause: str) -> None:
        self.worker_restarts.labels(**self._base, cause=cause).inc()

    def rejected(self, count: int) -> None:
        self.rejected_items.labels(**self._base).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
