"""`forkrl reproduce`: the papers' measurements on one spec's task, end to end, written to docs/reproduction.md.

    forkrl reproduce examples/local-arith.yaml --workdir experiments/reproduction          # 6 objectives x 3 seeds
    forkrl reproduce SPEC --workdir W --set schedule.steps=20 --seeds 0,1,2 --doc docs/reproduction.md

Stages, each kept on disk under --workdir (a rerun skips finished ones; the comparison resumes its arms):
 1. compare: DAPO, forking top-20/10/50%, bottom-80% and Archer, every arm exporting a model every
    `export_every` steps (`checkpoint.export_interval`), all from the spec's one cold start;
 2. responses: the cold start samples `samples` responses to the first `problems` held-out problems;
 3. entropy: per-token entropy of those responses under the cold start and each DAPO arm's final model;
 4. overlap: each DAPO arm's exported models against the cold start (top-20% positions, entropy change);
 5. dual temperature: the cold start's avg@k over t_high x t_low, threshold its own 80th percentile;
 6. the document (reproduction_doc.py), every number read from the files of stages 1-5.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forkrl.trainer.experiments.arms import compare_arms
from forkrl.trainer.experiments.experiment import Execution, run_experiment, starting_checkpoint
from forkrl.trainer.experiments.reproduction_doc import OBJECTIVES, write_document
from forkrl.trainer.spec import RLVRJobSpec, parse_spec
from forkrl.trainer.spec.overrides import set_field


@dataclass(frozen=True)
class Plan:
    """What one reproduction runs; everything else is the spec's."""

    spec: RLVRJobSpec
    spec_data: dict[str, Any]
    spec_source: str
    settings: tuple[str, ...]
    """The --set assignments, as typed (recorded in the document)."""
    seeds: tuple[int, ...]
    workdir: Path
    doc: Path
    problems: int
    samples: int
    temperatures: tuple[float, ...]
    export_every: int
    execution: Execution

    @property
    def dataset(self) -> str:
        return self.spec.eval.datasets[0].name

    @property
    def compare_dir(self) -> Path:
        return self.workdir / "compare"

    @property
    def analysis_dir(self) -> Path:
        return self.workdir / "analysis"

    def arm_run(self, objective: str, seed: int) -> Path:
        arm = compare_arms([objective], [seed])[0]
        return self.compare_dir / "arms" / arm.key / "run"


def make_plan(spec: RLVRJobSpec, data: dict[str, Any], spec_source: str, settings: Sequence[str],
              seeds: Sequence[int], workdir: Path, doc: Path, problems: int, samples: int,
              temperatures: Sequence[float], export_every: int | None, execution: Execution) -> Plan:
    """Validate what the claims need of the spec, and turn on the model exports the overlap stage reads."""
    if not spec.eval.datasets:
        raise SystemExit("forkrl reproduce: the spec has no eval data set (the claims compare held-out accuracy)")
    if len(seeds) < 2:
        raise SystemExit("forkrl reproduce: --seeds: at least 2 seeds (the verdicts need intervals); 3 recommended")
    if 1.0 not in temperatures or not any(t < 1.0 for t in temperatures):
        raise SystemExit("forkrl reproduce: --temperatures must include 1.0 and one value below it")
    every = export_every or max(1, spec.schedule.steps // 4)
    data = json.loads(json.dumps(data))
    set_field(data, "checkpoint.export_interval", every)
    spec = parse_spec(data, source=f"{spec_source} (reproduction)")
    return Plan(spec, data, spec_source, tuple(settings), tuple(seeds), workdir, doc, problems, samples,
                tuple(temperatures), every, execution)


class StageClock:
    """Wall time per stage, summed over reruns (<workdir>/stages.json), so the document reports the total."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "stages.json"
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, output: Path | None, work: Callable[[], Any]) -> Any:
        """Run `work` unless `output` exists already (None: always; it resumes by itself)."""
        if output is not None and output.exists():
            print(f"[reproduce] {name}: done before ({output})", file=sys.stderr, flush=True)
            return None
        print(f"[reproduce] {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        result = work()
        elapsed = time.monotonic() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.path.write_text(json.dumps(self.seconds, indent=2))
        print(f"[reproduce] {name}: {elapsed:.0f} s", file=sys.stderr, flush=True)
        return result


def entropy_mass_share(entropies: np.ndarray, top: float = 0.2) -> float:
    """Share of the total entropy carried by the `top` fraction of highest-entropy tokens."""
    total = float(entropies.sum())
    if total == 0:
        return 0.0
    count = max(1, int(np.ceil(top * entropies.size)))
    return float(np.sort(entropies)[-count:].sum() / total)


def _responses(plan: Plan, spec_file: Path, cold_start: str) -> None:
    from transformers import AutoTokenizer

    from forkrl.trainer.analysis.generate import generate_responses, local_engine, spec_rows
    from forkrl.trainer.data.templates import render_prompt

    template, rows = spec_rows(spec_file, plan.dataset)
    tokenizer = AutoTokenizer.from_pretrained(cold_start)
    prompts = (render_prompt(row, template, tokenizer) for row in rows[: plan.problems])
    target = plan.analysis_dir / "responses.jsonl"
    partial = target.with_suffix(".partial")
    with partial.open("w") as out:
        sampling = plan.spec.rollout.sampling
        generate_responses(local_engine(cold_start, 0), tokenizer, prompts, out, plan.samples,
                           plan.spec.model.max_response_tokens, sampling.temperature, sampling.top_p, 0)
    partial.rename(target)


def _spec_file(plan: Plan) -> Path:
    """The reproduction's spec as a file (the analysis helpers read specs from files)."""
    import yaml

    path = plan.workdir / "spec.yaml"
    path.write_text(yaml.safe_dump(plan.spec_data, sort_keys=True))
    return path


@functools.cache
def _scored(checkpoint_path: str, responses: Path) -> tuple[np.ndarray, ...]:
    """Per-token entropies (at T=1) of every response under a checkpoint; cached, because the entropy and
    overlap stages score the cold start and the DAPO arms' final models alike."""
    from forkrl.trainer.analysis.scoring import Checkpoint, ResponseFile, response_entropies

    model = Checkpoint.load(checkpoint_path)
    return tuple(response_entropies(model.logits, record) for record in ResponseFile(responses, model.tokenize))


def _entropy(plan: Plan, cold_start: str) -> None:
    from forkrl.trainer.analysis.histogram import EntropyHistogram
    from forkrl.trainer.analysis.plots import entropy_figure

    responses = plan.analysis_dir / "responses.jsonl"
    models = {"cold start": cold_start}
    models.update({f"dapo seed {s}": str(plan.arm_run("dapo", s) / "final_model") for s in plan.seeds})
    result = {}
    for name, path in models.items():
        entropies = _scored(path, responses)
        histogram = EntropyHistogram()
        for values in entropies:
            histogram.add(values)
        flat = np.concatenate(entropies)
        result[name] = {"model": path, **histogram.summary(), "top20_entropy_mass": entropy_mass_share(flat)}
        if name == "cold start":
            entropy_figure(histogram, "cold start: per-token entropy of its own responses").savefig(
                plan.analysis_dir / "entropy.png", dpi=110, bbox_inches="tight")
    (plan.analysis_dir / "entropy.json").write_text(json.dumps(result, indent=2))


def exported_models(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, model directory) of a run's exports and its final model, in step order."""
    steps = [(int(p.name.removeprefix("step_")), p) for p in sorted((run_dir / "models").glob("step_*"))]
    final_step = int(json.loads((run_dir / "summary.json").read_text())["steps"])
    return [*steps, (final_step, run_dir / "final_model")]


def _overlap(plan: Plan, cold_start: str) -> None:
    from forkrl.trainer.analysis.overlap import OverlapStats

    responses = plan.analysis_dir / "responses.jsonl"
    base = _scored(cold_start, responses)
    result: dict[str, dict[str, Any]] = {}
    for seed in plan.seeds:
        per_step = {}
        for step, model in exported_models(plan.arm_run("dapo", seed)):
            stats = OverlapStats(rho=0.2)
            for reference, other in zip(base, _scored(str(model), responses), strict=True):
                stats.add(reference, other)
            per_step[str(step)] = stats.summary()
        result[str(seed)] = per_step
    (plan.analysis_dir / "overlap.json").write_text(json.dumps(result, indent=2))


def _dual_temperature(plan: Plan, spec_file: Path, cold_start: str) -> None:
    from transformers import AutoTokenizer

    from forkrl.trainer.analysis.dual_temperature import dual_temperature_grid
    from forkrl.trainer.analysis.generate import spec_rows
    from forkrl.trainer.data.templates import render_prompt

    threshold = json.loads((plan.analysis_dir / "entropy.json").read_text())["cold start"]["percentiles"]["p80"]
    template, rows = spec_rows(spec_file, plan.dataset)
    rows = rows[: plan.problems]
    tokenizer = AutoTokenizer.from_pretrained(cold_start)
    cells = dual_temperature_grid(cold_start, tokenizer, rows, lambda row: render_prompt(row, template, tokenizer),
                                  plan.temperatures, plan.temperatures, plan.samples,
                                  plan.spec.model.max_response_tokens, threshold, 0,
                                  progress=lambda line: print(f"[reproduce]   {line}", file=sys.stderr, flush=True))
    result = {"model": cold_start, "threshold": threshold, "problems": len(rows), "k": plan.samples,
              "cells": [asdict(cell) for cell in cells]}
    (plan.analysis_dir / "dual_temperature.json").write_text(json.dumps(result, indent=2))


def commit_of(root: Path) -> str:
    """This checkout's commit, marked `+changes` when the tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" +changes" if dirty else "")


def reproduce(plan: Plan) -> int:
    """Every stage, then the document; exit code 0 done, 1 an arm failed, 130 interrupted."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    plan.analysis_dir.mkdir(parents=True, exist_ok=True)
    clock = StageClock(plan.workdir)
    arms = compare_arms(OBJECTIVES, plan.seeds)
    code = clock.run("compare", None, lambda: run_experiment("compare", plan.spec, plan.spec_data, arms,
                                                              plan.compare_dir, plan.execution))
    if code != 0:
        return code
    cold_start = starting_checkpoint(plan.spec, plan.compare_dir, lambda text: None)
    spec_file = _spec_file(plan)
    clock.run("responses", plan.analysis_dir / "responses.jsonl", lambda: _responses(plan, spec_file, cold_start))
    clock.run("entropy", plan.analysis_dir / "entropy.json", lambda: _entropy(plan, cold_start))
    clock.run("overlap", plan.analysis_dir / "overlap.json", lambda: _overlap(plan, cold_start))
    clock.run("dual temperature", plan.analysis_dir / "dual_temperature.json",
              lambda: _dual_temperature(plan, spec_file, cold_start))
    figures = plan.doc.parent / plan.doc.stem
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan.compare_dir / "report" / "curves.png", figures / "curves.png")
    shutil.copyfile(plan.analysis_dir / "entropy.png", figures / "entropy.png")
    root = Path(__file__).resolve().parents[2]
    write_document(plan, clock.seconds, commit_of(root), figures)
    print(f"forkrl reproduce: wrote {plan.doc} (figures in {figures})", file=sys.stderr)
    return 0
