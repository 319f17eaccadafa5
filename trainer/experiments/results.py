"""What the finished arms measured, combined over seeds: curves with seed bands and the final table.

Pure functions of the arms' own files (run/metrics.jsonl and run/summary.json): a report can be rebuilt at
any time from a workdir, and nothing here reruns or changes an arm.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forkrl.trainer.evaluation import seed_interval
from forkrl.trainer.metrics.records import EvalRecord, StepRecord


@dataclass(frozen=True)
class ArmResult:
    """One finished arm: its step and evaluation records and the run's before/after comparison."""

    label: str
    seed: int
    steps: tuple[StepRecord, ...]
    evals: tuple[EvalRecord, ...]
    comparison: dict[str, dict[str, float]]
    """Per eval data set: before, after, difference and its paired 95% CI (summary.json)."""

    @staticmethod
    def load(label: str, seed: int, run_dir: Path) -> ArmResult:
        from forkrl.trainer.controller.recorder import read_eval_records, read_step_records

        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = run_dir / "metrics.jsonl"
        return ArmResult(label, seed, tuple(read_step_records(metrics)), tuple(read_eval_records(metrics)),
                         summary.get("comparison", {}))

    @property
    def generated_tokens(self) -> int:
        return sum(round(r.generated.samples * r.generated.response_length_mean) for r in self.steps)

    @property
    def trained_samples(self) -> int:
        return sum(r.trained.samples if r.trained is not None else r.generated.samples for r in self.steps)

    @property
    def updates(self) -> int:
        return sum(r.learner.updates if r.learner is not None else 0 for r in self.steps)

    @property
    def rl_seconds(self) -> float:
        return sum(r.time.step for r in self.steps)


@dataclass(frozen=True)
class Band:
    """A metric at one step over seeds: mean, 95% t-interval half-width, and how many seeds had it."""

    step: int
    mean: float
    half_width: float
    seeds: int


@dataclass(frozen=True)
class Estimate:
    mean: float
    half_width: float

    def text(self, scale: float = 1.0, digits: int = 3) -> str:
        if self.half_width == 0:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def estimate(values: Sequence[float]) -> Estimate:
    return Estimate(*seed_interval(values))


StepMetric = Callable[[StepRecord], float | None]

STEP_METRICS: dict[str, StepMetric] = {
    "mean entropy (nats)": lambda r: r.entropy.mean if r.entropy is not None else None,
    "response length (tokens)": lambda r: r.generated.response_length_mean,
    "training accuracy": lambda r: r.generated.accuracy,
}
"""The per-step curves of a comparison (the papers' accuracy, entropy and length over training)."""


def bands(points: Sequence[Sequence[tuple[int, float]]]) -> list[Band]:
    """Per step, the mean and interval over the seeds that have a value there (`points[seed]`)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for series in points:
        for step, value in series:
            by_step[step].append(value)
    return [Band(step, *seed_interval(values), len(values)) for step, values in sorted(by_step.items())]


def step_curve(results: Sequence[ArmResult], metric: StepMetric) -> list[Band]:
    series = [[(r.step, v) for r in arm.steps if (v := metric(r)) is not None] for arm in results]
    return bands(series)


def eval_curve(results: Sequence[ArmResult], dataset: str) -> list[Band]:
    """Held-out avg@k of `dataset` at every evaluation (step 0: before RL)."""
    return bands([[(e.step, e.avg) for e in arm.evals if e.dataset == dataset] for arm in results])


@dataclass(frozen=True)
class GroupSummary:
    """The final numbers of one label over its seeds."""

    label: str
    seeds: tuple[int, ...]
    before: Estimate | None
    after: Estimate | None
    gain: Estimate | None
    """after - before per seed (the same problems), then over seeds."""
    pass_at: dict[str, Estimate]
    final_entropy: Estimate | None
    """Mean entropy over the last quarter of the steps."""
    response_length: Estimate
    generated_tokens: Estimate
    trained_samples: Estimate
    updates: Estimate
    rl_seconds: Estimate
    curves: dict[str, list[Band]] = field(default_factory=dict)


def tail_mean(arm: ArmResult, metric: StepMetric) -> float | None:
    values = [v for r in arm.steps if (v := metric(r)) is not None]
    if not values:
        return None
    tail = values[-max(1, len(values) // 4):]
    return sum(tail) / len(tail)


def summarize(label: str, results: Sequence[ArmResult], dataset: str | None) -> GroupSummary:
    """One label's seeds: the final table row and its curves (held-out accuracy first when evaluated)."""
    if not results:
        raise ValueError(f"{label}: no finished arm")

    def over(values: Sequence[float | None]) -> Estimate | None:
        kept = [v for v in values if v is not None]
        return estimate(kept) if kept else None

    comparisons = [arm.comparison.get(dataset) if dataset else None for arm in results]
    before = over([c["before"] if c else None for c in comparisons])
    after = over([c["after"] if c else None for c in comparisons])
    gain = over([c["difference"] if c else None for c in comparisons])
    final_evals = [max((e for e in arm.evals if e.dataset == dataset), key=lambda e: e.step, default=None)
                   for arm in results]
    ks = sorted({k for e in final_evals if e is not None for k in e.pass_at}, key=int)
    pass_at = {k: estimate([e.pass_at[k] for e in final_evals if e is not None and k in e.pass_at]) for k in ks}
    entropy = over([tail_mean(arm, STEP_METRICS["mean entropy (nats)"]) for arm in results])
    curves = {f"held-out accuracy ({dataset})": eval_curve(results, dataset)} if dataset else {}
    curves.update({name: step_curve(results, metric) for name, metric in STEP_METRICS.items()})
    length = estimate([tail_mean(arm, STEP_METRICS["response length (tokens)"]) or 0.0 for arm in results])
    return GroupSummary(
        label=label, seeds=tuple(arm.seed for arm in results), before=before, after=after, gain=gain,
        pass_at=pass_at, final_entropy=entropy, response_length=length,
        generated_tokens=estimate([float(arm.generated_tokens) for arm in results]),
        trained_samples=estimate([float(arm.trained_samples) for arm in results]),
        updates=estimate([float(arm.updates) for arm in results]),
        rl_seconds=estimate([arm.rl_seconds for arm in results]), curves=curves)


def main_dataset(results: Sequence[ArmResult]) -> str | None:
    """The first evaluation data set the arms share (the comparison's headline accuracy)."""
    for arm in results:
        for dataset in arm.comparison:
            return dataset
    return None
