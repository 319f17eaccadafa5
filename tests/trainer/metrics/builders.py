"""Step records with every field filled, for the sinks' tests (values differ per step)."""

from __future__ import annotations

from forkrl.trainer.metrics.records import (
    ByTokenType,
    DynamicSamplingStats,
    EntropyPercentiles,
    ForkingStats,
    LearnerStepMetrics,
    MismatchKL,
    PhaseSeconds,
    RatioStats,
    ReplicaStats,
    SampleStats,
    StalenessStats,
    StepRecord,
    SyncStats,
    TrainedStats,
)


def learner_metrics(step: int = 1, **changes: object) -> LearnerStepMetrics:
    values: dict[str, object] = dict(
        loss=-0.01 * step, response_tokens=400, pg_tokens=80, grad_norm=0.5 + step, lr=1e-5, weight_version=2 * step,
        seconds=1.5, tokens_per_second=900.0, peak_memory_mib=2048.0, high_tokens=80,
        entropy=EntropyPercentiles(mean=0.6, p10=0.01, p50=0.2, p80=0.9, p90=1.4, p99=2.5),
        ratio=RatioStats(mean=1.0, min=0.7, max=1.4), clip_frac=ByTokenType(all=0.0625, high=0.125, low=0.046875),
        dual_clip_frac=0.0, kl=ByTokenType(all=0.02, high=0.05, low=0.0125), mismatch=MismatchKL(k1=0.001, k3=2e-4),
        forking=ForkingStats(selected_frac=0.2, threshold=0.9, threshold_min=0.8, threshold_max=1.0),
        other={"archer/reasoning_frac": 0.2},
    )
    values.update(changes)
    return LearnerStepMetrics(**values)  # type: ignore[arg-type]


def step_record(step: int = 1, trained: bool = True) -> StepRecord:
    return StepRecord(
        step=step, weight_version=step,
        generated=SampleStats(samples=16, accuracy=0.5, reward_mean=0.25, response_length_mean=12.5,
                              response_length_max=30, truncated_frac=0.0625),
        dynamic_sampling=DynamicSamplingStats(rounds=2, dropped_groups=3, dropped_all_correct=1,
                                              prompts_skipped_too_long=0),
        staleness=StalenessStats(dropped_groups=0, lag_max=1, lag_mean=0.5, lag_per_sample=[0, 1]),
        replicas=ReplicaStats(serving=2, down=0, failures_total=1, repushed_total=0),
        sync=SyncStats(senders=1, bytes=4096),
        time=PhaseSeconds(rollout=2.0, verify=0.25, logprobs=0.5, update=1.5, sync=0.125, step=4.5),
        tokens_per_second=44.4,
        trained=TrainedStats(samples=8, accuracy=0.375, reward_mean=0.375, shaped_reward_mean=0.3,
                             advantage_abs_mean=0.8, response_length_mean=11.0, response_length_max=30,
                             truncated_frac=0.0) if trained else None,
        entropy=EntropyPercentiles(mean=0.61, p10=0.011, p50=0.21, p80=0.91, p90=1.41, p99=2.51) if trained else None,
        learner=learner_metrics(step) if trained else None,
    )
