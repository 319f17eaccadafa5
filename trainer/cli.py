"""The `forkrl` command line: train, inspect the config schema, validate specs, plan layouts.

    forkrl train examples/local-arith.yaml [--resume] [--quiet] [--set schedule.steps=20 ...]
    forkrl config schema            # JSON schema of RLVRJobSpec
    forkrl config validate FILE     # check a spec, naming every bad field
    forkrl plan --model qwen2.5-32b --gpus-per-node 8 --gpu-memory-gib 80 --nodes 4
    forkrl crd [--write | --check]  # the RLVRJob CRD generated from the spec models
    forkrl analyze entropy|tokens|overlap ...  # entropy analyses of responses (trainer/analysis)
    forkrl compare SPEC --workdir W [--objectives dapo,forking-top20,...]  # objectives x seeds, one report
    forkrl sweep SPEC --workdir W --grid objective.rho=0.1,0.2,0.5       # a grid of spec fields x seeds
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def _config_schema(args: argparse.Namespace) -> int:
    from forkrl.trainer.spec import spec_json_schema

    json.dump(spec_json_schema(), sys.stdout, indent=2 if args.indent else None)
    sys.stdout.write("\n")
    return 0


def _config_validate(args: argparse.Namespace) -> int:
    from forkrl.trainer.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.spec}: valid RLVRJob spec {spec.name!r} (objective {spec.objective.name})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from forkrl.rollout.lifeline import watch_from_env

    # Started by `forkrl compare`/`sweep` (an arm): end with it, even when it is SIGKILLed.
    watch_from_env()
    from forkrl.trainer.controller.loop import train_main

    return train_main(args.spec, resume=args.resume, quiet=args.quiet, settings=args.set)


def _plan(args: argparse.Namespace) -> int:
    from forkrl.trainer.learner.plan import main as plan_main

    return plan_main(args.plan_args)


def _crd(args: argparse.Namespace) -> int:
    from forkrl.operator.crd import crd_command

    return crd_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forkrl",
        description="forkrl: RLVR for LLMs with entropy-aware objectives (forking tokens, Archer, DAPO).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="run an RLVR experiment from a YAML spec (local embedded mode)",
                                description="Run the RLVR loop: rollout, verify, advantages, learner updates, "
                                "weight sync, evaluation, checkpoints. Ctrl-C / SIGTERM checkpoint and exit 0.")
    train.add_argument("spec", help="RLVRJob spec YAML (e.g. examples/local-arith.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of this run")
    train.add_argument("--quiet", action="store_true", help="no progress bar (one summary line per step)")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="change a spec field for this run, e.g. --set schedule.steps=20 (repeatable; the value "
                       "is one YAML value; give the same --set again with --resume)")
    train.set_defaults(handler=_train)

    config = commands.add_parser("config", help="inspect or validate RLVRJob specs")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    schema = config_commands.add_parser("schema", help="print the JSON schema of RLVRJobSpec")
    schema.add_argument("--indent", action="store_true", help="pretty-print")
    schema.set_defaults(handler=_config_schema)
    validate = config_commands.add_parser("validate", help="validate a spec file and name every bad field")
    validate.add_argument("spec", help="spec YAML")
    validate.set_defaults(handler=_config_validate)

    plan = commands.add_parser("plan", help="per-rank memory of TP/PP/DP layouts for a model and cluster",
                               add_help=False)
    plan.add_argument("plan_args", nargs=argparse.REMAINDER, help="arguments of the planner (see forkrl plan -h)")
    plan.set_defaults(handler=_plan)

    crd = commands.add_parser("crd", help="print, write or check the RLVRJob CRD and the generated chart files")
    crd.add_argument("--write", action="store_true", help="write the generated chart files into the repository")
    crd.add_argument("--check", action="store_true", help="exit 1 if a generated file in the repository is stale")
    crd.add_argument("--root", default=None, help="repository root (default: this checkout)")
    crd.set_defaults(handler=_crd)

    from forkrl.trainer.analysis.cli import add_analyze_parser
    from forkrl.trainer.experiments.cli import add_experiment_parsers

    add_analyze_parser(commands)
    add_experiment_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"]:  # argparse.REMAINDER does not capture leading options such as --model
        from forkrl.trainer.learner.plan import main as plan_main

        return plan_main(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
