"""The operator's own Prometheus metrics (`forkrl_operator_<what>_<unit>`).

They carry no `run` label: the reconciler counts per outcome, kind and reason, not per job (the trainer,
rollout and verifier metrics carry `run`, the RLVRJob's name, and the PodMonitor sets `job` from the pod's
`forkrl.dev/job` label)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

from forkrl.rollout.metric_spec import MetricSpec

_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RECONCILES = MetricSpec("forkrl_operator_reconciles_total", "counter",
                        "Reconciles of an RLVRJob, by outcome (ok, conflict, error)", ("outcome",))
RECONCILE_SECONDS = MetricSpec("forkrl_operator_reconcile_duration_seconds", "histogram",
                               "Wall time of one reconcile", buckets=_RECONCILE_BUCKETS)
APPLIES = MetricSpec("forkrl_operator_child_applies_total", "counter", "Server-side applies of children, by kind",
                     ("kind",))
DELETES = MetricSpec("forkrl_operator_child_deletes_total", "counter", "Children deleted by the operator, by kind",
                     ("kind",))
STATUS_WRITES = MetricSpec("forkrl_operator_status_writes_total", "counter", "RLVRJob status patches")
EVENTS = MetricSpec("forkrl_operator_events_total", "counter", "Kubernetes Events posted, by reason", ("reason",))
JOBS = MetricSpec("forkrl_operator_jobs", "gauge", "RLVRJobs by phase at their last reconcile", ("phase",))
OPERATOR_METRICS = (RECONCILES, RECONCILE_SECONDS, APPLIES, DELETES, STATUS_WRITES, EVENTS, JOBS)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.reconciles = RECONCILES.counter(r)
        self.reconcile_seconds = RECONCILE_SECONDS.histogram(r)
        self.applies = APPLIES.counter(r)
        self.deletes = DELETES.counter(r)
        self.status_writes = STATUS_WRITES.counter(r)
        self.events = EVENTS.counter(r)
        self.jobs = JOBS.gauge(r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)
