"""The highest- and lowest-entropy positions of one response (the 80/20 paper's forking tokens).

`count_for(n, rho)` positions out of n: ceil(rho * n), at least one for a non-empty response. Ties are
broken by position (earlier first), so the choice is deterministic and the same for two checkpoints that
agree on the values.
"""

from __future__ import annotations

import math

import numpy as np


def count_for(length: int, rho: float) -> int:
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return min(length, max(1, math.ceil(rho * length))) if length else 0


def top_entropy_positions(entropies: np.ndarray, rho: float) -> np.ndarray:
    """Sorted indices of the ceil(rho * n) highest entropies of `entropies: [response_tokens]`."""
    values = np.asarray(entropies, dtype=np.float64)
    order = np.lexsort((np.arange(values.size), -values))  # by entropy descending, then position
    return np.sort(order[: count_for(values.size, rho)])


def bottom_entropy_positions(entropies: np.ndarray, rho: float) -> np.ndarray:
    """Sorted indices of the ceil(rho * n) lowest entropies."""
    values = np.asarray(entropies, dtype=np.float64)
    order = np.lexsort((np.arange(values.size), values))
    return np.sort(order[: count_for(values.size, rho)])
