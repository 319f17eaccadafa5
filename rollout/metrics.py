"""Prometheus metrics of one rollout replica (`forkrl_rollout_<what>_<unit>`, labels run and replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from forkrl.rollout.metric_spec import Kind, MetricSpec
from forkrl.rollout.types import GenerateResult

_PHASE_BUCKETS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LABELS = ("run", "replica")


def _spec(name: str, kind: Kind, help: str, *labels: str, buckets: tuple[float, ...] | None = None) -> MetricSpec:
    return MetricSpec(name, kind, help, (*_LABELS, *labels), buckets)


REQUESTS = _spec("forkrl_rollout_requests_total", "counter", "Requests by outcome (ok, aborted, error).", "status")
GENERATED_TOKENS = _spec("forkrl_rollout_generated_tokens_total", "counter", "Generated tokens.")
PROMPT_TOKENS = _spec("forkrl_rollout_prompt_tokens_total", "counter", "Prompt tokens (once per sample).")
ABORTED_REQUESTS = _spec("forkrl_rollout_aborted_requests_total", "counter",
                         "In-flight requests aborted by a weight swap (retried or returned as aborted).")
QUEUE_DEPTH = _spec("forkrl_rollout_queue_depth_requests", "gauge", "Requests waiting for a batch.")
RUNNING = _spec("forkrl_rollout_running_requests", "gauge", "Requests in the running batch.")
PHASE_SECONDS = _spec("forkrl_rollout_phase_seconds", "histogram",
                      "Time per phase (queue, prefill, decode, generate, weight_apply).", "phase",
                      buckets=_PHASE_BUCKETS)
KV_CACHE = _spec("forkrl_rollout_kv_cache_usage_ratio", "gauge", "Fraction of the KV-cache budget in use.")
WEIGHT_VERSION = _spec("forkrl_rollout_weight_version", "gauge", "Served weight version (-1: none).")
WEIGHT_SYNC_SECONDS = _spec("forkrl_rollout_weight_sync_seconds", "histogram",
                            "Duration of a weight sync, begin to commit.", buckets=_PHASE_BUCKETS)
WEIGHT_SYNCS = _spec("forkrl_rollout_weight_syncs_total", "counter", "Weight syncs by outcome (ok, failed).", "status")
HIGH_TEMPERATURE_TOKENS = _spec("forkrl_rollout_dual_temperature_high_tokens_total", "counter",
                                "Tokens sampled at t_high under dual-temperature decoding.")
DUAL_TEMPERATURE_TOKENS = _spec("forkrl_rollout_dual_temperature_tokens_total", "counter",
                                "Tokens sampled under dual-temperature decoding.")
SLEEPING = _spec("forkrl_rollout_sleeping", "gauge", "1 while the engine sleeps.")
UNAUTHORIZED = _spec("forkrl_rollout_unauthorized_requests_total", "counter",
                     "Control requests refused for a missing or wrong control token (401).", "endpoint")
ROLLOUT_METRICS = (REQUESTS, GENERATED_TOKENS, PROMPT_TOKENS, ABORTED_REQUESTS, QUEUE_DEPTH, RUNNING, PHASE_SECONDS,
                   KV_CACHE, WEIGHT_VERSION, WEIGHT_SYNC_SECONDS, WEIGHT_SYNCS, HIGH_TEMPERATURE_TOKENS,
                   DUAL_TEMPERATURE_TOKENS, SLEEPING, UNAUTHORIZED)


class RolloutMetrics:
    """Owns its registry so that several replicas (or tests) in one process do not collide."""

    def __init__(self, run: str = "", replica: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._values = {"run": run, "replica": replica}
        r = self.registry
        self._requests = REQUESTS.counter(r)
        self.generated_tokens = GENERATED_TOKENS.counter(r).labels(**self._values)
        self.prompt_tokens = PROMPT_TOKENS.counter(r).labels(**self._values)
        self.aborted_requests = ABORTED_REQUESTS.counter(r).labels(**self._values)
        self.queue_depth = QUEUE_DEPTH.gauge(r).labels(**self._values)
        self.running_requests = RUNNING.gauge(r).labels(**self._values)
        self._phase = PHASE_SECONDS.histogram(r)
        self.kv_cache_usage = KV_CACHE.gauge(r).labels(**self._values)
        self.weight_version = WEIGHT_VERSION.gauge(r).labels(**self._values)
        self.weight_sync_seconds = WEIGHT_SYNC_SECONDS.histogram(r).labels(**self._values)
        self._weight_syncs = WEIGHT_SYNCS.counter(r)
        self.high_temperature_tokens = HIGH_TEMPERATURE_TOKENS.counter(r).labels(**self._values)
        self.dual_temperature_tokens = DUAL_TEMPERATURE_TOKENS.counter(r).labels(**self._values)
        self.sleeping = SLEEPING.gauge(r).labels(**self._values)
        self._unauthorized = UNAUTHORIZED.counter(r)
        self.weight_version.set(-1)

    def unauthorized(self, endpoint: str) -> None:
        self._unauthorized.labels(**self._values, endpoint=endpoint).inc()

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
