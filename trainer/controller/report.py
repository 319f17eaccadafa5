"""The end-of-run report: `runs/<name>/report.html` with PNG plots read from the typed step and eval records
(rewards and accuracy, held-out accuracy and pass@k, entropy percentiles and the forking threshold,
response length, clip fraction and KL per token type, the selected-token fraction, the learning rate,
step time by phase, the entropy histogram) and the evaluation table. Every plot labels its axes with units."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend
from matplotlib.ticker import MaxNLocator

from forkrl.trainer.metrics.records import ENTROPY_QUANTILES, EvalRecord, StepRecord

Getter = Callable[[StepRecord], float | None]


@dataclass(frozen=True)
class Series:
    label: str
    value: Getter
    style: str = "-"


@dataclass(frozen=True)
class Figure:
    file: str
    title: str
    ylabel: str
    caption: str
    series: tuple[Series, ...]


def _learner(get: Callable[[Any], float | None]) -> Getter:
    return lambda r: get(r.learner) if r.learner is not None else None


def _opt(value: Any, name: str) -> float | None:
    return getattr(value, name) if value is not None else None


FIGURES = (
    Figure("reward.png", "Reward and accuracy", "fraction of samples / reward",
           "Per step: verifier reward and accuracy of every generated sample (before dynamic sampling) and "
           "accuracy of the samples trained on (after it).",
           (Series("generated reward", lambda r: r.generated.reward_mean),
            Series("generated accuracy", lambda r: r.generated.accuracy),
            Series("trained accuracy", lambda r: _opt(r.trained, "accuracy"), "--"))),
    Figure("entropy.png", "Token entropy percentiles and forking threshold", "entropy (nats)",
           "Exact percentiles of the response-token entropy over each step's trained tokens, and the mean "
           "entropy threshold the forking objective applied.",
           (*(Series(f"p{p}", lambda r, p=p: _opt(r.entropy, f"p{p}")) for p in ENTROPY_QUANTILES),
            Series("forking threshold", _learner(lambda m: _opt(m.forking, "threshold")), "k--"))),
    Figure("length.png", "Response length", "tokens",
           "Mean and longest generated response per step; the fraction cut at the limit is in the table.",
           (Series("mean", lambda r: r.generated.response_length_mean),
            Series("max", lambda r: r.generated.response_length_max, "--"))),
    Figure("clip.png", "Clip fraction by token type", "fraction of tokens",
           "Fraction of tokens whose gradient a clip removed: all response tokens, high-entropy and low-entropy.",
           (Series("all", _learner(lambda m: _opt(m.clip_frac, "all"))),
            Series("high entropy", _learner(lambda m: _opt(m.clip_frac, "high"))),
            Series("low entropy", _learner(lambda m: _opt(m.clip_frac, "low"))))),
    Figure("kl.png", "KL by token type", "KL (nats per token)",
           "KL to the reference policy per token type (objectives with a KL term) and the rollout-vs-learner "
           "mismatch (k3).",
           (Series("reference, all", _learner(lambda m: _opt(m.kl, "all"))),
            Series("reference, high entropy", _learner(lambda m: _opt(m.kl, "high"))),
            Series("reference, low entropy", _learner(lambda m: _opt(m.kl, "low"))),
            Series("rollout vs learner (k3)", _learner(lambda m: _opt(m.mismatch, "k3")), "--"))),
    Figure("selected.png", "Tokens with policy gradient", "fraction of response tokens",
           "Fraction of response tokens that received policy gradient (the forking tokens for 80/20).",
           (Series("selected", _learner(lambda m: m.pg_tokens / max(m.response_tokens, 1))),)),
    Figure("lr.png", "Learning rate", "learning rate (per optimizer update)",
           "The optimizer's learning rate at the step's last update (warm-up, then the configured decay).",
           (Series("lr", _learner(lambda m: m.lr)),)),
    Figure("time.png", "Step time by phase", "seconds",
           "Wall time of each phase of a step; off-policy the rollout overlaps the update, so phases can sum to "
           "more than the step.",
           (Series("step", lambda r: r.time.step, "k-"),
            *(Series(p, lambda r, p=p: getattr(r.time, p)) for p in ("rollout", "verify", "logprobs", "update",
                                                                     "sync")))),
)


def _line_plot(path: Path, records: Sequence[StepRecord], figure: Figure) -> bool:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = False
    for series in figure.series:
        points = [(r.step, v) for r in records if (v := series.value(r)) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, series.style, marker="." if len(points) < 50 else None, label=series.label)
            drawn = True
    if drawn:
        _finish(fig, ax, path, figure.title, "RL step", figure.ylabel, legend=True)
    plt.close(fig)
    return drawn


def _eval_plot(path: Path, evals: Sequence[EvalRecord]) -> bool:
    if not evals:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for dataset in sorted({e.dataset for e in evals}):
        records = sorted((e for e in evals if e.dataset == dataset), key=lambda e: e.step)
        line = ax.plot([e.step for e in records], [e.avg for e in records], "-o", label=f"{dataset} avg@k")[0]
        for k in sorted({k for e in records for k in e.pass_at}, key=int):
            if k == "1":  # pass@1 is avg@k's unbiased estimate: the same curve
                continue
            points = [(e.step, e.pass_at[k]) for e in records if k in e.pass_at]
            ax.plot(*zip(*points, strict=True), "--", marker=".", color=line.get_color(), label=f"{dataset} pass@{k}")
    ax.set_ylim(0, 1)
    _finish(fig, ax, path, "Held-out accuracy", "RL step (0 = before RL)", "fraction of problems solved", True)
    plt.close(fig)
    return True


def _histogram(path: Path, entropies: Sequence[float]) -> bool:
    if not entropies:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(entropies, bins=60, log=True, color="tab:purple")
    _finish(fig, ax, path, "Token entropy (last training step)", "entropy (nats)", "tokens (log scale)", False,
            integer_x=False)
    plt.close(fig)
    return True


def _finish(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str, legend: bool,
            integer_x: bool = True) -> None:
    ax.set_title(title)
    if integer_x:  # RL steps
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(run_dir: Path, name: str, steps: Sequence[StepRecord], evals: Sequence[EvalRecord],
                 eval_rows: list[dict[str, Any]], entropy_sample: Sequence[float], summary: dict[str, Any]) -> Path:
    """Render the report next to its PNGs; returns the HTML path. eval_rows: the evaluation table."""
    run_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    if _eval_plot(run_dir / "heldout.png", evals):
        figures.append(("heldout.png", "Held-out avg@k accuracy and pass@k before RL, at every eval.interval and "
                                        "after RL"))
    for figure in FIGURES:
        if _line_plot(run_dir / figure.file, steps, figure):
            figures.append((figure.file, figure.caption))
    if _histogram(run_dir / "entropy_hist.png", entropy_sample):
        figures.append(("entropy_hist.png", "Histogram of response-token entropies in the last training step"))
    columns = sorted({key for row in eval_rows for key in row}, key=lambda k: (k not in ("phase", "dataset"), k))
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in eval_rows
    )
    summary_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_cell(v))}</td></tr>"
                           for k, v in summary.items())
    images = "".join(f'<figure><img src="{src}" alt="{html.escape(cap)}" width="640" height="380">'
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>" for src, cap in figures)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>forkrl run {html.escape(name)}</title>
<link rel="icon" href="data:,">
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}figure{{display:inline-block;margin:1em;
max-width:640px;vertical-align:top}}figcaption{{font-size:.85em;color:#444}}</style>
</head><body><h1>forkrl run <code>{html.escape(name)}</code></h1>
<h2>Summary</h2><table>{summary_rows}</table>
<h2>Evaluation</h2><table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{table}</table>
<h2>Training</h2>{images}</body></html>"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
