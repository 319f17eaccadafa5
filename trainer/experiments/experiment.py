"""One experiment end to end: validate every arm, make the shared starting checkpoint, run the unfinished
arms (in sequence here, or as Ray tasks), and rewrite the report after every finished arm."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from forkrl.trainer.experiments.arms import Arm, compute_settings, is_swept, unequal_compute, validate_arms
from forkrl.trainer.experiments.report import sensitivity, write_report
from forkrl.trainer.experiments.results import ArmResult, main_dataset, summarize
from forkrl.trainer.experiments.runner import (
    ArmFailed,
    ArmJob,
    ArmOutcome,
    arm_cpus,
    prepare_jobs,
    run_on_ray,
    run_sequentially,
)
from forkrl.trainer.spec import RLVRJobSpec


@dataclass(frozen=True)
class Execution:
    """Where the arms run: `ray_address` None = one after another in this process's machine."""

    ray_address: str | None = None
    cpus_per_arm: float | None = None


class ArmProgress:
    """A bar over arms (the running arm's step in its postfix) on a terminal; one line per event otherwise."""

    def __init__(self, jobs: Sequence[ArmJob], stream: TextIO = sys.stderr) -> None:
        self.total = len(jobs)
        self.done = sum(job.finished() for job in jobs)
        self.stream = stream
        self.started = time.monotonic()
        self.finished_here = 0
        self._bar = (tqdm(total=self.total, initial=self.done, desc="arms", unit="arm", file=stream,
                          dynamic_ncols=True) if stream.isatty() else None)
        self.log(f"{self.total} arms, {self.done} finished before, {self.total - self.done} to run")

    def log(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(f"[experiment] {text}", file=self.stream, flush=True)

    def running(self, job: ArmJob) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{job.label} seed {job.seed}: step {job.steps_done()}/{job.steps}")

    def finished(self, job: ArmJob, outcome: ArmOutcome) -> None:
        if outcome.ok:
            self.done += 1
            self.finished_here += 1
        left = self.total - self.done
        eta = ""
        if self.finished_here and left:
            eta = f", ~{(time.monotonic() - self.started) / self.finished_here * left / 60:.0f} min left in sequence"
        state = "done" if outcome.ok else f"FAILED (exit {outcome.exit_code}; log {job.log_path})"
        self.log(f"{job.label} seed {job.seed}: {state} in {outcome.seconds:.0f} s"
                 f"{' (resumed)' if outcome.resumed else ''}; {self.done}/{self.total} arms{eta}")
        if self._bar is not None and outcome.ok:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def starting_checkpoint(spec: RLVRJobSpec, workdir: Path, log) -> str:
    """The checkpoint every arm starts from: the spec's cold start (or its model), made once per workdir."""
    from forkrl.trainer.controller.loop import prepare_policy

    path, _, info = prepare_policy(spec, workdir / "cold-start", log)
    if info:
        log(f"cold start: {info['cold_start_seconds']:.0f} s, final loss {info['cold_start_final_loss']:.3f}")
    return str(Path(path).resolve())


def build_report(kind: str, workdir: Path, jobs: Sequence[ArmJob], specs: dict[Arm, RLVRJobSpec],
                 swept: Sequence[str]) -> Path | None:
    """The report of the arms finished so far (None before the first)."""
    finished = [job for job in jobs if job.finished()]
    if not finished:
        return None
    results = [ArmResult.load(job.label, job.seed, job.run_dir) for job in finished]
    dataset = main_dataset(results)
    labels = list(dict.fromkeys(arm.label for arm in specs))
    by_label = {label: [r for r in results if r.label == label] for label in labels}
    groups = [summarize(label, rows, dataset) for label, rows in by_label.items() if rows]
    first = next(iter(specs.values()))
    settings = compute_settings(first)
    for key in settings:
        if is_swept(key, swept):
            settings[key] = "(swept: see the table)"
    knobs: dict[str, dict[str, Any]] = {arm.label: dict(arm.overrides) for arm in specs}
    sweep = sensitivity(results, knobs, dataset) if kind == "sweep" and dataset else None
    pending = [f"{job.label} seed {job.seed}" for job in jobs if not job.finished()]
    return write_report(workdir / "report", kind, groups, settings, unequal_compute(specs, swept), pending, sweep,
                        dataset)


def run_experiment(kind: str, base_spec: RLVRJobSpec, base: dict[str, Any], arms: Sequence[Arm], workdir: Path,
                   execution: Execution, swept: Sequence[str] = ()) -> int:
    """Run an experiment to the end (or resume it); exit code 0 done, 1 an arm failed, 130 interrupted."""
    specs = validate_arms(base, arms)
    workdir.mkdir(parents=True, exist_ok=True)
    log = lambda text: print(f"[{kind}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    unequal = unequal_compute(specs, swept)
    if unequal:
        log(f"warning: the arms differ in {', '.join(unequal)}: they do not get the same compute")
    model_path = starting_checkpoint(base_spec, workdir, log)
    jobs = prepare_jobs(base, specs, workdir, model_path)
    progress = ArmProgress(jobs)

    def on_finish(job: ArmJob, outcome: ArmOutcome) -> None:
        progress.finished(job, outcome)
        if outcome.ok:
            build_report(kind, workdir, jobs, specs, swept)

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the running arms checkpoint and stop; a rerun resumes them

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        if execution.ray_address is None:
            run_sequentially(jobs, on_finish, poll=progress.running)
        else:
            cpus = execution.cpus_per_arm or max(arm_cpus(spec) for spec in specs.values())
            progress.log(f"running the arms as Ray tasks on {execution.ray_address}, {cpus:g} CPUs each")
            run_on_ray(jobs, execution.ray_address, cpus, on_finish)
    except ArmFailed as err:
        progress.close()
        print(f"forkrl {kind}: {err}", file=sys.stderr)
        report = build_report(kind, workdir, jobs, specs, swept)
        if report is not None:
            print(f"forkrl {kind}: report of the finished arms: {report}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print(f"forkrl {kind}: interrupted; finished arms are kept and running ones checkpointed. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.close()
    report = build_report(kind, workdir, jobs, specs, swept)
    print(f"forkrl {kind}: all {len(jobs)} arms finished; report: {report}", file=sys.stderr)
    return 0
