"""The end-of-run report: `runs/<name>/report.html` with PNG plots (reward and accuracy curves, entropy
histogram, forking threshold over time) and the evaluation table."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


def _line_plot(path: Path, records: list[dict[str, Any]], keys: Sequence[str], title: str, ylabel: str) -> bool:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for key in keys:
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _histogram(path: Path, entropies: Sequence[float]) -> bool:
    if not entropies:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(entropies, bins=60, log=True, color="tab:purple")
    ax.set_title("Token entropy (last training step)")
    ax.set_xlabel("entropy (nats)")
    ax.set_ylabel("tokens (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(run_dir: Path, name: str, train_records: list[dict[str, Any]], eval_rows: list[dict[str, Any]],
                 entropy_sample: Sequence[float], summary: dict[str, Any]) -> Path:
    """Render the report next to its PNGs; returns the HTML path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if _line_plot(run_dir / "reward.png", train_records, ["reward/mean", "accuracy"], "Reward and accuracy",
                  "value"):
        figures.append(("reward.png", "Training reward and accuracy per step"))
    if _line_plot(run_dir / "threshold.png", train_records, ["forking/threshold", "entropy/p80", "entropy/mean"],
                  "Forking threshold and entropy over time", "nats"):
        figures.append(("threshold.png", "Forking threshold (top-rho entropy) over time"))
    if _histogram(run_dir / "entropy_hist.png", entropy_sample):
        figures.append(("entropy_hist.png", "Histogram of token entropies"))
    columns = sorted({key for row in eval_rows for key in row}, key=lambda k: (k not in ("phase", "dataset"), k))
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in eval_rows
    )
    summary_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_cell(v))}</td></tr>"
                           for k, v in summary.items())
    images = "".join(f'<figure><img src="{src}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}'
                     f"</figcaption></figure>" for src, cap in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>forkrl run {html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}figure{{display:inline-block;margin:1em}}</style>
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
