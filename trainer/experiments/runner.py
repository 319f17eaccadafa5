"""Running the arms of an experiment: each arm is `forkrl train` on its own spec in its own process, in
sequence on this machine or as Ray tasks across a cluster; finished arms are never rerun.

A workdir holds everything (it must be shared storage when the arms run on other Ray nodes):

    <workdir>/cold-start/           the starting checkpoint, made once and used by every arm
    <workdir>/arms/<label>/seed<k>/  spec.yaml, train.log, run/ (metrics.jsonl, summary.json), checkpoints/
                                    and done.json once the arm finished
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from forkrl.rollout.lifeline import Lifeline
from forkrl.trainer.experiments.arms import Arm, arm_spec_data
from forkrl.trainer.spec import RLVRJobSpec, SpecError

DONE = "done.json"


@dataclass(frozen=True)
class ArmJob:
    """What a worker needs to run one arm (plain paths: it travels to Ray tasks)."""

    label: str
    seed: int
    directory: str
    steps: int

    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def spec_path(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def finished(self) -> bool:
        return (self.path / DONE).exists()

    def steps_done(self) -> int:
        """RL steps recorded so far (the progress shown while it runs)."""
        metrics = self.run_dir / "metrics.jsonl"
        if not metrics.exists():
            return 0
        with metrics.open() as lines:
            return sum(1 for line in lines if line.startswith('{"kind": "train"'))


@dataclass(frozen=True)
class ArmOutcome:
    label: str
    seed: int
    exit_code: int
    seconds: float
    resumed: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ArmFailed(RuntimeError):
    """An arm's `forkrl train` exited non-zero or stopped before its last step; its log names why."""


def prepare_jobs(base: dict[str, Any], specs: dict[Arm, RLVRJobSpec], workdir: Path, model_path: str
                 ) -> list[ArmJob]:
    """Write each arm's spec (starting from `model_path`, its run and checkpoints in its folder).

    An arm folder that already holds a different spec was made by another experiment: refused, so a
    resumed experiment never mixes results of two configurations."""
    jobs = []
    conflicts = []
    for arm in specs:
        directory = (workdir / "arms" / arm.key).resolve()
        data = arm_spec_data(base, arm)
        data["model"] = {**data["model"], "path": model_path, "tiny": None}
        data["cold_start"] = {"enabled": False}
        data["observability"] = {**data["observability"], "run_dir": str(directory / "run"), "progress": "quiet"}
        data["checkpoint"] = {**data["checkpoint"], "dir": str(directory / "checkpoints")}
        text = yaml.safe_dump(data, sort_keys=True)
        spec_path = directory / "spec.yaml"
        if spec_path.exists() and spec_path.read_text() != text:
            conflicts.append(str(spec_path))
            continue
        directory.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(text)
        jobs.append(ArmJob(arm.label, arm.seed, str(directory), specs[arm].schedule.steps))
    if conflicts:
        raise SpecError("these arms were run under a different spec (use a new --workdir, or remove them to rerun):\n  "
                        + "\n  ".join(conflicts))
    return jobs


def has_checkpoint(job: ArmJob) -> bool:
    from forkrl.trainer.controller.checkpoints import CheckpointStore

    return job.checkpoint_dir.exists() and CheckpointStore(job.checkpoint_dir, 1_000).latest() is not None


def run_arm(job: ArmJob, poll: Callable[[], None] | None = None) -> ArmOutcome:
    """`forkrl train` on the arm's spec (resuming from its checkpoint if it has one) in a new session that
    ends with this process (a lifeline), output appended to its train.log; marks the arm done on success."""
    resumed = has_checkpoint(job)
    argv = [sys.executable, "-m", "forkrl.trainer.cli", "train", str(job.spec_path), "--quiet",
            *(["--resume"] if resumed else [])]
    # The arm runs embedded (its own Ray, its own services) even when this process is a Ray worker.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    lifeline = Lifeline()
    start = time.monotonic()
    code: int | None = None
    try:
        with job.log_path.open("a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[1:])}\n")
            log.flush()
            process = subprocess.Popen(argv, cwd=job.path, stdout=log, stderr=subprocess.STDOUT,
                                       env={**env, **lifeline.env}, pass_fds=lifeline.pass_fds,
                                       start_new_session=True)
            lifeline.release_child_end()
            try:
                code = wait_stopping_on_interrupt(process, poll)
            finally:
                code = process.returncode
                lifeline.close()
    finally:
        # Also when interrupted: an arm that got to its end before it stopped is finished.
        if code == 0 and (job.run_dir / "summary.json").exists():
            (job.path / DONE).write_text(json.dumps({"seconds": time.monotonic() - start, "resumed": resumed}))
    if code == 0 and not job.finished():
        code = -int(signal.SIGTERM)  # stopped cleanly (SIGTERM) before its last step: unfinished, resumable
    return ArmOutcome(job.label, job.seed, code if code is not None else -1, time.monotonic() - start, resumed)


def wait_stopping_on_interrupt(process: subprocess.Popen, poll: Callable[[], None] | None = None) -> int:
    """Wait for the arm, calling `poll` every 2 s; on KeyboardInterrupt (Ctrl-C, SIGTERM, a cancelled Ray
    task) the arm is asked to checkpoint and stop (SIGTERM), waited for, and the interrupt goes on."""
    try:
        while True:
            try:
                return process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                if poll is not None:
                    poll()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def failure_message(job: ArmJob, outcome: ArmOutcome) -> str:
    tail = ""
    if job.log_path.exists():
        tail = "\n".join(job.log_path.read_text(errors="replace").splitlines()[-15:])
    return (f"arm {job.label!r} seed {job.seed} exited with {outcome.exit_code} after {outcome.seconds:.0f} s "
            f"(log: {job.log_path}):\n{tail}")


OnFinish = Callable[[ArmJob, ArmOutcome], None]


def run_sequentially(jobs: Sequence[ArmJob], on_finish: OnFinish,
                     poll: Callable[[ArmJob], None] | None = None) -> None:
    """Run the unfinished arms one after another on this machine; stop at the first failure."""
    for job in jobs:
        if job.finished():
            continue
        outcome = run_arm(job, None if poll is None else (lambda job=job: poll(job)))
        on_finish(job, outcome)
        if not outcome.ok:
            raise ArmFailed(failure_message(job, outcome))


def arm_cpus(spec: RLVRJobSpec) -> float:
    """CPUs one arm uses: its learner ranks' reservation, plus one for the rollout replicas and verifier."""
    return math.ceil(spec.resources.learner_ranks * spec.resources.cpus_per_learner) + 1.0


def _run_arm_task(job_fields: dict[str, Any]) -> dict[str, Any]:
    return asdict(run_arm(ArmJob(**job_fields)))


def run_on_ray(jobs: Sequence[ArmJob], address: str, cpus_per_arm: float, on_finish: OnFinish) -> None:
    """Run the unfinished arms as Ray tasks (`cpus_per_arm` CPUs each) on the cluster at `address`
    (`local`: a private Ray on this machine's CPUs). Every arm runs even when one fails; the failures are
    raised together at the end."""
    import ray

    if address == "local":
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        available = ray.cluster_resources().get("CPU", 0.0)
        if available < cpus_per_arm:
            raise ArmFailed(f"each arm asks for {cpus_per_arm:g} CPUs but the Ray cluster at {address} has "
                            f"{available:g}: pass a smaller --cpus-per-arm or add nodes")
        task = ray.remote(_run_arm_task).options(num_cpus=cpus_per_arm, max_retries=0)
        pending = {task.remote(asdict(job)): job for job in jobs if not job.finished()}
        failures = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                for ref in done:
                    job = pending.pop(ref)
                    outcome = ArmOutcome(**ray.get(ref))
                    on_finish(job, outcome)
                    if not outcome.ok:
                        failures.append(failure_message(job, outcome))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # the task's arm gets SIGTERM: it checkpoints and stops
            with contextlib.suppress(Exception):
                ray.wait(list(pending), num_returns=len(pending), timeout=600)
            raise
        if failures:
            raise ArmFailed("\n\n".join(failures))
    finally:
        ray.shutdown()
