"""What each component's real Prometheus registry exports once it has done its work: the controller after a
step and an evaluation, a rollout replica after requests and a weight sync, a verifier after scoring, the
operator after reconciles. Dashboards and alerts are checked against these, not against the specs."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from forkrl.operator.metrics import OperatorMetrics
from forkrl.rollout.metrics import RolloutMetrics
from forkrl.rollout.verifier.metrics import VerifierMetrics
from forkrl.trainer.metrics import EvalRecord
from forkrl.trainer.metrics.prometheus import StepMetrics
from tests.trainer.metrics.builders import step_record


def controller_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = StepMetrics("unit", registry)
    metrics.observe(step_record(1))
    metrics.observe_eval(EvalRecord(step=1, phase="after_rl", dataset="heldout", avg=0.5))
    return registry


def rollout_registry() -> CollectorRegistry:
    metrics = RolloutMetrics("unit", "r0")
    metrics.request_done("ok")
    metrics.weight_sync_done("ok", 1.0)
    metrics.observe_phase("decode", 0.5)
    metrics.unauthorized("/v1/sleep")
    return metrics.registry


def verifier_registry() -> CollectorRegistry:
    metrics = VerifierMetrics("unit", "v0")
    metrics.bind_pool(lambda: 1, lambda: 2, lambda: 4)
    metrics.bind_isolation(lambda: [{"seccomp": True, "pid_namespace": False}])
    metrics.request("/v1/verify", 200, 0.1)
    metrics.item("math", "ok", 0.01, sandbox_kills=1)
    metrics.restart("crash")
    metrics.rejected(1)
    return metrics.registry


def operator_registry() -> CollectorRegistry:
    metrics = OperatorMetrics()
    metrics.reconciles.labels(outcome="ok").inc()
    metrics.reconcile_seconds.observe(0.1)
    metrics.applies.labels(kind="RayJob").inc()
    metrics.deletes.labels(kind="RayJob").inc()
    metrics.status_writes.inc()
    metrics.events.labels(reason="Created").inc()
    metrics.jobs.labels(phase="Running").set(1)
    return metrics.registry


REGISTRIES = {
    "controller": controller_registry,
    "rollout": rollout_registry,
    "verifier": verifier_registry,
    "operator": operator_registry,
}


def exported_series() -> dict[str, set[str]]:
    """Sample name -> the label names it carries, over every component (`_created` samples left out)."""
    series: dict[str, set[str]] = {}
    for build in REGISTRIES.values():
        for family in build().collect():
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    series.setdefault(sample.name, set()).update(sample.labels)
    return series


def exported_families(build: str) -> set[str]:
    """Family names as PromQL sees them: counters with `_total`, histograms by their base name."""
    names = set()
    for family in REGISTRIES[build]().collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names
