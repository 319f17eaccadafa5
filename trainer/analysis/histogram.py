"""A streaming histogram of per-token entropies (nats) on log-scale bins.

Entropies span many decades (a near-deterministic token has H ~ 1e-6, a forking token ~1), so the bins are
geometric: `bins_per_decade` per factor of 10 between `low` and `high`, plus one bin for everything below
`low` (zero included). Memory is fixed whatever the number of tokens, so responses can stream through.
Percentiles are read off the bins with geometric interpolation: their relative error is at most one bin's
width (10 ** (1 / bins_per_decade) - 1, 1.2% at the default 200 bins per decade); the count below
`exact_threshold` (1e-2, the 80/20 paper's "near-zero entropy" line) and the mean are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EntropyHistogram:
    low: float = 1e-6
    """Lower edge of the first geometric bin (nats); smaller entropies, zero included, share bin 0."""
    high: float = 20.0
    """Upper edge of the last bin (ln of a 485M-token vocabulary: above any real model's maximum)."""
    bins_per_decade: int = 200
    exact_threshold: float = 1e-2
    counts: np.ndarray = field(init=False)
    """[bins + 1]: counts[0] below `low`, counts[i] in [edges[i-1], edges[i])."""
    total: int = field(init=False, default=0)
    below_threshold: int = field(init=False, default=0)
    sum_nats: float = field(init=False, default=0.0)
    maximum: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"need 0 < low < high, got low={self.low}, high={self.high}")
        decades = math.log10(self.high / self.low)
        self.edges = self.low * 10 ** (np.arange(math.ceil(decades * self.bins_per_decade) + 1) / self.bins_per_decade)
        self.counts = np.zeros(len(self.edges), dtype=np.int64)

    def add(self, entropies: np.ndarray) -> None:
        """Count a batch of entropies (any shape); NaN or negative values are refused."""
        values = np.asarray(entropies, dtype=np.float64).ravel()
        if values.size == 0:
            return
        if not np.all(np.isfinite(values)) or values.min() < -1e-9:
            raise ValueError("entropies must be finite and >= 0")
        values = np.clip(values, 0.0, None)
        if values.max() >= self.edges[-1]:
            raise ValueError(f"an entropy of {values.max():.3f} nats is above the histogram's high={self.high}")
        self.counts += np.bincount(np.searchsorted(self.edges, values, side="right"), minlength=len(self.counts))
        self.total += values.size
        self.below_threshold += int((values < self.exact_threshold).sum())
        self.sum_nats += float(values.sum())
        self.maximum = max(self.maximum, float(values.max()))

    def merge(self, other: EntropyHistogram) -> None:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("histograms with different bins cannot be merged")
        self.counts += other.counts
        self.total += other.total
        self.below_threshold += other.below_threshold
        self.sum_nats += other.sum_nats
        self.maximum = max(self.maximum, other.maximum)

    @property
    def relative_resolution(self) -> float:
        return float(10 ** (1 / self.bins_per_decade) - 1)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100), to within one bin (see the module docstring); 0.0 below `low`."""
        if not 0 <= q <= 100:
            raise ValueError(f"q must be in [0, 100], got {q}")
        if self.total == 0:
            raise ValueError("no entropies counted")
        rank = max(1, math.ceil(q / 100 * self.total))  # the inverted-CDF definition: the rank-th smallest
        cumulative = np.cumsum(self.counts)
        index = int(np.searchsorted(cumulative, rank))
        if index == 0:
            return 0.0
        before = cumulative[index - 1]
        fraction = (rank - before) / self.counts[index]
        lower, upper = self.edges[index - 1], self.edges[index]
        return float(lower * (upper / lower) ** fraction)

    def summary(self, percentiles: tuple[float, ...] = (10, 25, 50, 75, 80, 90, 95, 99)) -> dict[str, object]:
        return {
            "tokens": self.total,
            "mean": self.sum_nats / self.total if self.total else float("nan"),
            "max": self.maximum,
            f"share_below_{self.exact_threshold:g}": self.below_threshold / self.total if self.total else float("nan"),
            "percentiles": {f"p{q:g}": self.percentile(q) for q in percentiles} if self.total else {},
            "percentile_relative_resolution": self.relative_resolution,
        }
