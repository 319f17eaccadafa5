"""The Prometheus view of the step records: `forkrl_trainer_*` gauges, counters and the step histogram, each
set from a named field of a `StepRecord` or `EvalRecord`. The Grafana dashboard (operator/dashboard.py)
is built from the names defined here, so every panel queries a metric the trainer exports."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forkrl.trainer.metrics.records import ByTokenType, EvalRecord, StepRecord

# Plain gauges: metric name -> help. Set in `StepMetrics.observe` from the field named in the comment.
REWARD = "forkrl_trainer_reward"  # generated.reward_mean
ACCURACY = "forkrl_trainer_accuracy_ratio"  # generated.accuracy
TRAINED_ACCURACY = "forkrl_trainer_trained_accuracy_ratio"  # trained.accuracy
RESPONSE_LENGTH = "forkrl_trainer_response_length_tokens"  # generated.response_length_mean
FORKING_THRESHOLD = "forkrl_trainer_forking_threshold_nats"  # learner.forking.threshold
SELECTED_RATIO = "forkrl_trainer_selected_token_ratio"  # learner.pg_tokens / learner.response_tokens
MISMATCH_KL = "forkrl_trainer_mismatch_kl_nats"  # learner.mismatch.k3
TOKENS_PER_SECOND = "forkrl_trainer_tokens_per_second"  # tokens_per_second
VERSION_LAG = "forkrl_trainer_weight_version_lag"  # staleness.lag_max
WEIGHT_VERSION = "forkrl_trainer_weight_version"  # weight_version
STEP = "forkrl_trainer_step"  # step
LOSS = "forkrl_trainer_loss"  # learner.loss
GRAD_NORM = "forkrl_trainer_grad_norm"  # learner.grad_norm
# Labelled gauges: (name, label).
ENTROPY = ("forkrl_trainer_entropy_nats", "quantile")  # entropy.p10 ... p99 -> quantile="0.1" ...
CLIP_RATIO = ("forkrl_trainer_clip_ratio", "token_type")  # learner.clip_frac.{all,high,low}
KL = ("forkrl_trainer_kl_nats", "token_type")  # learner.kl.{all,high,low}
PHASE_SECONDS = ("forkrl_trainer_phase_seconds", "phase")  # time.<phase>
EVAL_ACCURACY = ("forkrl_trainer_eval_accuracy_ratio", "dataset")  # EvalRecord.avg
# Counters and the histogram.
SAMPLES = "forkrl_trainer_samples"  # generated.samples; exported as forkrl_trainer_samples_total
DROPPED_GROUPS = "forkrl_trainer_dropped_groups"  # dynamic_sampling.dropped_groups
STEP_DURATION = "forkrl_trainer_step_duration_seconds"  # time.step

_HELP = {
    REWARD: "Mean verifier reward of the step's generated samples",
    ACCURACY: "Fraction of the step's generated samples scored correct (before dynamic sampling)",
    TRAINED_ACCURACY: "Fraction of the samples the step trained on scored correct (after dynamic sampling)",
    RESPONSE_LENGTH: "Mean response length of the step's generated samples",
    FORKING_THRESHOLD: "Entropy threshold of the forking mask (mean of those applied in the step)",
    SELECTED_RATIO: "Fraction of response tokens that received policy gradient",
    MISMATCH_KL: "KL(rollout || learner) on the rollout samples (k3)",
    TOKENS_PER_SECOND: "Generated tokens per second of wall time",
    VERSION_LAG: "Largest policy-version lag of a trained sample",
    WEIGHT_VERSION: "Weight version the rollout replicas serve",
    STEP: "Current RL step",
    LOSS: "Mean policy loss of the step's updates",
    GRAD_NORM: "Gradient norm before clipping (mean of the step's updates)",
}


class StepMetrics:
    """The run's Prometheus metrics in `registry`, labelled with the run's name."""

    def __init__(self, run: str, registry: CollectorRegistry) -> None:
        self.run = run
        self._gauges = {name: Gauge(name, doc, ["run"], registry=registry) for name, doc in _HELP.items()}
        self._entropy = Gauge(ENTROPY[0], "Response-token entropy percentile (exact over the step's tokens)",
                              ["run", ENTROPY[1]], registry=registry)
        self._clip = Gauge(CLIP_RATIO[0], "Fraction of tokens whose gradient a clip removed", ["run", CLIP_RATIO[1]],
                           registry=registry)
        self._kl = Gauge(KL[0], "KL to the reference policy", ["run", KL[1]], registry=registry)
        self._phase = Gauge(PHASE_SECONDS[0], "Wall time of the last step's phase", ["run", PHASE_SECONDS[1]],
                            registry=registry)
        self._eval = Gauge(EVAL_ACCURACY[0], "Held-out avg@k accuracy", ["run", EVAL_ACCURACY[1]], registry=registry)
        self._samples = Counter(SAMPLES, "Generated and scored samples", ["run"], registry=registry)
        self._dropped = Counter(DROPPED_GROUPS, "Groups dropped by dynamic sampling", ["run"], registry=registry)
        self._step_seconds = Histogram(STEP_DURATION, "Wall time of an RL step", ["run"], registry=registry,
                                       buckets=(0.5, 1, 2, 5, 10, 20, 60, 120, 300, 900))

    def _set(self, name: str, value: float | None) -> None:
        if value is not None:
            self._gauges[name].labels(run=self.run).set(value)

    def _set_by_type(self, gauge: Gauge, values: ByTokenType | None) -> None:
        if values is None:
            return
        for token_type in ("all", "high", "low"):
            value = getattr(values, token_type)
            if value is not None:
                gauge.labels(self.run, token_type).set(value)

    def observe(self, record: StepRecord) -> None:
        self._set(STEP, record.step)
        self._set(WEIGHT_VERSION, record.weight_version)
        self._set(REWARD, record.generated.reward_mean)
        self._set(ACCURACY, record.generated.accuracy)
        self._set(RESPONSE_LENGTH, record.generated.response_length_mean)
        self._set(TOKENS_PER_SECOND, record.tokens_per_second)
        self._set(VERSION_LAG, record.staleness.lag_max)
        if record.trained is not None:
            self._set(TRAINED_ACCURACY, record.trained.accuracy)
        if record.entropy is not None:
            for percentile, value in record.entropy.quantiles().items():
                self._entropy.labels(self.run, f"{percentile / 100:g}").set(value)
        learner = record.learner
        if learner is not None:
            self._set(LOSS, learner.loss)
            self._set(GRAD_NORM, learner.grad_norm)
            self._set(SELECTED_RATIO, learner.pg_tokens / max(learner.response_tokens, 1))
            if learner.forking is not None:
                self._set(FORKING_THRESHOLD, learner.forking.threshold)
            if learner.mismatch is not None:
                self._set(MISMATCH_KL, learner.mismatch.k3)
            self._set_by_type(self._clip, learner.clip_frac)
            self._set_by_type(self._kl, learner.kl)
        for phase in dataclasses.fields(record.time):
            self._phase.labels(self.run, phase.name).set(getattr(record.time, phase.name))
        self._samples.labels(run=self.run).inc(record.generated.samples)
        self._dropped.labels(run=self.run).inc(record.dynamic_sampling.dropped_groups)
        self._step_seconds.labels(run=self.run).observe(record.time.step)

    def observe_eval(self, record: EvalRecord) -> None:
        self._eval.labels(self.run, record.dataset).set(record.avg)
