"""The papers' claims as fixed decision rules over measured differences (docs/reproduction.md).

Each claim is decided by a rule written down before any run: a difference and its 95% interval, and a
verdict that depends only on where that interval lies. Nothing here looks at which answer the papers
expect, so the same rules can say a claim does not hold.

    beats(d):                 holds if the interval is above 0, does not hold if below 0, else not resolved.
    matches_or_beats(d, m):   holds if the interval's low end is above -m (not worse by more than m),
                              does not hold if the whole interval is below 0, else not resolved.
    ranks_first([d, ...]):    holds if it beats every other arm, does not hold if any other beats it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from forkrl.trainer.evaluation import paired_difference_ci, seed_interval

EQUIVALENCE_MARGIN_POINTS = 3.0
"""How much worse (held-out accuracy points) an arm may be and still "match" another."""


class Verdict(enum.StrEnum):
    HOLDS = "holds"
    NOT_RESOLVED = "not resolved at this scale"
    DOES_NOT_HOLD = "does not hold"


@dataclass(frozen=True)
class Difference:
    """A - B: the mean and its 95% interval [low, high], from `pairs` paired observations."""

    mean: float
    low: float
    high: float
    pairs: int

    def scaled(self, factor: float) -> Difference:
        return Difference(self.mean * factor, self.low * factor, self.high * factor, self.pairs)

    def text(self, digits: int = 1, unit: str = "") -> str:
        interval = f"95% CI {self.low:+.{digits}f} to {self.high:+.{digits}f}"
        return f"{self.mean:+.{digits}f}{unit} ({interval}, n={self.pairs})"


def seed_paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Difference:
    """A - B paired by seed (the same seed draws the same prompts and samples in both arms); t-interval over
    the seeds both have. Fewer than two shared seeds: a zero-width interval at the one difference."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("no seed in common: the two arms cannot be paired")
    differences = [a[s] - b[s] for s in shared]
    mean, half = seed_interval(differences)
    return Difference(mean, mean - half, mean + half, len(shared))


def problem_paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """A - B paired by problem (the same problems and sampling seeds in both): per-problem accuracies."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-empty problems in both: {len(a)} and {len(b)}")
    mean, low, high = paired_difference_ci(b, a)
    return Difference(mean, low, high, len(a))


def beats(difference: Difference) -> Verdict:
    if difference.low > 0:
        return Verdict.HOLDS
    if difference.high < 0:
        return Verdict.DOES_NOT_HOLD
    return Verdict.NOT_RESOLVED


def matches_or_beats(difference: Difference, margin: float) -> Verdict:
    """`difference` and `margin` in the same unit."""
    if difference.low > -margin:
        return Verdict.HOLDS
    if difference.high < 0:
        return Verdict.DOES_NOT_HOLD
    return Verdict.NOT_RESOLVED


def ranks_first(differences: Sequence[Difference]) -> Verdict:
    """One arm against each of the others (its value minus theirs): holds if it beats every one, does not
    hold if any other is above it, otherwise not resolved."""
    if all(beats(d) is Verdict.HOLDS for d in differences):
        return Verdict.HOLDS
    if any(beats(d) is Verdict.DOES_NOT_HOLD for d in differences):
        return Verdict.DOES_NOT_HOLD
    return Verdict.NOT_RESOLVED
