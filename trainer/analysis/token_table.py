"""Which tokens most often sit at a response's highest- and lowest-entropy positions (the 80/20 paper's word
clouds: forking tokens such as "suppose", "however", "thus" against formulaic continuations)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from forkrl.trainer.analysis.positions import bottom_entropy_positions, top_entropy_positions


@dataclass
class TokenEntropyTable:
    rho: float = 0.2
    high: Counter[int] = field(default_factory=Counter)
    """token id -> times it was among its response's top-rho entropy positions."""
    low: Counter[int] = field(default_factory=Counter)
    """token id -> times it was among its response's bottom-rho positions."""
    seen: Counter[int] = field(default_factory=Counter)
    """token id -> times it occurred in a response at all."""

    def add(self, token_ids: np.ndarray, entropies: np.ndarray) -> None:
        """One response: `token_ids` and `entropies`, both [response_tokens]."""
        tokens = np.asarray(token_ids)
        if tokens.shape != np.asarray(entropies).shape:
            raise ValueError(f"token_ids {tokens.shape} and entropies {np.asarray(entropies).shape} differ in shape")
        self.seen.update(tokens.tolist())
        self.high.update(tokens[top_entropy_positions(entropies, self.rho)].tolist())
        self.low.update(tokens[bottom_entropy_positions(entropies, self.rho)].tolist())

    def rows(self, which: str, top: int, decode: Callable[[int], str]) -> list[dict[str, object]]:
        """The `top` tokens most often at high (`which="high"`) or low entropy, with counts and the share of
        their occurrences that were there."""
        counter = {"high": self.high, "low": self.low}[which]
        ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:top]
        return [{"token_id": token, "token": decode(token), "count": count, "occurrences": self.seen[token],
                 "share_of_occurrences": count / self.seen[token]} for token, count in ranked]
