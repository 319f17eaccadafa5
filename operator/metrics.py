"""The operator's own Prometheus metrics (`forkrl_operator_*`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "forkrl_operator_reconciles", "Reconciles of an RLVRJob, by outcome", ["outcome"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "forkrl_operator_reconcile_duration_seconds",
            "Wall time of one reconcile",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.applies = Counter(
            "forkrl_operator_child_applies",
            "Server-side applies of children, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.deletes = Counter(
            "forkrl_operator_child_deletes",
            "Children deleted by the operator, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.status_writes = Counter("forkrl_operator_status_writes", "RLVRJob status patches", registry=self.registry)
        self.events = Counter(
            "forkrl_operator_events", "Kubernetes Events posted, by reason", ["reason"], registry=self.registry
        )
        self.jobs = Gauge(
            "forkrl_operator_jobs", "RLVRJobs by phase at their last reconcile", ["phase"], registry=self.registry
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)
