"""Prometheus metrics of one rollout replica (`forkrl_rollout_<what>_<unit>`, labels run and replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forkrl.rollout.types import GenerateResult

_PHASE_BUCKETS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RolloutMetrics:
    """Owns its registry so that several replicas (or tests) in one process do not collide."""

    def __init__(self, run: str = "", replica: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("run", "replica")
        values = {"run": run, "replica": replica}
        r = self.registry

        def bind(metric, **extra):
            return metric.labels(**values, **extra) if extra else metric.labels(**values)

        self._requests = Counter(
            "forkrl_rollout_requests_total", "Requests by outcome.", (*labels, "status"), registry=r
        )
        self._values = values
        self.generated_tokens = bind(
            Counter("forkrl_rollout_generated_tokens_total", "Generated tokens.", labels, registry=r)
        )
        self.prompt_tokens = bind(
            Counter("forkrl_rollout_prompt_tokens_total", "Prompt tokens (once per sample).", labels, registry=r)
        )
        self.aborted_requests = bind(
            Counter(
                "forkrl_rollout_aborted_requests_total",
                "In-flight requests aborted by a weight swap (retried or returned as aborted).",
                labels,
                registry=r,
            )
        )
        self.queue_depth = bind(
            Gauge("forkrl_rollout_queue_depth_requests", "Requests waiting for a batch.", labels, registry=r)
        )
        self.running_requests = bind(
            Gauge("forkrl_rollout_running_requests", "Requests in the running batch.", labels, registry=r)
        )
        self._phase = Histogram(
            "forkrl_rollout_phase_seconds",
            "Time per phase (queue, prefill, decode, generate, weight_apply).",
            (*labels, "phase"),
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.kv_cache_usage = bind(
            Gauge("forkrl_rollout_kv_cache_usage_ratio", "Fraction of the KV-cache budget in use.", labels, registry=r)
        )
        self.weight_version = bind(
            Gauge("forkrl_rollout_weight_version", "Served weight version (-1: none).", labels, registry=r)
        )
        self.weight_sync_seconds = bind(
            Histogram(
                "forkrl_rollout_weight_sync_seconds",
                "Duration of a weight sync, begin to commit.",
                labels,
                buckets=_PHASE_BUCKETS,
                registry=r,
            )
        )
        self._weight_syncs = Counter(
            "forkrl_rollout_weight_syncs_total", "Weight syncs by outcome.", (*labels, "status"), registry=r
        )
        self.high_temperature_tokens = bind(
            Counter(
                "forkrl_rollout_dual_temperature_high_tokens_total",
                "Tokens sampled at t_high under dual-temperature decoding.",
                labels,
                registry=r,
            )
        )
        self.dual_temperature_tokens = bind(
            Counter(
                "forkrl_rollout_dual_temperature_tokens_total",
                "Tokens sampled under dual-temperature decoding.",
                labels,
                registry=r,
            )
        )
        self.sleeping = bind(Gauge("forkrl_rollout_sleeping", "1 while the engine sleeps.", labels, registry=r))
        self.weight_version.set(-1)

    def request_done(self, status: str) -> None:
        self._requests.labels(**self._values, status=status).inc()

    def weight_sync_done(self, status: str, seconds: float | None = None) -> None:
        self._weight_syncs.labels(**self._values, status=status).inc()
        if seconds is not None:
            self.weight_sync_seconds.observe(seconds)

    def observe_phase(self, phase: str, seconds: float) -> None:
        self._phase.labels(**self._values, phase=phase).observe(seconds)

    def observe_result(self, result: GenerateResult, dual_temperature: bool) -> None:
        tokens = sum(len(s.token_ids) for s in result.samples)
        self.generated_tokens.inc(tokens)
        self.prompt_tokens.inc(result.prompt_length * len(result.samples))
        if dual_temperature:
            self.dual_temperature_tokens.inc(tokens)
            self.high_temperature_tokens.inc(sum(s.num_high_temperature_tokens for s in result.samples))

    def render(self) -> bytes:
        return generate_latest(self.registry)
