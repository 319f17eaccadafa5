"""DAPO dynamic sampling: drop groups whose filter metric is constant, refill until the batch is full.

Pure bookkeeping over groups (one group = the n responses to one prompt). The controller asks
`begin_round()` before generating each batch of prompts, `add(...)` with the scored groups, and
`take()` once `is_full`; `filter_only` mode (Archer parity) keeps one round and never refills.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import numpy as np

G = TypeVar("G")


class DynamicSamplingExhausted(RuntimeError):
    """Raised when `max_gen_batches` rounds did not yield enough groups with varied outcomes."""


def group_is_informative(metric_values: Sequence[float]) -> bool:
    """A group trains the policy only if its filter metric varies (np.std > 0) or it has one response."""
    if len(metric_values) == 0:
        return False
    return len(metric_values) == 1 or float(np.std(np.asarray(metric_values, dtype=np.float64))) > 0.0


@dataclass
class RoundStats:
    """Counts from one generation round."""

    kept: int = 0
    dropped_all_max: int = 0  # every response solved the prompt (metric constant and > 0)
    dropped_all_min: int = 0  # none solved it (or an empty group)


@dataclass
class DynamicSampler(Generic[G]):
    """Accumulates informative groups until `train_batch_size` prompts are kept.

    train_batch_size: prompts per training step; max_gen_batches: generation rounds before giving up
    (<= 0 = unlimited); mode: `refill` (DAPO) or `filter_only` (drop without refilling; one round).
    """

    train_batch_size: int
    max_gen_batches: int = 10
    mode: Literal["refill", "filter_only"] = "refill"
    rounds: int = 0
    kept: list[G] = field(default_factory=list)
    history: list[RoundStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.train_batch_size < 1:
            raise ValueError(f"train_batch_size must be >= 1, got {self.train_batch_size}")

    @property
    def is_full(self) -> bool:
        """True once no further round is needed (enough groups, or the single filter_only round is done)."""
        if self.mode == "filter_only":
            return self.rounds >= 1
        return len(self.kept) >= self.train_batch_size

    def begin_round(self) -> int:
        """Account for one more generation round; raises DynamicSamplingExhausted past max_gen_batches."""
        if self.max_gen_batches > 0 and self.rounds >= self.max_gen_batches:
            raise DynamicSamplingExhausted(
                f"dynamic sampling: {self.rounds} generation rounds (max_gen_batches={self.max_gen_batches}) kept "
                f"only {len(self.kept)} of {self.train_batch_size} prompts with varied outcomes; the data are too "
                "easy or too hard for the policy: raise max_gen_batches, the generation batch size, or filter the data"
            )
        self.rounds += 1
        return self.rounds

    def add(self, groups: Sequence[G], metric_values: Sequence[Sequence[float]]) -> RoundStats:
        """Add one round's groups with their per-response filter metric (e.g. accuracy, not shaped reward)."""
        if len(groups) != len(metric_values):
            raise ValueError(f"{len(groups)} groups but {len(metric_values)} metric lists")
        stats = RoundStats()
        for group, values in zip(groups, metric_values, strict=True):
            if group_is_informative(values):
                self.kept.append(group)
                stats.kept += 1
            elif len(values) and float(values[0]) > 0:  # constant group: all solved
                stats.dropped_all_max += 1
            else:
                stats.dropped_all_min += 1
        self.history.append(stats)
        return stats

    def take(self) -> list[G]:
        """The batch: exactly train_batch_size groups (refill), or every kept group (filter_only)."""
        if not self.is_full:
            raise RuntimeError(f"only {len(self.kept)} of {self.train_batch_size} groups kept; generate more first")
        if self.mode == "filter_only":
            return list(self.kept)
        return self.kept[: self.train_batch_size]
