"""Prometheus metrics of one verifier service (`forkrl_verifier_<what>_<unit>`, labels `run` and `replica`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from forkrl.rollout.metric_spec import Kind, MetricSpec
from forkrl.rollout.verifier.isolation import FEATURES

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


_BASE = ("run", "replica")


def _spec(name: str, kind: Kind, help: str, *labels: str, buckets: tuple[float, ...] | None = None) -> MetricSpec:
    return MetricSpec(name, kind, help, (*_BASE, *labels), buckets)


REQUESTS = _spec("forkrl_verifier_requests_total", "counter", "HTTP requests by route and status code.", "route",
                 "status")
REQUEST_SECONDS = _spec("forkrl_verifier_request_duration_seconds", "histogram", "HTTP request latency by route.",
                        "route", buckets=_LATENCY_BUCKETS)
ITEMS = _spec("forkrl_verifier_items_total", "counter", "Scored items by task and reason (internal_error: the "
              "verifier failed, not the model).", "task", "reason")
ITEM_SECONDS = _spec("forkrl_verifier_item_duration_seconds", "histogram",
                     "Time to score one item (excluding queueing) by task.", "task", buckets=_LATENCY_BUCKETS)
SANDBOX_KILLS = _spec("forkrl_verifier_sandbox_kills_total", "counter",
                      "Sandboxed programs killed at a wall-clock or output limit.")
WORKER_RESTARTS = _spec("forkrl_verifier_worker_restarts_total", "counter",
                        "Worker processes replaced, by cause (crash, timeout).", "cause")
REJECTED_ITEMS = _spec("forkrl_verifier_rejected_items_total", "counter",
                       "Items refused with 429 because the queue was full.")
QUEUE_DEPTH = _spec("forkrl_verifier_queue_depth_items", "gauge", "Items waiting for a worker.")
INFLIGHT = _spec("forkrl_verifier_inflight_items", "gauge", "Items being scored by a worker.")
WORKERS = _spec("forkrl_verifier_worker_processes", "gauge", "Live worker processes.")
ISOLATED = _spec("forkrl_verifier_sandbox_isolated_processes", "gauge",
                 "Live worker processes whose sandbox has the isolation feature (network_namespace, mount_namespace, "
                 "pid_namespace, seccomp, drop_privileges); fewer than the live workers: isolation: auto fell back.",
                 "feature")
VERIFIER_METRICS = (REQUESTS, REQUEST_SECONDS, ITEMS, ITEM_SECONDS, SANDBOX_KILLS, WORKER_RESTARTS, REJECTED_ITEMS,
                    QUEUE_DEPTH, INFLIGHT, WORKERS, ISOLATED)


class VerifierMetrics:
    """A private registry per service instance, so several apps in one process never collide."""

    def __init__(self, run: str, replica: str) -> None:
        self.registry = r = CollectorRegistry()
        self._base = {"run": run, "replica": replica}
        self.requests = REQUESTS.counter(r)
        self.request_seconds = REQUEST_SECONDS.histogram(r)
        self.items = ITEMS.counter(r)
        self.item_seconds = ITEM_SECONDS.histogram(r)
        self.sandbox_kills = SANDBOX_KILLS.counter(r)
        self.worker_restarts = WORKER_RESTARTS.counter(r)
        self.rejected_items = REJECTED_ITEMS.counter(r)
        self.queue_depth = QUEUE_DEPTH.gauge(r)
        self.inflight = INFLIGHT.gauge(r)
        self.workers = WORKERS.gauge(r)
        self.isolated = ISOLATED.gauge(r)

        for counter in (self.sandbox_kills, self.rejected_items):
            counter.labels(**self._base)  # exported as 0 before the first event

    def bind_pool(self, queued: Callable[[], float], inflight: Callable[[], float], live: Callable[[], float]) -> None:
        """Gauges read the pool at scrape time."""
        self.queue_depth.labels(**self._base).set_function(queued)
        self.inflight.labels(**self._base).set_function(inflight)
        self.workers.labels(**self._base).set_function(live)

    def bind_isolation(self, features_of_workers: Callable[[], list[dict[str, bool]]]) -> None:
        """Per feature, the live workers whose sandbox has it (read at scrape time)."""
        for feature in FEATURES:
            def count(feature: str = feature) -> float:
                return float(sum(features.get(feature, False) for features in features_of_workers()))

            self.isolated.labels(**self._base, feature=feature).set_function(count)

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
