"""An endless, seeded, resumable stream of prompt rows: shuffled per epoch, with a cursor to checkpoint."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from forkrl.trainer.data.schema import PromptRow


@dataclass
class StreamState:
    """Where the stream is: epoch number and position inside that epoch's order."""

    epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


class PromptStream:
    """`take(n)` returns the next n rows; epoch e visits every row once in the order of Random(seed + e)."""

    def __init__(self, rows: Sequence[PromptRow], seed: int, shuffle: bool = True,
                 state: StreamState | None = None) -> None:
        if not rows:
            raise ValueError("the training data is empty (every row was malformed or filtered)")
        self.rows = list(rows)
        self.seed = seed
        self.shuffle = shuffle
        self.state = state or StreamState()
        self._order = self._epoch_order(self.state.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def take(self, count: int) -> list[PromptRow]:
        out = []
        while len(out) < count:
            if self.state.position >= len(self._order):
                self.state = StreamState(self.state.epoch + 1, 0)
                self._order = self._epoch_order(self.state.epoch)
            out.append(self.rows[self._order[self.state.position]])
            self.state.position += 1
        return out

    def restore(self, state: dict[str, int]) -> None:
        self.state = StreamState(int(state["epoch"]), int(state["position"]))
        self._order = self._epoch_order(self.state.epoch)
