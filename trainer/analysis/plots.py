"""Figures of `forkrl analyze` (matplotlib, headless)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

from forkrl.trainer.analysis.histogram import EntropyHistogram


def entropy_figure(histogram: EntropyHistogram, title: str) -> Any:
    figure, axis = plt.subplots(figsize=(7, 4))
    edges = histogram.edges
    share = histogram.counts[1:] / max(histogram.total, 1)
    axis.stairs(share, edges, fill=True, alpha=0.6)
    axis.set_xscale("log")
    axis.set_xlabel("token entropy (nats)")
    axis.set_ylabel("share of tokens per bin")
    below = histogram.below_threshold / max(histogram.total, 1)
    p80 = histogram.percentile(80)
    axis.axvline(p80, color="C3", linestyle="--", label=f"80th percentile {p80:.3g}")
    axis.axvline(histogram.exact_threshold, color="C2", linestyle=":", label=f"{below:.1%} below 1e-2")
    axis.set_title(f"{title}\n{histogram.total} tokens; {histogram.counts[0]} below {histogram.low:g} not drawn")
    axis.legend()
    return figure


def tokens_figure(result: dict[str, Any]) -> Any:
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for axis, key, label in ((axes[0], "highest_entropy", "highest"), (axes[1], "lowest_entropy", "lowest")):
        rows = result[key][:20][::-1]
        axis.barh([repr(row["token"]) for row in rows], [row["count"] for row in rows])
        axis.set_title(f"tokens most often at the {label} {result['rho']:.0%} entropy positions")
        axis.set_xlabel("count")
    figure.tight_layout()
    return figure


def overlap_figure(result: dict[str, Any]) -> Any:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(result["checkpoints"])
    stats = [result["checkpoints"][name] for name in names]
    labels = [name.rstrip("/").rsplit("/", 1)[-1] for name in names]
    axes[0].bar(labels, [s["top_position_overlap"] for s in stats])
    axes[0].set_ylim(0, 1)
    axes[0].set_title("overlap of top-rho entropy positions with the base")
    width = 0.4
    x = range(len(labels))
    axes[1].bar([i - width / 2 for i in x], [s["high_entropy_tokens"]["change"] for s in stats], width,
                label="high-entropy tokens")
    axes[1].bar([i + width / 2 for i in x], [s["low_entropy_tokens"]["change"] for s in stats], width,
                label="low-entropy tokens")
    axes[1].set_xticks(list(x), labels)
    axes[1].set_title("mean entropy change from the base (nats)")
    axes[1].legend()
    figure.tight_layout()
    return figure


def dual_temperature_figure(result: dict[str, Any]) -> Any:
    cells = result["cells"]
    highs = sorted({cell["t_high"] for cell in cells})
    lows = sorted({cell["t_low"] for cell in cells})
    grid = [[next(c["avg_at_k"] for c in cells if c["t_high"] == high and c["t_low"] == low) for low in lows]
            for high in highs]
    figure, axis = plt.subplots(figsize=(1.2 * len(lows) + 3, 1.0 * len(highs) + 2))
    image = axis.imshow(grid, origin="lower", cmap="viridis")
    axis.set_xticks(range(len(lows)), [f"{t:g}" for t in lows])
    axis.set_yticks(range(len(highs)), [f"{t:g}" for t in highs])
    axis.set_xlabel("t_low (tokens at or below the threshold)")
    axis.set_ylabel("t_high (high-entropy tokens)")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="white")
    axis.set_title(f"avg@{result['k']} on {result['problems']} problems of {result['dataset']}")
    figure.colorbar(image, ax=axis)
    return figure
