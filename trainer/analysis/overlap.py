"""How far two checkpoints agree on where the high-entropy positions of the same responses are, and how the
entropies of high- and low-entropy tokens changed (the 80/20 paper's Table 1 and its Figure 6).

For each response scored by a base checkpoint (entropies e0) and another (e1): A = top-rho positions under
e0, B = top-rho positions under e1; overlap = sum |A & B| / sum |A| over all responses (token-weighted).
The change in entropy is split by the base's classification: mean e1 - mean e0 over A (high-entropy
tokens), and over the rest (low-entropy tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forkrl.trainer.analysis.positions import top_entropy_positions


@dataclass
class OverlapStats:
    rho: float = 0.2
    responses: int = 0
    shared_positions: int = 0
    base_positions: int = 0
    high_tokens: int = 0
    high_base_sum: float = 0.0
    high_other_sum: float = 0.0
    low_tokens: int = 0
    low_base_sum: float = 0.0
    low_other_sum: float = 0.0

    def add(self, base: np.ndarray, other: np.ndarray) -> None:
        """One response's entropies under the base and the other checkpoint, both [response_tokens]."""
        e0, e1 = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
        if e0.shape != e1.shape:
            raise ValueError(f"the same response must have one entropy per token under both: {e0.shape} != {e1.shape}")
        if e0.size == 0:
            return
        high_base, high_other = top_entropy_positions(e0, self.rho), top_entropy_positions(e1, self.rho)
        self.responses += 1
        self.shared_positions += np.intersect1d(high_base, high_other).size
        self.base_positions += high_base.size
        low = np.ones(e0.size, dtype=bool)
        low[high_base] = False
        self.high_tokens += high_base.size
        self.high_base_sum += float(e0[high_base].sum())
        self.high_other_sum += float(e1[high_base].sum())
        self.low_tokens += int(low.sum())
        self.low_base_sum += float(e0[low].sum())
        self.low_other_sum += float(e1[low].sum())

    def summary(self) -> dict[str, float | int]:
        def mean(total: float, count: int) -> float:
            return total / count if count else float("nan")

        return {
            "responses": self.responses,
            "rho": self.rho,
            "top_position_overlap": mean(self.shared_positions, self.base_positions),
            "high_entropy_tokens": {"base_mean": mean(self.high_base_sum, self.high_tokens),
                                    "other_mean": mean(self.high_other_sum, self.high_tokens),
                                    "change": mean(self.high_other_sum - self.high_base_sum, self.high_tokens)},
            "low_entropy_tokens": {"base_mean": mean(self.low_base_sum, self.low_tokens),
                                   "other_mean": mean(self.low_other_sum, self.low_tokens),
                                   "change": mean(self.low_other_sum - self.low_base_sum, self.low_tokens)},
        }
