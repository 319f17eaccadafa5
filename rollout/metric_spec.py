"""One Prometheus metric as data: name, type, help and labels. Every forkrl component (controller, learner,
rollout, verifier, operator) declares its metrics as a tuple of `MetricSpec`s and builds its collectors from
them, so docs/metrics.md, the Grafana dashboards and the alert rules read the names the processes export.

Naming: `forkrl_<component>_<what>_<unit>`. The unit is a base unit (`seconds`, `bytes`, `nats`), `ratio`
for a fraction in [0, 1], `tokens_per_second`, or the plural noun of what is counted (`tokens`, `requests`,
`items`); a counter adds `_total` after it. A dimensionless value with no natural unit (a reward, a loss, a
step index, a weight version, a 0/1 state) ends in its own name and is listed in `DIMENSIONLESS`.

This module imports only prometheus_client, so the operator and the verifier can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Kind = Literal["counter", "gauge", "histogram"]
COMPONENTS = ("trainer", "learner", "rollout", "verifier", "operator")
UNITS = (
    "seconds",
    "bytes",
    "nats",
    "ratio",
    "tokens_per_second",
    "tokens",
    "requests",
    "items",
    "samples",
    "groups",
    "versions",
    "replicas",
    "processes",
    "updates",
    "syncs",
    "kills",
    "restarts",
    "jobs",
    "reconciles",
    "applies",
    "deletes",
    "writes",
    "events",
)
"""Unit suffixes, longest match first where one ends another (`tokens_per_second` before `seconds`)."""
DIMENSIONLESS = frozenset({
    "forkrl_trainer_step",
    "forkrl_trainer_weight_version",
    "forkrl_trainer_reward",
    "forkrl_learner_loss",
    "forkrl_learner_grad_norm",
    "forkrl_learner_learning_rate",
    "forkrl_rollout_weight_version",
    "forkrl_rollout_sleeping",
})
"""Metrics whose value has no unit: indices, identifiers, rewards and losses, 0/1 states."""
TARGET_LABELS = ("namespace", "pod", "job", "instance")
"""Labels Prometheus adds to every series of a Kubernetes scrape target (the PodMonitor sets `job` to the
pod's `forkrl.dev/job` label, the RLVRJob's name)."""

_NAME = re.compile(rf"^forkrl_({'|'.join(COMPONENTS)})_[a-z][a-z0-9_]*[a-z0-9]$")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    """The name PromQL uses: a counter's ends in `_total`; a histogram's is the base of `_bucket`/`_sum`/`_count`."""
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if problem := naming_problem(self):
            raise ValueError(problem)

    @property
    def component(self) -> str:
        return self.name.split("_")[1]

    @property
    def series(self) -> tuple[str, ...]:
        """Every sample name it exports."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)

    def create(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        return {"counter": self.counter, "gauge": self.gauge, "histogram": self.histogram}[self.kind](registry)

    def counter(self, registry: CollectorRegistry) -> Counter:
        self._expect("counter")
        return Counter(self.name, self.help, self.labels, registry=registry)

    def gauge(self, registry: CollectorRegistry) -> Gauge:
        self._expect("gauge")
        return Gauge(self.name, self.help, self.labels, registry=registry)

    def histogram(self, registry: CollectorRegistry) -> Histogram:
        self._expect("histogram")
        if self.buckets is None:
            return Histogram(self.name, self.help, self.labels, registry=registry)
        return Histogram(self.name, self.help, self.labels, registry=registry, buckets=self.buckets)

    def _expect(self, kind: Kind) -> None:
        if self.kind != kind:
            raise TypeError(f"{self.name} is a {self.kind}, not a {kind}")


def naming_problem(spec: MetricSpec) -> str | None:
    """Why `spec.name` breaks the naming rule, or None."""
    name = spec.name
    if not _NAME.match(name):
        return f"{name}: not forkrl_<{'|'.join(COMPONENTS)}>_<what>_<unit> in lower snake case"
    if (spec.kind == "counter") != name.endswith("_total"):
        return f"{name}: a counter's name, and only a counter's, ends in _total"
    if spec.kind == "histogram" and not name.endswith("_seconds"):
        return f"{name}: histograms here measure durations and end in _seconds"
    if name in DIMENSIONLESS:
        return None
    stem = name.removesuffix("_total")
    if not any(stem.endswith(f"_{unit}") for unit in UNITS):
        return f"{name}: no unit suffix (one of {', '.join(UNITS)}) and not listed as dimensionless"
    return None
