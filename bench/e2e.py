"""Wall time per RL step, split by phase, for the synchronous and the one-step off-policy schedules.

Runs the same small local job twice (every component a real process: verifier and rollout servers,
learner ranks on Ray over gloo) and prints the mean seconds per phase side by side, from one run:

    python bench/e2e.py                       # examples/local-arith.yaml shape, 8 steps each, no cold start
    python bench/e2e.py --steps 12 --spec my.yaml

Phases: rollout (generation), verify, logprobs (old/ref passes), update (optimizer steps), sync (weight
broadcast), step (wall). In the off-policy schedule the next step's rollout overlaps the update, so
its step time can be shorter than the sum of its phases.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "verify", "logprobs", "update", "sync", "step")


def run_schedule(spec_data: dict, mode: str, steps: int, workdir: Path) -> dict[str, float]:
    from forkrl.trainer.controller.loop import run
    from forkrl.trainer.controller.recorder import read_step_records
    from forkrl.trainer.spec import parse_spec

    data = {**spec_data, "name": f"bench-{mode.replace('_', '-')}"}
    data["schedule"] = {**data["schedule"], "steps": steps, "mode": mode}
    data["eval"] = {**data.get("eval", {}), "datasets": []}
    data["checkpoint"] = {"interval": 10_000}
    data["observability"] = {"progress": "quiet", "metrics_port": None, "tensorboard": False, "report": False}
    spec = parse_spec(data)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        exit_code = asyncio.run(run(spec, quiet=True))
    finally:
        os.chdir(cwd)
    if exit_code != 0:
        raise SystemExit(f"{mode} run failed with exit code {exit_code}")
    records = read_step_records(workdir / "runs" / spec.name / "metrics.jsonl")[1:]  # drop warm-up step
    out = {phase: statistics.fmean(getattr(r.time, phase) for r in records) for phase in PHASES}
    out["tokens_per_second"] = statistics.fmean(r.tokens_per_second for r in records)
    out["lag"] = max(r.staleness.lag_max for r in records)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "local-arith.yaml"))
    parser.add_argument("--steps", type=int, default=8, help="RL steps per schedule (the first is not timed)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    spec_data = yaml.safe_load(Path(args.spec).read_text())
    spec_data["cold_start"] = {"enabled": False}  # timing only: start from the random tiny model
    spec_data["dynamic_sampling"] = {"enabled": False}  # same work per step in both schedules
    workdir = Path(tempfile.mkdtemp(prefix="forkrl-bench-e2e-"))
    results = {}
    for mode in ("sync", "one_step_off_policy"):
        print(f"running {args.steps} steps with schedule {mode} ...", file=sys.stderr, flush=True)
        results[mode] = run_schedule(spec_data, mode, args.steps, workdir)
    sync, off = results["sync"], results["one_step_off_policy"]
    print(f"\nseconds per RL step (mean over steps 2..{args.steps}), {args.spec}")
    print(f"{'phase':<18}{'sync':>10}{'off-policy':>12}{'off/sync':>10}")
    for phase in PHASES:
        print(f"{phase:<18}{sync[phase]:>10.3f}{off[phase]:>12.3f}{off[phase] / max(sync[phase], 1e-9):>10.2f}")
    print(f"{'tokens/s':<18}{sync['tokens_per_second']:>10.0f}{off['tokens_per_second']:>12.0f}"
          f"{off['tokens_per_second'] / max(sync['tokens_per_second'], 1e-9):>10.2f}")
    print(f"{'max version lag':<18}{sync['lag']:>10.0f}{off['lag']:>12.0f}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
