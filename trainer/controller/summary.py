"""The end of a run: accuracy before vs after RL with a paired 95% CI, summary.json and report.html."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from forkrl.trainer.controller.report import write_report
from forkrl.trainer.evaluation import paired_difference_ci
from forkrl.trainer.metrics.records import EvalRecord, StepRecord
from forkrl.trainer.spec import RLVRJobSpec


def compare_phases(eval_history: list[dict[str, Any]], before: str = "before_rl", after: str = "after_rl"
                   ) -> dict[str, dict[str, float]]:
    """Per data set: accuracy before and after RL and the paired difference with its 95% CI."""
    out: dict[str, dict[str, float]] = {}
    rows = {(r["phase"], r["dataset"]): r for r in eval_history}
    for (phase, dataset), row in rows.items():
        if phase != before or (after, dataset) not in rows:
            continue
        later = rows[(after, dataset)]
        diff, low, high = paired_difference_ci(row["per_problem"], later["per_problem"])
        out[dataset] = {"before": sum(row["per_problem"]) / len(row["per_problem"]),
                        "after": sum(later["per_problem"]) / len(later["per_problem"]),
                        "difference": diff, "ci95_low": low, "ci95_high": high,
                        "problems": float(len(row["per_problem"]))}
        if "answered" in row and "answered" in later:
            out[dataset].update(answered_before=row["answered"], answered_after=later["answered"])
    return out


def finish_run(spec: RLVRJobSpec, run_dir: Path, eval_history: list[dict[str, Any]],
               steps: Sequence[StepRecord], evals: Sequence[EvalRecord], info: dict[str, Any],
               entropy_sample: list[float], log: Callable[[str], None], metrics_url: str | None = None
               ) -> dict[str, Any]:
    """Print the before/after numbers, write summary.json and the HTML report.

    eval_history: the controller's evaluations with per-problem accuracies (the paired comparison);
    steps, evals: the run's records (the report's plots); metrics_url: where the run served Prometheus
    metrics (None when it did not)."""
    comparison = compare_phases(eval_history)
    for dataset, c in comparison.items():
        verdict = "significant" if c["ci95_low"] > 0 else "not significant"
        log(f"{dataset}: accuracy after cold start {c['before']:.4f} -> after RL {c['after']:.4f} "
            f"({c['difference'] * 100:+.1f} points, 95% CI {c['ci95_low'] * 100:+.1f} to {c['ci95_high'] * 100:+.1f}; "
            f"{verdict}) on {int(c['problems'])} held-out problems"
            + (f"; samples with an answer {c['answered_before']:.1%} -> {c['answered_after']:.1%}"
               if "answered_before" in c else ""))
    summary = {"name": spec.name, "steps": len(steps), "objective": spec.objective.name,
               "metrics_url": metrics_url, "comparison": comparison, **info}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    table = [{k: v for k, v in row.items() if k != "per_problem"} for row in eval_history]
    flat = {"objective": spec.objective.name, "steps": len(steps)}
    for dataset, c in comparison.items():
        flat.update({f"{dataset} before": c["before"], f"{dataset} after": c["after"],
                     f"{dataset} difference": c["difference"]})
    if spec.observability.report:
        report = write_report(run_dir, spec.name, steps, evals, table, entropy_sample, flat)
        log(f"report: {report}")
    return summary
