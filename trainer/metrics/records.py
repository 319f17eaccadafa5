"""The records of one RL step. The learner fills a `LearnerStepMetrics` per optimizer update; the controller
combines the step's updates and adds what it measured around them into a `StepRecord`, which the recorder
(JSONL, TensorBoard, Prometheus), the progress bar, the cluster status and the report read by field.

Units: entropies and KL in nats, lengths in tokens, times in seconds, fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

ENTROPY_QUANTILES = (10, 50, 80, 90, 99)
"""Percentiles of the response-token entropy every record reports (p10 ... p99)."""


@dataclass(frozen=True)
class EntropyPercentiles:
    """Response-token entropy (nats): the mean and exact percentiles (linear interpolation) over all tokens."""

    mean: float
    p10: float
    p50: float
    p80: float
    p90: float
    p99: float

    def quantiles(self) -> dict[int, float]:
        """{percentile: nats} in ENTROPY_QUANTILES order."""
        return {p: getattr(self, f"p{p}") for p in ENTROPY_QUANTILES}


@dataclass(frozen=True)
class ByTokenType:
    """A per-token mean over all response tokens and over the high- and low-entropy tokens (the objective's
    own split where it has one: forking tokens, Archer's reasoning tokens; else the top
    `metrics_high_entropy_rho`)."""

    all: float
    high: float | None = None
    low: float | None = None


@dataclass(frozen=True)
class RatioStats:
    """Importance ratio pi_theta / pi_old over the response tokens."""

    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class MismatchKL:
    """KL(pi_rollout || pi_learner) on the rollout's own tokens: k1 (unbiased, may be < 0) and k3 (>= 0)."""

    k1: float
    k3: float


@dataclass(frozen=True)
class ForkingStats:
    """The forking-token split: the fraction of response tokens that got policy gradient and the entropy
    thresholds that selected them. One threshold per mini-batch under scope `mini_batch_global`, one per
    micro-batch under `micro_batch`: `threshold` is their mean, min/max their range (all equal when one)."""

    selected_frac: float
    threshold: float | None = None
    threshold_min: float | None = None
    threshold_max: float | None = None


@dataclass(frozen=True, kw_only=True)
class LossMetrics:
    """The loss side of one optimizer update on a global mini-batch, exact over its micro-batches and
    data-parallel ranks: fractions and means are token-weighted over all of them, entropy percentiles come
    from one global selection, never from averaging per-micro-batch values."""

    loss: float
    response_tokens: int
    pg_tokens: int
    """Response tokens that received policy gradient (all of them for DAPO; the forking tokens for 80/20)."""
    high_tokens: int = 0
    """Response tokens on the high-entropy side of the split the by-type metrics use (the rest are low)."""
    entropy: EntropyPercentiles | None = None
    """Current-policy entropy of the mini-batch (one update only: percentiles do not combine)."""
    ratio: RatioStats | None = None
    clip_frac: ByTokenType | None = None
    dual_clip_frac: float | None = None
    kl: ByTokenType | None = None
    mismatch: MismatchKL | None = None
    forking: ForkingStats | None = None
    other: dict[str, float] = field(default_factory=dict)
    """Objective-specific token-weighted means (`archer/reasoning_frac`, `cov/zeroed_frac`, `tis/weight_mean`)."""


@dataclass(frozen=True, kw_only=True)
class LearnerStepMetrics(LossMetrics):
    """One optimizer update (or a step's updates combined): the loss side plus what the optimizer and the
    clock measured."""

    grad_norm: float
    lr: float
    weight_version: int
    """The learner's weight version after the update (the synced version plus updates since)."""
    seconds: float
    tokens_per_second: float
    """Prompt and response tokens processed per second of the update (forward + backward + optimizer)."""
    peak_memory_mib: float
    """Rank 0's peak memory so far: CUDA allocated on GPU, resident set on CPU."""
    updates: int = 1
    """Optimizer updates this record covers (a step's combined record: epochs x mini-batches)."""

    @staticmethod
    def combine(updates: Sequence[LearnerStepMetrics]) -> LearnerStepMetrics:
        """The record of a step's updates: loss and grad norm averaged over updates, fractions weighted by
        the tokens they count, ratio extremes and thresholds over all, the last update's version and lr."""
        if not updates:
            raise ValueError("combine needs at least one update")
        if len(updates) == 1:
            return updates[0]
        tokens = [u.response_tokens for u in updates]
        last = updates[-1]
        return LearnerStepMetrics(
            loss=sum(u.loss for u in updates) / len(updates),
            response_tokens=sum(tokens),
            pg_tokens=sum(u.pg_tokens for u in updates),
            grad_norm=sum(u.grad_norm for u in updates) / len(updates),
            lr=last.lr,
            weight_version=last.weight_version,
            seconds=sum(u.seconds for u in updates),
            tokens_per_second=sum(u.tokens_per_second * u.seconds for u in updates) / max(
                sum(u.seconds for u in updates), 1e-12),
            peak_memory_mib=max(u.peak_memory_mib for u in updates),
            high_tokens=sum(u.high_tokens for u in updates),
            updates=sum(u.updates for u in updates),
            entropy=None,
            ratio=_combine_ratio([u.ratio for u in updates], tokens),
            clip_frac=_combine_by_type([u.clip_frac for u in updates], updates),
            dual_clip_frac=_weighted([u.dual_clip_frac for u in updates], tokens),
            kl=_combine_by_type([u.kl for u in updates], updates),
            mismatch=_combine_mismatch([u.mismatch for u in updates], tokens),
            forking=_combine_forking([u.forking for u in updates], tokens),
            other={k: v for k in sorted({k for u in updates for k in u.other})
                   if (v := _weighted([u.other.get(k) for u in updates], tokens)) is not None},
        )


def _weighted(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None and w > 0]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def _combine_ratio(values: Sequence[RatioStats | None], tokens: Sequence[int]) -> RatioStats | None:
    present = [(r, t) for r, t in zip(values, tokens, strict=True) if r is not None]
    if not present:
        return None
    mean = _weighted([r.mean for r, _ in present], [t for _, t in present])
    return RatioStats(mean=mean if mean is not None else math.nan, min=min(r.min for r, _ in present),
                      max=max(r.max for r, _ in present))


def _combine_by_type(values: Sequence[ByTokenType | None], updates: Sequence[LearnerStepMetrics]
                     ) -> ByTokenType | None:
    """Token-weighted per type: each update's high/low means weigh by its high/low token counts."""
    if all(v is None for v in values):
        return None
    tokens = [u.response_tokens for u in updates]
    high_tokens = [u.high_tokens for u in updates]
    low_tokens = [t - h for t, h in zip(tokens, high_tokens, strict=True)]
    overall = _weighted([v.all if v else None for v in values], tokens)
    return ByTokenType(all=overall if overall is not None else math.nan,
                       high=_weighted([v.high if v else None for v in values], high_tokens),
                       low=_weighted([v.low if v else None for v in values], low_tokens))


def _combine_mismatch(values: Sequence[MismatchKL | None], tokens: Sequence[int]) -> MismatchKL | None:
    k1 = _weighted([m.k1 if m else None for m in values], tokens)
    k3 = _weighted([m.k3 if m else None for m in values], tokens)
    return None if k1 is None or k3 is None else MismatchKL(k1=k1, k3=k3)


def _combine_forking(values: Sequence[ForkingStats | None], tokens: Sequence[int]) -> ForkingStats | None:
    selected = _weighted([f.selected_frac if f else None for f in values], tokens)
    if selected is None:
        return None
    present = [f for f in values if f is not None and f.threshold is not None]
    if not present:
        return ForkingStats(selected_frac=selected)
    return ForkingStats(selected_frac=selected, threshold=sum(f.threshold for f in present) / len(present),
                        threshold_min=min(f.threshold_min for f in present),
                        threshold_max=max(f.threshold_max for f in present))


# --------------------------------------------------------------------------------------------- controller


@dataclass(frozen=True)
class SampleStats:
    """The samples a step generated (every dynamic-sampling round, before any group was dropped)."""

    samples: int
    accuracy: float
    """Fraction the verifier scored correct."""
    reward_mean: float
    """The verifier's reward (before overlong shaping)."""
    response_length_mean: float
    response_length_max: int
    truncated_frac: float
    """Fraction that stopped at the response-length limit."""


@dataclass(frozen=True)
class TrainedStats:
    """The samples a step trained on (after dynamic sampling and the staleness check)."""

    samples: int
    accuracy: float
    reward_mean: float
    shaped_reward_mean: float
    """Reward after overlong shaping: what the advantages are computed from."""
    advantage_abs_mean: float
    response_length_mean: float
    response_length_max: int
    truncated_frac: float


@dataclass(frozen=True)
class DynamicSamplingStats:
    rounds: int
    dropped_groups: int
    dropped_all_correct: int
    prompts_skipped_too_long: int


@dataclass(frozen=True)
class StalenessStats:
    """Weight versions between each trained sample's weights and the update's."""

    dropped_groups: int
    """Groups dropped for lagging more than schedule.max_staleness versions."""
    lag_max: int
    lag_mean: float
    lag_per_sample: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ReplicaStats:
    serving: int
    down: int
    failures_total: int
    repushed_total: int
    """Replicas found on a stale version and re-pushed since the run started."""


@dataclass(frozen=True)
class SyncStats:
    senders: int
    bytes: int


@dataclass(frozen=True)
class PhaseSeconds:
    """Wall time of the step's phases; `step` is the whole step (phases overlap off-policy)."""

    rollout: float
    verify: float
    logprobs: float
    update: float
    sync: float
    step: float


@dataclass(frozen=True)
class StepRecord:
    """One RL step, as every sink sees it."""

    step: int
    weight_version: int
    """The version the replicas serve after the step's sync."""
    generated: SampleStats
    dynamic_sampling: DynamicSamplingStats
    staleness: StalenessStats
    replicas: ReplicaStats
    sync: SyncStats
    time: PhaseSeconds
    tokens_per_second: float
    """Generated tokens per second of the step's wall time."""
    trained: TrainedStats | None = None
    """None when no sample was left to train on."""
    entropy: EntropyPercentiles | None = None
    """Exact over every response token the step trained on, under the weights before its update."""
    learner: LearnerStepMetrics | None = None
    """The step's optimizer updates combined (None when it trained nothing)."""


@dataclass(frozen=True)
class EvalRecord:
    """One held-out evaluation of one data set."""

    step: int
    phase: str
    dataset: str
    avg: float
    """avg@k: mean accuracy over samples_per_problem samples per problem."""
    pass_at: dict[str, float] = field(default_factory=dict)
    """pass@k by k (string keys, as in JSON)."""
    answered: float | None = None
    """Share of samples with an extractable final answer (right or wrong); None where not measured."""
