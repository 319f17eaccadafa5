"""The experiment report: <workdir>/report/<kind>.json (every number), <kind>.md (the final table and the
settings every arm shared), curves.png (one panel per curve, a line per label with its seed band) and,
for sweeps, sensitivity-<field>.png (the final accuracy against each knob's values)."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

from forkrl.trainer.experiments.results import ArmResult, Estimate, GroupSummary, estimate


def _cell(value: Estimate | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else value.text(scale, digits)


def markdown_table(groups: Sequence[GroupSummary]) -> str:
    ks = sorted({k for g in groups for k in g.pass_at}, key=int)
    header = (["arm", "seeds", "held-out before", "held-out after", "gain (points)"] + [f"pass@{k}" for k in ks]
              + ["entropy (last 25%)", "length", "trained samples", "updates", "generated tokens", "RL s"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        row = [g.label, str(len(g.seeds)), _cell(g.before), _cell(g.after), _cell(g.gain, 100, 1)]
        row += [_cell(g.pass_at.get(k)) for k in ks]
        row += [_cell(g.final_entropy), _cell(g.response_length, digits=1), _cell(g.trained_samples, digits=0),
                _cell(g.updates, digits=0), _cell(g.generated_tokens, digits=0), _cell(g.rl_seconds, digits=0)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def curves_figure(groups: Sequence[GroupSummary], path: Path) -> None:
    names = list(dict.fromkeys(name for g in groups for name in g.curves))
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for i, group in enumerate(groups):
            band = group.curves.get(name, [])
            if not band:
                continue
            steps = [b.step for b in band]
            mean = [b.mean for b in band]
            axis.plot(steps, mean, marker="o" if len(band) < 12 else None, color=f"C{i % 10}", label=group.label)
            axis.fill_between(steps, [b.mean - b.half_width for b in band], [b.mean + b.half_width for b in band],
                              color=f"C{i % 10}", alpha=0.15)
        axis.set_title(name)
        axis.set_xlabel("RL step")
    axes[0][0].legend(fontsize="small")
    figure.suptitle("mean over seeds; bands: 95% t-interval")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def sensitivity(results: Sequence[ArmResult], knobs: dict[str, dict[str, Any]], dataset: str
                ) -> dict[str, list[dict[str, Any]]]:
    """Per swept field: the final held-out accuracy at each of its values, over seeds and the other knobs.

    knobs: label -> {field: value} of every sweep arm."""
    fields = list(dict.fromkeys(f for point in knobs.values() for f in point))
    out: dict[str, list[dict[str, Any]]] = {}
    for field in fields:
        by_value: dict[str, list[float]] = defaultdict(list)
        for arm in results:
            comparison = arm.comparison.get(dataset)
            if comparison is not None:
                by_value[json.dumps(knobs[arm.label][field])].append(comparison["after"])
        out[field] = [{"value": json.loads(v), **asdict(estimate(values)), "arms": len(values)}
                      for v, values in by_value.items()]
    return out


def sensitivity_figure(field: str, points: list[dict[str, Any]], dataset: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [str(p["value"]) for p in points]
    axis.errorbar(range(len(points)), [p["mean"] for p in points], yerr=[p["half_width"] for p in points],
                  marker="o", capsize=4)
    axis.set_xticks(range(len(points)), labels)
    axis.set_xlabel(field)
    axis.set_ylabel(f"held-out accuracy after RL ({dataset})")
    axis.set_title(f"sensitivity to {field}\n(mean over seeds and the other knobs; 95% t-interval)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(directory: Path, kind: str, groups: Sequence[GroupSummary], settings: dict[str, Any],
                 unequal: Sequence[str], pending: Sequence[str], sweep: dict[str, list[dict[str, Any]]] | None,
                 dataset: str | None) -> Path:
    """Write the report files; returns the markdown's path. `pending`: arms not finished yet."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "written": time.strftime("%Y-%m-%d %H:%M:%S"), "dataset": dataset,
               "shared_settings": settings, "unequal_compute_fields": list(unequal), "pending_arms": list(pending),
               "groups": [asdict(g) for g in groups], "sensitivity": sweep}
    (directory / f"{kind}.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# forkrl {kind}", "",
             f"Written {payload['written']}; held-out data set: {dataset or '(none evaluated)'}. "
             "Values are means over seeds ± the half-width of a 95% t-interval; gain is after - before RL "
             "on the same problems, in points.", ""]
    if pending:
        lines += [f"**Unfinished arms ({len(pending)})**: {', '.join(pending)}.", ""]
    if unequal:
        lines += [f"**Compute differs between arms** in: {', '.join(unequal)}.", ""]
    lines += [markdown_table(groups), ""]
    if groups and any(g.curves for g in groups):
        curves_figure(groups, directory / "curves.png")
        lines += ["![curves](curves.png)", ""]
    for field, points in (sweep or {}).items():
        name = f"sensitivity-{re.sub(r'[^A-Za-z0-9_.-]+', '-', field)}.png"
        if points and dataset:
            sensitivity_figure(field, points, dataset, directory / name)
            lines += [f"![{field}]({name})", ""]
    lines += ["## Settings every arm shared", "", "```json", json.dumps(settings, indent=2), "```", ""]
    path = directory / f"{kind}.md"
    path.write_text("\n".join(lines))
    return path
