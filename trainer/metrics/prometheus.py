"""The Prometheus view of the step records, exported by the controller: `forkrl_trainer_*` (the RL step) and
`forkrl_learner_*` (the step's optimizer updates, as the learner reported them in `StepRecord.learner`).
Every metric is set in `StepMetrics.observe` from a named field of a `StepRecord` or `EvalRecord`; the
Grafana dashboards and alert rules (operator/dashboards, helm/forkrl/templates/prometheusrule.yaml) query
these names, and docs/metrics.md lists them."""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import CollectorRegistry

from forkrl.rollout.metric_spec import MetricSpec
from forkrl.trainer.metrics.records import ByTokenType, EvalRecord, StepRecord

RUN = ("run",)
_STEP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 60, 120, 300, 900)


def _gauge(name: str, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "gauge", help, (*RUN, *labels))


STEP = _gauge("forkrl_trainer_step", "Last finished RL step")  # step
WEIGHT_VERSION = _gauge("forkrl_trainer_weight_version", "Weight version the rollout replicas serve")  # weight_version
REWARD = _gauge("forkrl_trainer_reward", "Mean verifier reward of the step's generated samples")
ACCURACY = _gauge("forkrl_trainer_accuracy_ratio",
                  "Fraction of the step's generated samples scored correct (before dynamic sampling)")
TRAINED_ACCURACY = _gauge("forkrl_trainer_trained_accuracy_ratio",
                          "Fraction of the samples the step trained on scored correct (after dynamic sampling)")
TRUNCATED = _gauge("forkrl_trainer_truncated_ratio",
                   "Fraction of the step's generated samples that stopped at the response-length limit")
RESPONSE_LENGTH = _gauge("forkrl_trainer_response_length_tokens",
                         "Mean response length of the step's generated samples")
ENTROPY = _gauge("forkrl_trainer_entropy_nats",
                 "Response-token entropy percentile, exact over the step's trained tokens", "quantile")
ENTROPY_MEAN = _gauge("forkrl_trainer_entropy_mean_nats", "Mean response-token entropy of the step's trained tokens")
FORKING_THRESHOLD = _gauge("forkrl_trainer_forking_threshold_nats",
                           "Entropy threshold of the forking mask (mean of those applied in the step)")
SELECTED_RATIO = _gauge("forkrl_trainer_selected_token_ratio",
                        "Fraction of response tokens that received policy gradient")  # learner.pg_tokens / response
CLIP_RATIO = _gauge("forkrl_trainer_clip_ratio", "Fraction of tokens whose gradient a clip removed, by token type",
                    "token_type")  # learner.clip_frac.{all,high,low}
KL = _gauge("forkrl_trainer_kl_nats", "KL to the reference policy, by token type", "token_type")  # learner.kl
MISMATCH_KL = _gauge("forkrl_trainer_mismatch_kl_nats", "KL(rollout || learner) on the rollout samples (k3)")
GENERATION_TPS = _gauge("forkrl_trainer_generation_tokens_per_second",
                        "Generated tokens per second of the step's wall time")  # tokens_per_second
WEIGHT_LAG = _gauge("forkrl_trainer_weight_lag_versions",
                    "Largest policy-version lag of a sample the step trained on")  # staleness.lag_max
PHASE_SECONDS = _gauge("forkrl_trainer_phase_seconds", "Wall time of the last step's phase (phases overlap "
                       "off-policy; `step` is the whole step)", "phase")  # time.<phase>
EVAL_ACCURACY = _gauge("forkrl_trainer_eval_accuracy_ratio", "Held-out avg@k accuracy", "dataset")  # EvalRecord.avg
REPLICAS = _gauge("forkrl_trainer_rollout_replicas", "Rollout replicas the controller sees, by state (serving, down)",
                  "state")  # replicas.serving / replicas.down
SYNC_BYTES = _gauge("forkrl_trainer_weight_sync_bytes", "Bytes the step's weight sync sent")  # sync.bytes
SAMPLES = MetricSpec("forkrl_trainer_generated_samples_total", "counter", "Generated and scored samples",
                     RUN)  # generated.samples
DROPPED_GROUPS = MetricSpec("forkrl_trainer_dropped_groups_total", "counter", "Prompt groups dropped, by reason "
                            "(dynamic_sampling: all rewards equal; staleness: weights too old)", (*RUN, "reason"))
STEP_DURATION = MetricSpec("forkrl_trainer_step_duration_seconds", "histogram", "Wall time of an RL step", RUN,
                           _STEP_BUCKETS)  # time.step

LOSS = _gauge("forkrl_learner_loss", "Mean policy loss of the step's optimizer updates")  # learner.loss
GRAD_NORM = _gauge("forkrl_learner_grad_norm", "Gradient norm before clipping (mean of the step's updates)")
LEARNING_RATE = _gauge("forkrl_learner_learning_rate", "Learning rate of the step's last update")  # learner.lr
UPDATE_SECONDS = _gauge("forkrl_learner_update_seconds",
                        "Learner time of the step's updates (forward, backward, optimizer)")  # learner.seconds
LEARNER_TPS = _gauge("forkrl_learner_tokens_per_second",
                     "Prompt and response tokens the learner processed per second of update")
PEAK_MEMORY = _gauge("forkrl_learner_peak_memory_bytes",
                     "Rank 0's peak memory so far: CUDA allocated on GPU, resident set on CPU")  # peak_memory_mib
UPDATES = MetricSpec("forkrl_learner_updates_total", "counter", "Optimizer updates", RUN)  # learner.updates

TRAINER_METRICS = (STEP, WEIGHT_VERSION, REWARD, ACCURACY, TRAINED_ACCURACY, TRUNCATED, RESPONSE_LENGTH, ENTROPY,
                   ENTROPY_MEAN, FORKING_THRESHOLD, SELECTED_RATIO, CLIP_RATIO, KL, MISMATCH_KL, GENERATION_TPS,
                   WEIGHT_LAG, PHASE_SECONDS, EVAL_ACCURACY, REPLICAS, SYNC_BYTES, SAMPLES, DROPPED_GROUPS,
                   STEP_DURATION)
LEARNER_METRICS = (LOSS, GRAD_NORM, LEARNING_RATE, UPDATE_SECONDS, LEARNER_TPS, PEAK_MEMORY, UPDATES)


class StepMetrics:
    """The run's controller and learner metrics in `registry`, labelled with the run's name."""

    def __init__(self, run: str, registry: CollectorRegistry) -> None:
        self.run = run
        self._metrics = {spec.name: spec.create(registry) for spec in (*TRAINER_METRICS, *LEARNER_METRICS)}

    def _get(self, spec: MetricSpec, **labels: str) -> Any:
        """The run's child of the metric (a Counter, Gauge or Histogram)."""
        return self._metrics[spec.name].labels(run=self.run, **labels)

    def _set(self, spec: MetricSpec, value: float | None, **labels: str) -> None:
        if value is not None:
            self._get(spec, **labels).set(value)

    def _set_by_type(self, spec: MetricSpec, values: ByTokenType | None) -> None:
        if values is not None:
            for token_type in ("all", "high", "low"):
                self._set(spec, getattr(values, token_type), token_type=token_type)

    def observe(self, record: StepRecord) -> None:
        self._set(STEP, record.step)
        self._set(WEIGHT_VERSION, record.weight_version)
        self._set(REWARD, record.generated.reward_mean)
        self._set(ACCURACY, record.generated.accuracy)
        self._set(TRUNCATED, record.generated.truncated_frac)
        self._set(RESPONSE_LENGTH, record.generated.response_length_mean)
        self._set(GENERATION_TPS, record.tokens_per_second)
        self._set(WEIGHT_LAG, record.staleness.lag_max)
        self._set(REPLICAS, record.replicas.serving, state="serving")
        self._set(REPLICAS, record.replicas.down, state="down")
        self._set(SYNC_BYTES, record.sync.bytes)
        if record.trained is not None:
            self._set(TRAINED_ACCURACY, record.trained.accuracy)
        if record.entropy is not None:
            self._set(ENTROPY_MEAN, record.entropy.mean)
            for percentile, value in record.entropy.quantiles().items():
                self._set(ENTROPY, value, quantile=f"{percentile / 100:g}")
        for phase in dataclasses.fields(record.time):
            self._set(PHASE_SECONDS, getattr(record.time, phase.name), phase=phase.name)
        self._get(SAMPLES).inc(record.generated.samples)
        self._get(DROPPED_GROUPS, reason="dynamic_sampling").inc(record.dynamic_sampling.dropped_groups)
        self._get(DROPPED_GROUPS, reason="staleness").inc(record.staleness.dropped_groups)
        self._get(STEP_DURATION).observe(record.time.step)
        learner = record.learner
        if learner is None:
            return
        self._set(SELECTED_RATIO, learner.pg_tokens / max(learner.response_tokens, 1))
        if learner.forking is not None:
            self._set(FORKING_THRESHOLD, learner.forking.threshold)
        if learner.mismatch is not None:
            self._set(MISMATCH_KL, learner.mismatch.k3)
        self._set_by_type(CLIP_RATIO, learner.clip_frac)
        self._set_by_type(KL, learner.kl)
        self._set(LOSS, learner.loss)
        self._set(GRAD_NORM, learner.grad_norm)
        self._set(LEARNING_RATE, learner.lr)
        self._set(UPDATE_SECONDS, learner.seconds)
        self._set(LEARNER_TPS, learner.tokens_per_second)
        self._set(PEAK_MEMORY, learner.peak_memory_mib * 2**20)
        self._get(UPDATES).inc(learner.updates)

    def observe_eval(self, record: EvalRecord) -> None:
        self._set(EVAL_ACCURACY, record.avg, dataset=record.dataset)

