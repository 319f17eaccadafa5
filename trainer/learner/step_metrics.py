"""From the loss reports of one mini-batch's micro-batches (on every data-parallel rank) to one exact
`LossMetrics` (trainer/metrics/records.py): counts are summed, fractions are weighted by the tokens they
count, ratio extremes are taken over all tokens, and the entropy percentiles are order statistics of the
whole mini-batch found by radix selection (a few KiB of communication, no token is gathered).

Collective over the data-parallel group; runs on the last pipeline stage, which holds the losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from forkrl.trainer.global_selection import radix_select_kth
from forkrl.trainer.metrics.records import (
    ENTROPY_QUANTILES,
    ByTokenType,
    EntropyPercentiles,
    ForkingStats,
    LossMetrics,
    MismatchKL,
    RatioStats,
)

# Per-micro-batch objective metrics that are not token-weighted means of the response tokens.
_SUMMED = ("kl_loss",)  # loss shares, like `loss` itself (which MicroBatchReport carries)
_NOT_MEANS = {"loss", "kl_loss", "response_tokens", "high_tokens", "ratio/min", "ratio/max", "forking/threshold",
              "pg_token_frac"}
_HIGH_KEYS = ("clip_frac/high", "kl/high")
_LOW_KEYS = ("clip_frac/low", "kl/low")


@dataclass
class MicroBatchReport:
    """What the loss function of one micro-batch reports (see loss.py): the loss share and token counts,
    the objective library's metrics, and the response-token entropies the percentiles are taken over."""

    loss: float
    tokens: int
    pg_tokens: int
    metrics: dict[str, float]
    entropy: torch.Tensor
    """[response tokens] fp32, detached, on the loss's device."""


@dataclass
class _Partial:
    """This rank's sums, before the data-parallel reduction (small: sent with all_gather_object)."""

    loss: float = 0.0
    tokens: int = 0
    pg_tokens: int = 0
    high_tokens: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    ratio_min: float = math.inf
    ratio_max: float = -math.inf
    thresholds: list[float] = field(default_factory=list)
    summed: dict[str, float] = field(default_factory=dict)

    def add_mean(self, key: str, value: float, weight: float) -> None:
        if weight > 0 and math.isfinite(value):
            self.sums[key] = self.sums.get(key, 0.0) + value * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def mean(self, key: str) -> float | None:
        weight = self.weights.get(key, 0.0)
        return self.sums[key] / weight if weight > 0 else None

    def merge(self, other: _Partial) -> None:
        self.loss += other.loss
        self.tokens += other.tokens
        self.pg_tokens += other.pg_tokens
        self.high_tokens += other.high_tokens
        for key, value in other.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.weights[key] = self.weights.get(key, 0.0) + other.weights[key]
        for key, value in other.summed.items():
            self.summed[key] = self.summed.get(key, 0.0) + value
        self.ratio_min = min(self.ratio_min, other.ratio_min)
        self.ratio_max = max(self.ratio_max, other.ratio_max)
        self.thresholds += other.thresholds


def _local_partial(reports: Sequence[MicroBatchReport], split_thresholds: Sequence[float]) -> _Partial:
    part = _Partial(thresholds=[t for t in split_thresholds if math.isfinite(t)])
    for report in reports:
        m = report.metrics
        tokens = report.tokens
        high = int(m.get("high_tokens", 0))
        part.loss += report.loss
        part.tokens += tokens
        part.pg_tokens += report.pg_tokens
        part.high_tokens += high
        for key in _SUMMED:
            if key in m:
                part.summed[key] = part.summed.get(key, 0.0) + m[key]
        if "ratio/min" in m:
            part.ratio_min = min(part.ratio_min, m["ratio/min"])
            part.ratio_max = max(part.ratio_max, m["ratio/max"])
        if "forking/threshold" in m:
            part.thresholds.append(m["forking/threshold"])
        for key, value in m.items():
            if key in _NOT_MEANS or key.startswith("entropy/"):
                continue
            weight = high if key in _HIGH_KEYS else tokens - high if key in _LOW_KEYS else tokens
            part.add_mean(key, float(value), weight)
    return part


def exact_percentiles(values: torch.Tensor, total: int, group: dist.ProcessGroup | None) -> dict[int, float]:
    """ENTROPY_QUANTILES of the values held by all ranks (`total` of them), as torch.quantile's linear
    interpolation would give on their concatenation. values: [n] fp32 on this rank. Collective."""
    order_stats: dict[int, float] = {}

    def kth(k: int) -> float:  # 1-indexed k-th smallest
        if k not in order_stats:
            order_stats[k] = radix_select_kth(values, k, group, largest=False)[0]
        return order_stats[k]

    out = {}
    for p in ENTROPY_QUANTILES:
        position = p / 100 * (total - 1)
        below = math.floor(position)
        low, high = kth(below + 1), kth(min(below + 2, total))
        out[p] = low + (position - below) * (high - low)
    return out


def summarize_losses(reports: Sequence[MicroBatchReport], group: dist.ProcessGroup | None,
                     split_thresholds: Sequence[float] = ()) -> LossMetrics:
    """The mini-batch's loss metrics over this rank's micro-batches and every rank of `group` (None = no DP).

    split_thresholds: forking thresholds computed before the loss (the global selection), in addition to
    those the loss computed per micro-batch. Every rank of `group` must call (collective)."""
    if group is not None and dist.get_world_size(group) <= 1:
        group = None
    part = _local_partial(reports, split_thresholds)
    device = reports[0].entropy.device if reports else torch.device("cpu")
    local_entropy = torch.cat([r.entropy.reshape(-1).float() for r in reports]
                              + [torch.empty(0, dtype=torch.float32, device=device)])
    entropy_sum = float(local_entropy.double().sum())
    if group is not None:
        gathered: list[tuple[_Partial, float, int] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, (part, entropy_sum, int(local_entropy.numel())), group=group)
        part, entropy_sum, entropy_count = _Partial(), 0.0, 0
        for item in gathered:
            assert item is not None
            part.merge(item[0])
            entropy_sum += item[1]
            entropy_count += item[2]
    else:
        entropy_count = int(local_entropy.numel())
    return _summary(part, entropy_summary(local_entropy, entropy_count, entropy_sum, group))


def entropy_summary(values: torch.Tensor, total: int, total_sum: float, group: dist.ProcessGroup | None = None
                    ) -> EntropyPercentiles | None:
    """Mean and exact percentiles of the entropies held by all ranks of `group` (None: this process only).
    values: [n] nats on this rank; total, total_sum: their count and sum over all ranks. Collective."""
    if not total:
        return None
    quantiles = exact_percentiles(values.float(), total, group)
    return EntropyPercentiles(mean=total_sum / total, **{f"p{p}": v for p, v in quantiles.items()})


def _by_type(part: _Partial, name: str) -> ByTokenType | None:
    overall = part.mean(name)
    if overall is None:
        return None
    return ByTokenType(all=overall, high=part.mean(f"{name}/high"), low=part.mean(f"{name}/low"))


def _summary(part: _Partial, entropy: EntropyPercentiles | None) -> LossMetrics:
    ratio = None
    if (mean := part.mean("ratio/mean")) is not None:
        ratio = RatioStats(mean=mean, min=part.ratio_min, max=part.ratio_max)
    mismatch = None
    if (k1 := part.mean("mismatch/kl_k1")) is not None and (k3 := part.mean("mismatch/kl_k3")) is not None:
        mismatch = MismatchKL(k1=k1, k3=k3)
    forking = None
    if (selected := part.mean("forking/selected_frac")) is not None:
        t = part.thresholds
        forking = ForkingStats(selected_frac=selected, threshold=sum(t) / len(t) if t else None,
                               threshold_min=min(t) if t else None, threshold_max=max(t) if t else None)
    typed = {"ratio/mean", "mismatch/kl_k1", "mismatch/kl_k3", "forking/selected_frac", "dual_clip_frac",
             "clip_frac", "kl", *_HIGH_KEYS, *_LOW_KEYS}
    other = {k: v for k in sorted(part.sums) if k not in typed and (v := part.mean(k)) is not None}
    other.update(part.summed)
    return LossMetrics(
        loss=part.loss, response_tokens=part.tokens, pg_tokens=part.pg_tokens, high_tokens=part.high_tokens,
        entropy=entropy, ratio=ratio, clip_frac=_by_type(part, "clip_frac"), dual_clip_frac=part.mean("dual_clip_frac"),
        kl=_by_type(part, "kl"), mismatch=mismatch, forking=forking, other=other,
    )
