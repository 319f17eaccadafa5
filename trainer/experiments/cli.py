"""`forkrl compare` (one spec under several objectives), `forkrl sweep` (spec fields over a grid) and
`forkrl reproduce` (the papers' claims on a spec's task: reproduction.py).

    forkrl compare examples/local-arith.yaml --workdir experiments/objectives            # 7 objectives x 3 seeds
    forkrl compare SPEC --workdir W --objectives dapo,forking-top20,archer --seeds 0,1,2 --set schedule.steps=20
    forkrl sweep SPEC --workdir W --grid objective.rho=0.1,0.2,0.5 --seeds 0,1,2
    forkrl reproduce SPEC --workdir W --doc docs/reproduction.md   # the papers' claims, decided by fixed rules
    forkrl sweep SPEC --workdir W --set objective.name=archer --grid objective.eps_reasoning_high=0.3,0.5
    forkrl compare SPEC --workdir W --ray-address auto      # the arms as Ray tasks on a (KubeRay) cluster

Every arm starts from the same checkpoint (the spec's cold start, made once) and keeps every other setting
of the spec, so arms get equal compute. Rerunning the same command resumes: finished arms are not rerun,
an interrupted one continues from its checkpoint. The report (<workdir>/report/) is rewritten after every
finished arm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from forkrl.trainer.experiments.arms import DEFAULT_COMPARE, OBJECTIVE_PRESETS, parse_grid


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected distinct non-negative integers")
    return seeds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the base RLVRJob spec (YAML)")
    parser.add_argument("--workdir", required=True, type=Path,
                        help="the experiment's folder (rerun with the same one to resume); shared storage with Ray")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a base spec field for every arm (e.g. schedule.steps=20); repeatable")
    parser.add_argument("--ray-address", default=None,
                        help="run the arms as Ray tasks on this cluster (`auto`, ray://..., or `local` for a "
                        "private Ray here); default: one after another in this process")
    parser.add_argument("--cpus-per-arm", type=float, default=None,
                        help="CPUs each Ray task reserves (default: the spec's learner CPUs + 1 for its services)")


def add_experiment_parsers(commands: Any) -> None:
    compare = commands.add_parser(
        "compare", help="train one spec under several objectives and seeds; one report with seed bands",
        description="Objectives: " + ", ".join(f"{k} {v}" for k, v in OBJECTIVE_PRESETS.items()))
    _common(compare)
    compare.add_argument("--objectives", default=",".join(DEFAULT_COMPARE),
                         help=f"comma-separated presets (default: all: {','.join(DEFAULT_COMPARE)})")
    compare.set_defaults(handler=_compare)

    sweep = commands.add_parser("sweep", help="train a spec over a grid of field values and seeds; sensitivity plots")
    _common(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                       help="a swept spec field and its values (e.g. objective.rho=0.1,0.2,0.5); repeatable, the "
                       "arms are every combination")
    sweep.set_defaults(handler=_sweep)

    reproduce = commands.add_parser(
        "reproduce", help="the papers' measurements on a spec's task (entropy, overlap, objectives, dual "
        "temperature), decided by fixed rules and written to docs/reproduction.md")
    _common(reproduce)
    reproduce.add_argument("--doc", type=Path, default=Path("docs/reproduction.md"),
                           help="the document to write (its figures go to a folder of the same stem)")
    reproduce.add_argument("--problems", type=int, default=200,
                           help="held-out problems the entropy, overlap and dual-temperature analyses use")
    reproduce.add_argument("--samples", type=int, default=4, help="responses per problem for those analyses")
    reproduce.add_argument("--temperatures", default="0.7,1.0,1.3",
                           help="the dual-temperature grid's values, for t_high and t_low alike (must include 1.0)")
    reproduce.add_argument("--export-every", type=int, default=None,
                           help="RL steps between the model exports the overlap analysis reads (default steps/4)")
    reproduce.set_defaults(handler=_reproduce)


def _base(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The base spec with --set applied, validated (a bad field fails here, naming it)."""
    from forkrl.trainer.spec.overrides import load_spec_with_settings

    return load_spec_with_settings(args.spec, args.set)


def _run(args: argparse.Namespace, kind: str, arms_of) -> int:
    from forkrl.trainer.experiments.experiment import Execution, run_experiment
    from forkrl.trainer.spec import SpecError

    try:
        spec, data = _base(args)
        arms, swept = arms_of(args)
        execution = Execution(args.ray_address, args.cpus_per_arm)
        return run_experiment(kind, spec, data, arms, args.workdir, execution, swept)
    except SpecError as err:
        print(f"forkrl {kind}: {err}", file=sys.stderr)
        return 2


def _compare(args: argparse.Namespace) -> int:
    from forkrl.trainer.experiments.arms import compare_arms

    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    return _run(args, "compare", lambda a: (compare_arms(names, a.seeds), ()))


def _sweep(args: argparse.Namespace) -> int:
    from forkrl.trainer.experiments.arms import sweep_arms

    def arms(a: argparse.Namespace):
        grid = parse_grid(a.grid)
        return sweep_arms(grid, a.seeds), tuple(grid)

    return _run(args, "sweep", arms)


def _reproduce(args: argparse.Namespace) -> int:
    from forkrl.trainer.experiments.experiment import Execution
    from forkrl.trainer.experiments.reproduction import make_plan, reproduce
    from forkrl.trainer.spec import SpecError

    try:
        temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        print(f"forkrl reproduce: --temperatures {args.temperatures!r}: expected comma-separated numbers",
              file=sys.stderr)
        return 2
    if args.problems < 1 or args.samples < 1:
        print("forkrl reproduce: --problems and --samples must be at least 1", file=sys.stderr)
        return 2
    try:
        spec, data = _base(args)
        plan = make_plan(spec, data, args.spec, args.set, args.seeds, args.workdir, args.doc, args.problems,
                         args.samples, temperatures, args.export_every, Execution(args.ray_address, args.cpus_per_arm))
        return reproduce(plan)
    except SpecError as err:
        print(f"forkrl reproduce: {err}", file=sys.stderr)
        return 2
