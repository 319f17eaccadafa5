"""Evaluation metrics: avg@k and the unbiased pass@k estimator, per data set, with a confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"need 0 <= num_correct <= num_samples, got c={num_correct}, n={num_samples}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"need 1 <= k <= num_samples, got k={k}, n={num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    # Product form avoids huge binomials: prod_{i=n-c+1}^{n} (1 - k / i).
    return 1.0 - math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1, num_samples + 1))


@dataclass(frozen=True)
class EvalResult:
    """Scores of one data set: avg@k (mean per-sample accuracy), pass@k, and a 95% CI of avg@k."""

    dataset: str
    problems: int
    samples_per_problem: int
    avg_at_k: float
    pass_at_k: dict[int, float]
    ci95: tuple[float, float]
    answered: float | None = None
    """Share of samples whose final answer could be extracted (right or wrong): with it, a gain in avg@k
    splits into answering in the rewarded format and answering correctly. None when not measured."""

    def row(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"dataset": self.dataset, "problems": self.problems,
                                             f"avg@{self.samples_per_problem}": self.avg_at_k}
        out.update({f"pass@{k}": v for k, v in sorted(self.pass_at_k.items())})
        if self.answered is not None:
            out["answered"] = self.answered
        return out


def score_dataset(name: str, correctness: Sequence[Sequence[bool]], ks: Sequence[int] = (1,),
                  answered: Sequence[Sequence[bool]] | None = None) -> EvalResult:
    """correctness[i][j]: whether sample j of problem i was correct (every problem has the same n);
    answered[i][j] (optional): whether it gave an extractable final answer at all.

    The CI treats per-problem mean accuracies as i.i.d. (normal approximation, 1.96 standard errors).
    """
    if not correctness:
        raise ValueError(f"data set {name!r} has no problems to score")
    n = len(correctness[0])
    if n == 0 or any(len(samples) != n for samples in correctness):
        raise ValueError(f"data set {name!r}: every problem needs the same number (>= 1) of samples")
    per_problem = [sum(map(bool, samples)) / n for samples in correctness]
    mean = sum(per_problem) / len(per_problem)
    var = sum((p - mean) ** 2 for p in per_problem) / max(len(per_problem) - 1, 1)
    half = 1.96 * math.sqrt(var / len(per_problem))
    passes = {k: sum(pass_at_k(n, sum(map(bool, s)), k) for s in correctness) / len(correctness)
              for k in ks if k <= n}
    answered_share = None
    if answered is not None:
        if [len(a) for a in answered] != [len(c) for c in correctness]:
            raise ValueError(f"data set {name!r}: `answered` must have one flag per sample")
        answered_share = sum(map(sum, answered)) / (n * len(answered))
    return EvalResult(name, len(correctness), n, mean, passes, (mean - half, mean + half), answered_share)


def paired_difference_ci(before: Sequence[float], after: Sequence[float]) -> tuple[float, float, float]:
    """Mean of after - before over the same problems and its 95% CI (paired normal approximation).

    before/after: per-problem accuracies. Returns (difference, low, high).
    """
    if len(before) != len(after) or not before:
        raise ValueError("paired difference needs two equal, non-empty lists of per-problem scores")
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)
    half = 1.96 * math.sqrt(var / len(diffs))
    return mean, mean - half, mean + half


# Two-sided 95% Student t quantiles by degrees of freedom; the normal 1.96 beyond the table.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile_95(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t (conservative: the next smaller tabulated degrees of freedom)."""
    if degrees_of_freedom < 1:
        raise ValueError("a t-interval needs at least two values")
    return T95[max(d for d in T95 if d <= degrees_of_freedom)] if degrees_of_freedom <= 30 else 1.96


def seed_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean of per-seed results and the half-width of its 95% t-interval (0 for a single seed)."""
    if not values:
        raise ValueError("no values to average")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, t_quantile_95(len(values) - 1) * math.sqrt(var / len(values))
