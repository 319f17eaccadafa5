"""Typed per-step records: what the learner measures, what the controller adds, and their one flat naming
(`generated/accuracy`, `learner/clip_frac/high`) shared by metrics.jsonl, TensorBoard and the report."""

from forkrl.trainer.metrics.flat import flatten, unflatten
from forkrl.trainer.metrics.records import (
    ENTROPY_QUANTILES,
    ByTokenType,
    DynamicSamplingStats,
    EntropyPercentiles,
    EvalRecord,
    ForkingStats,
    LearnerStepMetrics,
    LossMetrics,
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

__all__ = [
    "ENTROPY_QUANTILES", "ByTokenType", "DynamicSamplingStats", "EntropyPercentiles", "EvalRecord", "ForkingStats",
    "LearnerStepMetrics", "LossMetrics", "MismatchKL", "PhaseSeconds", "RatioStats", "ReplicaStats", "SampleStats",
    "StalenessStats", "StepRecord", "SyncStats", "TrainedStats", "flatten", "unflatten",
]
