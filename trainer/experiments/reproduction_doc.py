"""docs/reproduction.md from the files a reproduction wrote (reproduction.py): the five claims, each with its
measurement, its decision rule (claims.py) and its verdict, and where the small model cannot test it."""

from __future__ import annotations

import json
import shlex
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

from forkrl.trainer.experiments.arms import compute_settings
from forkrl.trainer.experiments.claims import (
    EQUIVALENCE_MARGIN_POINTS,
    Verdict,
    beats,
    matches_or_beats,
    problem_paired_difference,
    ranks_first,
    seed_paired_difference,
)
from forkrl.trainer.experiments.report import markdown_table
from forkrl.trainer.experiments.results import STEP_METRICS, ArmResult, summarize, tail_mean

if TYPE_CHECKING:
    from forkrl.trainer.experiments.reproduction import Plan

OBJECTIVES = ("dapo", "forking-top20", "forking-top10", "forking-top50", "forking-bottom80", "archer")
"""The arms the claims need (forkrl compare presets)."""

NEAR_ZERO_SHARE = 0.25
"""Claim 1's rule: at least this share of tokens below 1e-2 nats ..."""
TOP20_MASS = 0.5
"""... and the top 20% highest-entropy tokens carrying at least this share of all entropy."""
KEPT_OVERLAP = 0.5
"""Claim 2's rule: "mostly keeps" = more than half of the top-20% positions shared at the last step."""


@dataclass(frozen=True)
class Claim:
    number: str
    statement: str
    measured: str
    rule: str
    verdict: Verdict


def _arm_results(plan: Plan, objective: str) -> dict[int, ArmResult]:
    return {seed: ArmResult.load(objective, seed, plan.arm_run(objective, seed)) for seed in plan.seeds}


def _gains(results: Mapping[int, ArmResult], dataset: str) -> dict[int, float]:
    """Held-out gain (after - before RL), in points, per seed."""
    return {seed: 100 * r.comparison[dataset]["difference"] for seed, r in results.items()}


def _entropies(results: Mapping[int, ArmResult]) -> dict[int, float]:
    """Mean token entropy over the last quarter of the steps, per seed."""
    metric = STEP_METRICS["mean entropy (nats)"]
    return {seed: value for seed, r in results.items() if (value := tail_mean(r, metric)) is not None}


def entropy_claim(entropy: dict[str, Any]) -> tuple[Claim, list[str]]:
    cold = entropy["cold start"]
    share, mass, p80 = cold["share_below_0.01"], cold["top20_entropy_mass"], cold["percentiles"]["p80"]
    # Over every token counted (no interval): both bounds must be met.
    verdict = Verdict.HOLDS if share >= NEAR_ZERO_SHARE and mass >= TOP20_MASS else Verdict.DOES_NOT_HOLD
    lines = ["| checkpoint | tokens | share below 1e-2 | median | 80th percentile | 95th percentile | mean | "
             "entropy carried by the top 20% |", "|---|---|---|---|---|---|---|---|"]
    for name, row in entropy.items():
        p = row["percentiles"]
        lines.append(f"| {name} | {row['tokens']} | {row['share_below_0.01']:.1%} | {p['p50']:.3g} | "
                     f"{p['p80']:.3g} | {p['p95']:.3g} | {row['mean']:.3g} | {row['top20_entropy_mass']:.1%} |")
    lines.append("| Qwen3-8B (the 80/20 paper) | ~1e6 | 50.64% | - | 0.672 | - | - | - |")
    claim = Claim("1", "The entropy of chain-of-thought tokens is heavily skewed: most are near 0, a minority is high.",
                  f"cold start: {share:.1%} below 1e-2, 80th percentile {p80:.3g} nats, top 20% of tokens carry "
                  f"{mass:.1%} of the entropy", f"share below 1e-2 >= {NEAR_ZERO_SHARE:.0%} and top-20% entropy "
                  f"mass >= {TOP20_MASS:.0%}", verdict)
    return claim, lines


def overlap_claims(overlap: dict[str, dict[str, Any]]) -> tuple[list[Claim], list[str], dict[str, Any]]:
    steps = sorted({int(step) for per_seed in overlap.values() for step in per_seed})
    last = str(steps[-1])
    seeds = sorted(overlap)
    final = {int(s): overlap[s][last]["top_position_overlap"] for s in seeds}
    kept = seed_paired_difference(final, {int(s): KEPT_OVERLAP for s in seeds})
    change_gap = seed_paired_difference(
        {int(s): abs(overlap[s][last]["high_entropy_tokens"]["change"]) for s in seeds},
        {int(s): abs(overlap[s][last]["low_entropy_tokens"]["change"]) for s in seeds})
    lines = ["| RL step | overlap of top-20% positions with the cold start | entropy change, high-entropy tokens "
             "(nats) | entropy change, low-entropy tokens (nats) |", "|---|---|---|---|"]
    curves: dict[str, Any] = {"step": steps, "overlap": [], "high": [], "low": []}
    for step in steps:
        rows = [overlap[s][str(step)] for s in seeds if str(step) in overlap[s]]
        o = statistics.fmean(r["top_position_overlap"] for r in rows)
        high = statistics.fmean(r["high_entropy_tokens"]["change"] for r in rows)
        low = statistics.fmean(r["low_entropy_tokens"]["change"] for r in rows)
        curves["overlap"].append(o)
        curves["high"].append(high)
        curves["low"].append(low)
        lines.append(f"| {step} | {o:.1%} | {high:+.4f} | {low:+.4f} |")
    kept_mean = sum(final.values()) / len(final)
    claims = [
        Claim("2a", "RL mostly keeps the positions of the high-entropy tokens (paper: > 86% overlap).",
              f"overlap at step {last}: {kept_mean:.1%} (margin over {KEPT_OVERLAP:.0%}: "
              f"{kept.scaled(100).text(1, ' points')})", f"overlap - {KEPT_OVERLAP:.0%} above 0 (beats)", beats(kept)),
        Claim("2b", "RL mostly changes the entropy of the high-entropy tokens.",
              f"|change| of high minus |change| of low-entropy tokens at step {last}: {change_gap.text(4, ' nats')}",
              "the difference above 0 (beats)", beats(change_gap)),
    ]
    return claims, lines, curves


def objective_claims(gains: Mapping[str, Mapping[int, float]], entropy: Mapping[str, Mapping[int, float]]
                     ) -> list[Claim]:
    """Claims 3-4 from each objective's held-out gain (points) and final entropy (nats), per seed."""
    top20 = seed_paired_difference(gains["forking-top20"], gains["dapo"])
    bottom = seed_paired_difference(gains["dapo"], gains["forking-bottom80"])
    others = ("forking-top10", "forking-top50", "dapo")
    ahead = [seed_paired_difference(entropy["forking-top20"], entropy[name]) for name in others]
    archer = seed_paired_difference(gains["archer"], gains["dapo"])
    archer_entropy = seed_paired_difference(entropy["archer"], entropy["dapo"])
    claims = [
        Claim("3a", "Training on the top-20% highest-entropy tokens matches or beats training on all tokens.",
              f"gain(top-20%) - gain(DAPO): {top20.text(1, ' points')}",
              f"interval's low end above -{EQUIVALENCE_MARGIN_POINTS:g} points (matches or beats)",
              matches_or_beats(top20, EQUIVALENCE_MARGIN_POINTS)),
        Claim("3b", "Training on the bottom 80% only is clearly worse than all tokens.",
              f"gain(DAPO) - gain(bottom-80%): {bottom.text(1, ' points')}", "above 0 (beats)", beats(bottom)),
        Claim("3c", "rho = 20% keeps the highest entropy among rho = 10%, 20%, 50%, 100%.",
              "entropy over the last quarter of training, top-20% minus "
              + "; ".join(f"{name}: {d.text(4, ' nats')}" for name, d in zip(others, ahead, strict=True)),
              "above 0 against each (ranks first)", ranks_first(ahead)),
        Claim("4a", "Archer reaches higher accuracy than DAPO.",
              f"gain(Archer) - gain(DAPO): {archer.text(1, ' points')}", "above 0 (beats)", beats(archer)),
        Claim("4b", "Archer keeps more entropy than DAPO over training.",
              f"entropy(Archer) - entropy(DAPO), last quarter: {archer_entropy.text(4, ' nats')}", "above 0 (beats)",
              beats(archer_entropy)),
    ]
    return claims


def dual_temperature_claims(dual: dict[str, Any]) -> tuple[list[Claim], list[str]]:
    cells = {(c["t_high"], c["t_low"]): c for c in dual["cells"]}
    temps = sorted({c["t_high"] for c in dual["cells"]})
    lines = ["| t_high \\ t_low | " + " | ".join(f"{t:g}" for t in temps) + " |", "|---|" + "---|" * len(temps)]
    for t_high in temps:
        lines.append(f"| {t_high:g} | " + " | ".join(f"{cells[(t_high, t_low)]['avg_at_k']:.1%}" for t_low in temps)
                     + " |")
    lower = max(t for t in temps if t < 1.0)

    def accuracy(t_high: float, t_low: float) -> list[float]:
        return [100 * v for v in cells[(t_high, t_low)]["per_problem"]]

    # Lowering t_high hurts more than lowering t_low  <=>  acc(1, low) - acc(low, 1) > 0.
    lowering = problem_paired_difference(accuracy(1.0, lower), accuracy(lower, 1.0))
    claims = [Claim("5a", f"Lowering t_high hurts more than lowering t_low (here to {lower:g}, the other at 1).",
                    f"acc(t_high=1, t_low={lower:g}) - acc(t_high={lower:g}, t_low=1): "
                    f"{lowering.text(1, ' points')}", "above 0, paired by problem (beats)", beats(lowering))]
    higher = [t for t in temps if t > 1.0]
    if higher:
        up = min(higher)
        raising = problem_paired_difference(accuracy(up, 1.0), accuracy(1.0, up))
        claims.append(Claim("5b", f"Raising t_high helps more than raising t_low (here to {up:g}).",
                            f"acc(t_high={up:g}, t_low=1) - acc(t_high=1, t_low={up:g}): {raising.text(1, ' points')}",
                            "above 0, paired by problem (beats)", beats(raising)))
    return claims, lines


def answered_line(results: Mapping[str, Mapping[int, ArmResult]], dataset: str) -> str:
    """How many held-out samples gave an extractable answer before and after RL (mean over every arm): where
    it rises a lot, much of the arms' gain is adopting the rewarded answer format, not better answers."""
    pairs = [(c["answered_before"], c["answered_after"]) for arms in results.values() for r in arms.values()
             if "answered_before" in (c := r.comparison.get(dataset, {}))]
    if not pairs:
        return ""
    before, after = (statistics.fmean(p[i] for p in pairs) for i in (0, 1))
    line = (f" Samples that gave an extractable answer at all: {before:.1%} before RL, {after:.1%} after "
            "(mean over arms)")
    if after - before > 0.1:
        line += ": on this task much of every arm's gain is adopting the rewarded answer format"
    return line + "."


def _overlap_figure(curves: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(curves["step"], curves["overlap"], marker="o")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("top-20% positions shared with the cold start")
    axes[1].plot(curves["step"], curves["high"], marker="o", label="high-entropy tokens (cold start's top 20%)")
    axes[1].plot(curves["step"], curves["low"], marker="o", label="the other 80%")
    axes[1].axhline(0, color="grey", linewidth=0.5)
    axes[1].set_title("mean entropy change from the cold start (nats)")
    axes[1].legend(fontsize="small")
    for axis in axes:
        axis.set_xlabel("RL step (DAPO arms, mean over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


CAVEATS = """\
- The model is a few-hundred-thousand-parameter transformer trained from random weights on this task by the
  cold start, not a pretrained LLM: its "chain of thought" is a worked arithmetic solution, and its tokens
  are characters, so the high-entropy "forking" tokens are digits and operators, not words such as "wait" or
  "thus". Claims about which words fork (the papers' token tables) cannot be tested here; see
  `forkrl analyze tokens` for what forks in this task.
- Responses are tens of tokens, not thousands: a per-micro-batch top-20% is a few hundred tokens.
- A handful of seeds gives wide intervals: "not resolved at this scale" is a frequent and honest outcome,
  not evidence against a claim.
- Archer's paper trains with 3 PPO epochs per batch and a 1e-6 learning rate for hundreds of steps on 1.5B+
  models; here every arm shares the spec's schedule, so Archer's KL and clip knobs act over far fewer updates.
- The dual-temperature threshold is the cold start's own 80th-percentile entropy (the paper's 0.672 is
  Qwen3-8B's); the grid samples the same problems with the same seeds in every cell.
"""


def write_document(plan: Plan, stage_seconds: dict[str, float], commit: str, figures: Path) -> None:
    analysis = plan.analysis_dir
    entropy = json.loads((analysis / "entropy.json").read_text())
    overlap = json.loads((analysis / "overlap.json").read_text())
    dual = json.loads((analysis / "dual_temperature.json").read_text())
    results = {name: _arm_results(plan, name) for name in OBJECTIVES}
    claim1, entropy_lines = entropy_claim(entropy)
    claims2, overlap_lines, curves = overlap_claims(overlap)
    claims34 = objective_claims({name: _gains(r, plan.dataset) for name, r in results.items()},
                                {name: _entropies(r) for name, r in results.items()})
    claims5, dual_lines = dual_temperature_claims(dual)
    _overlap_figure(curves, figures / "overlap.png")
    claims = [claim1, *claims2, *claims34, *claims5]
    groups = [summarize(name, list(r.values()), plan.dataset) for name, r in results.items()]
    format_line = answered_line(results, plan.dataset)
    total = sum(stage_seconds.values())
    rel = figures.name
    command = f"forkrl reproduce {plan.spec_source} --workdir {plan.workdir} --seeds {','.join(map(str, plan.seeds))}"
    command += (f" --problems {plan.problems} --samples {plan.samples} --export-every {plan.export_every}"
                f" --temperatures {','.join(f'{t:g}' for t in plan.temperatures)}")
    command += "".join(f" --set {shlex.quote(s)}" for s in plan.settings)
    lines = [
        "# The papers' measurements, reproduced at small scale", "",
        f"Generated by `{command}` at commit {commit} on {time.strftime('%Y-%m-%d')}, "
        f"{total / 60:.0f} min of wall time ("
        + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in stage_seconds.items()) + "). "
        "Every number and figure below was read from the files that command wrote under its workdir "
        "(`compare/arms/*/seed*/run/`, `analysis/*.json`); rerunning it regenerates this page.", "",
        "## Setup", "",
        f"- Task and model: the spec `{plan.spec_source}`; held-out data set `{plan.dataset}`.",
        f"- Arms: DAPO (all tokens), forking top-20%, top-10%, top-50%, bottom-80%, Archer; seeds "
        f"{', '.join(map(str, plan.seeds))}; every arm from the same cold-start checkpoint with the same compute "
        f"(settings below); each DAPO arm exported its model every {plan.export_every} steps.",
        f"- Entropy, overlap and dual-temperature analyses: the cold start's responses to the first {plan.problems} "
        f"held-out problems, {plan.samples} each, sampled with the spec's rollout settings.", "",
        "## Verdict rules (fixed before any run)", "",
        "Each claim is a difference with its 95% interval (t-interval over seeds, paired by seed; or paired "
        "by problem for decoding). *Beats*: holds if the interval is above 0, does not hold if below 0, otherwise "
        f"not resolved at this scale. *Matches or beats*: holds if the interval's low end is above "
        f"-{EQUIVALENCE_MARGIN_POINTS:g} points, does not hold if the whole interval is below 0. "
        f"Claim 1: at least {NEAR_ZERO_SHARE:.0%} of tokens below 1e-2 nats and the top 20% carrying at least "
        f"{TOP20_MASS:.0%} of all entropy; claim 2a: the overlap above {KEPT_OVERLAP:.0%}.", "",
        "## Summary", "", "| # | claim | measured | rule | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c.number} | {c.statement} | {c.measured} | {c.rule} | **{c.verdict}** |" for c in claims]
    lines += ["", "## 1. The entropy distribution", "", *entropy_lines, "", f"![entropy]({rel}/entropy.png)", "",
              "## 2. What RL changes (DAPO arms against the cold start)", "", *overlap_lines, "",
              f"![overlap]({rel}/overlap.png)", "",
              "## 3-4. Objectives under equal compute", "",
              "Held-out accuracy before and after RL (fractions), gain in points; entropy over the last quarter "
              "of the steps." + format_line, "", markdown_table(groups), "", f"![curves]({rel}/curves.png)", "",
              "## 5. Dual-temperature decoding (cold start, avg@k)", "",
              f"Threshold {dual['threshold']:.4g} nats, {dual['problems']} problems x {dual['k']} samples per cell.",
              "", *dual_lines, "",
              "## What this scale cannot test", "", CAVEATS,
              "## Settings every arm shared", "", "```json", json.dumps(compute_settings(plan.spec), indent=2), "```",
              ""]
    plan.doc.parent.mkdir(parents=True, exist_ok=True)
    plan.doc.write_text("\n".join(lines))
