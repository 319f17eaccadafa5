"""Live progress of a run: a tqdm bar with step, reward, accuracy, entropy, threshold, tokens/s and ETA;
one line per step (`lines`), or nothing (`quiet`, for CI)."""

from __future__ import annotations

import sys
from typing import Literal, TextIO

from tqdm import tqdm

ProgressMode = Literal["bar", "lines", "quiet"]


def _fmt(values: dict[str, float], key: str, spec: str = ".3f") -> str:
    value = values.get(key)
    return "-" if value is None else format(value, spec)


def step_summary(step: int, total: int, values: dict[str, float]) -> str:
    """A compact one-line summary of a step."""
    return (f"step {step}/{total} reward {_fmt(values, 'reward/mean')} acc {_fmt(values, 'accuracy')} "
            f"H {_fmt(values, 'entropy/mean')} tau {_fmt(values, 'forking/threshold')} "
            f"tok/s {_fmt(values, 'tokens_per_second', '.0f')} {_fmt(values, 'time/step', '.1f')}s")


class Progress:
    """Wraps the step loop's reporting; `update(step, values)` after each step, `log(text)` for events."""

    def __init__(self, total_steps: int, initial_step: int, mode: ProgressMode, stream: TextIO | None = None):
        self.total = total_steps
        self.mode = mode
        self.stream = stream or sys.stderr
        self._bar = None
        if mode == "bar":
            self._bar = tqdm(total=total_steps, initial=initial_step, desc="forkrl", unit="step", file=self.stream,
                             dynamic_ncols=True)

    def update(self, step: int, values: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"R={_fmt(values, 'reward/mean')} acc={_fmt(values, 'accuracy')} H={_fmt(values, 'entropy/mean')} "
                f"tau={_fmt(values, 'forking/threshold')} sel={_fmt(values, 'forking/selected_frac', '.2f')} "
                f"tok/s={_fmt(values, 'tokens_per_second', '.0f')}",
                refresh=False,
            )
            self._bar.update(1)
        elif self.mode == "lines":
            print(step_summary(step, self.total, values), file=self.stream, flush=True)

    def advance_to(self, step: int) -> None:
        """Resume: the bar starts at `step`."""
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def log(self, text: str) -> None:
        """An event line (evaluation results, checkpoints); shown in every mode but quiet keeps it short."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
