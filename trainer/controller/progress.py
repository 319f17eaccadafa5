"""Live progress of a run: a tqdm bar with step, reward, accuracy, entropy, threshold, tokens/s and ETA;
one line per step (`lines`), or nothing (`quiet`, for CI)."""

from __future__ import annotations

import sys
from typing import Literal, TextIO

from tqdm import tqdm

from forkrl.trainer.metrics.records import StepRecord

ProgressMode = Literal["bar", "lines", "quiet"]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def step_fields(record: StepRecord) -> dict[str, str]:
    """The few numbers shown per step: generated reward and accuracy, entropy mean, forking threshold,
    the fraction of tokens with policy gradient, generated tokens/s and the step's seconds."""
    learner = record.learner
    forking = learner.forking if learner is not None else None
    return {
        "reward": _fmt(record.generated.reward_mean),
        "acc": _fmt(record.generated.accuracy),
        "H": _fmt(record.entropy.mean if record.entropy is not None else None),
        "tau": _fmt(forking.threshold if forking is not None else None),
        "sel": _fmt(learner.pg_tokens / max(learner.response_tokens, 1) if learner is not None else None, ".2f"),
        "tok/s": _fmt(record.tokens_per_second, ".0f"),
    }


def step_summary(total: int, record: StepRecord) -> str:
    """A compact one-line summary of a step."""
    shown = " ".join(f"{k} {v}" for k, v in step_fields(record).items())
    return f"step {record.step}/{total} {shown} {record.time.step:.1f}s"


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

    def update(self, record: StepRecord) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in step_fields(record).items()), refresh=False)
            self._bar.update(1)
        elif self.mode == "lines":
            print(step_summary(self.total, record), file=self.stream, flush=True)

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
