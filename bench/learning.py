"""Head to head with TRL's GRPOTrainer: the same cold-start checkpoint, the same prompts in the same order,
every setting that changes learning matched (and checked), one evaluator for every model.

    pip install -e '.[bench]'                 # TRL, accelerate, datasets: bench-only (make bench-learning)
    python bench/learning.py                  # 3 seeds x {forkrl, TRL}, 50 steps, forking top-20%, on
                                              # examples/local-arith-format.yaml (--spec for another)
    python bench/learning.py --objective dapo --schedule constant --seeds 0
    python bench/learning.py --steps 2 --seeds 0 --eval-problems 32   # a smoke run of every part
    python bench/learning.py --arms forkrl-ds   # + forkrl with DAPO dynamic sampling (same workdir: reused)

Per seed, the training prompts are forkrl's stream for that seed (held-out problems excluded), written to a
file that forkrl reads unshuffled and TRL reads with `shuffle_dataset=False`. The bench stops before
training when a learning setting differs between the two arms (`learning_settings.py`), and prints every
setting of both. Reported per arm: held-out avg@k gained over the cold start (mean over seeds with a 95%
t-interval), per RL step and per RL wall-second, pass@k, and the RL phase's wall time (forkrl: the sum of
its step times; TRL: `trainer.train()`), both without process start-up and model loading, and the tokens
each arm generated (the gain per million generated tokens prices dynamic sampling, which generates more
than it trains on). The arm `forkrl-ds` is forkrl with the spec's dynamic sampling on (TRL has none); every
other setting is checked equal to the `forkrl` arm's.

Each finished (arm, seed) is saved under <workdir>/results/ with a fingerprint of the settings and the
evaluation; a rerun with the same settings reuses it, so an interrupted bench resumes and arms can be added
later.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from learning_eval import EvalSettings, HeldoutScore, evaluate
from learning_settings import LearningSettings, differences, forkrl_settings, trl_settings

from forkrl.trainer.evaluation import seed_interval as interval

ROOT = Path(__file__).resolve().parents[1]


ARMS = ("forkrl", "trl", "forkrl-ds")


@dataclass(frozen=True)
class ArmResult:
    arm: str
    seed: int
    rl_seconds: float
    generated_tokens: int
    score: HeldoutScore

    def save(self, path: Path, fingerprint: str) -> None:
        path.write_text(json.dumps({"fingerprint": fingerprint, **asdict(self)}))

    @staticmethod
    def load(path: Path, fingerprint: str) -> ArmResult | None:
        """The saved result, or None when absent or made under other settings."""
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.pop("fingerprint") != fingerprint:
            return None
        score = data.pop("score")
        score["pass_at_k"] = {int(k): v for k, v in score["pass_at_k"].items()}
        score["per_problem"] = tuple(score["per_problem"])
        return ArmResult(**data, score=HeldoutScore(**score))


def bench_spec_data(base: dict[str, Any], objective: str, schedule: str, steps: int | None,
                    dynamic_sampling: bool = False, layout: str = "spec") -> dict[str, Any]:
    """The main job's spec as the forkrl arm runs it: sync, dynamic sampling (unless asked for) and overlong
    shaping off (TRL has neither by default), the bench's objective and LR schedule, no evaluation inside.
    layout `one-rank`: one learner rank (TP=1) using every core, the resources TRL's single process has;
    `tp2`: two tensor-parallel ranks sharing the cores."""
    data = copy.deepcopy(base)
    cores = os.cpu_count() or 1
    if layout in ("one-rank", "tp2"):
        ranks = 1 if layout == "one-rank" else 2
        data["learner"] = {**data["learner"], "parallel": {"tensor_parallel": ranks}}
        data["resources"] = {**data.get("resources", {}), "learner_ranks": ranks,
                             "torch_threads": max(1, cores // ranks)}
    data["schedule"] = {**data["schedule"], "mode": "sync", **({"steps": steps} if steps else {})}
    data["dynamic_sampling"] = {**data.get("dynamic_sampling", {}), "enabled": dynamic_sampling}
    data["overlong"] = {"enabled": False}
    data["objective"] = ({"name": "forking", "rho": 0.2, "scope": "micro_batch"} if objective == "forking"
                         else {"name": "dapo"})
    s = data["schedule"]
    updates = s["steps"] * s["train_batch_size"] // s["mini_batch_size"]
    optimizer = dict(data["learner"]["optimizer"])
    optimizer.update({"decay_style": schedule, "decay_steps": updates} if schedule != "constant"
                     else {"decay_style": "constant", "decay_steps": None})
    data["learner"] = {**data["learner"], "optimizer": optimizer}
    data["checkpoint"] = {"interval": 100_000}
    data["observability"] = {"progress": "quiet", "metrics_port": None, "tensorboard": False, "report": False}
    return data


def cold_start(spec_data: dict[str, Any], workdir: Path) -> Path:
    """The main job's cold-start checkpoint (built once per workdir, reused after)."""
    from forkrl.trainer.controller.loop import prepare_policy
    from forkrl.trainer.spec import parse_spec

    spec = parse_spec({**spec_data, "name": "bench-cold-start"})
    path, _, info = prepare_policy(spec, workdir / "cold-start", log=lambda m: print(f"  {m}", flush=True))
    if info:
        print(f"  cold start: {info['cold_start_seconds']:.0f} s, final loss {info['cold_start_final_loss']:.3f}")
    return Path(path)


def training_prompts(spec_data: dict[str, Any], seed: int, count: int) -> list[Any]:
    """The first `count` prompts forkrl's stream gives a run of this seed (held-out problems excluded)."""
    from forkrl.trainer.controller.setup import load_datasets
    from forkrl.trainer.data.stream import PromptStream
    from forkrl.trainer.spec import parse_spec

    spec = parse_spec({**spec_data, "name": "bench-data", "seed": seed})
    train, _ = load_datasets(spec, log=lambda _: None)
    return PromptStream(train, seed, spec.data.shuffle).take(count)


def write_rows(rows: list[Any], path: Path) -> Path:
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps({"prompt": row.prompt, "answer": row.answer}) + "\n")
    return path


def run_forkrl(spec_data: dict[str, Any], model: Path, rows_file: Path, seed: int, workdir: Path,
               name: str) -> tuple[float, int, Path]:
    """`forkrl train` on the fixed prompt file; returns the RL phase's seconds (sum of step times), the tokens
    it generated and its final model."""
    from forkrl.trainer.controller.recorder import read_step_records

    data = copy.deepcopy(spec_data)
    data.update(name=name, seed=seed)
    data["model"] = {**data["model"], "path": str(model), "tiny": None}
    data["cold_start"] = {"enabled": False}
    data["data"] = {**data["data"], "shuffle": False, "train": [{"name": "bench-train", "path": str(rows_file)}]}
    data["eval"] = {**data["eval"], "datasets": []}
    path = workdir / f"forkrl-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(data))
    forkrl = str(Path(sys.executable).with_name("forkrl"))
    result = subprocess.run([forkrl, "train", str(path), "--quiet"], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"forkrl seed {seed} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    records = read_step_records(workdir / "runs" / name / "metrics.jsonl")
    generated = sum(round(r.generated.samples * r.generated.response_length_mean) for r in records)
    return sum(record.time.step for record in records), generated, workdir / "runs" / name / "final_model"


def print_settings(forkrl: LearningSettings, trl: LearningSettings | None) -> None:
    print(f"{'setting':24} {'forkrl':40} {'TRL':40}")
    trl_rows = dict(trl.rows()) if trl else {}
    for name, value in forkrl.rows():
        print(f"{name:24} {value[:40]:40} {trl_rows.get(name, '-')[:40]:40}")


def report(cold: HeldoutScore, results: list[ArmResult], steps: int, ks: tuple[int, ...]) -> dict[str, Any]:
    print(f"\ncold start: avg@k {cold.avg_at_k:.3f}, " + ", ".join(f"pass@{k} {v:.3f}" for k, v in
                                                                 cold.pass_at_k.items()))
    summary: dict[str, Any] = {}
    header = (f"{'arm':9} {'seeds':>5} {'held-out':>16} {'gain':>16} {'gain/step':>10} {'gain/RL s':>10} "
              f"{'RL s':>12} {'gen Mtok':>8} {'gain/Mtok':>9}")
    print(header + "".join(f" {'pass@' + str(k):>8}" for k in ks) + f" {'any fmt':>8}")
    for arm in [a for a in ARMS if any(r.arm == a for r in results)]:
        rows = [r for r in results if r.arm == arm]
        after = interval([r.score.avg_at_k for r in rows])
        gain = interval([r.score.avg_at_k - cold.avg_at_k for r in rows])
        seconds = interval([r.rl_seconds for r in rows])
        per_second = statistics.fmean((r.score.avg_at_k - cold.avg_at_k) / r.rl_seconds for r in rows)
        passes = {k: statistics.fmean(r.score.pass_at_k[k] for r in rows) for k in ks}
        any_format = statistics.fmean(r.score.any_format for r in rows)
        tokens = statistics.fmean(r.generated_tokens for r in rows) / 1e6
        print(f"{arm:9} {len(rows):>5} {after[0]:>8.3f} ± {after[1]:.3f} {gain[0]:>+8.3f} ± {gain[1]:.3f} "
              f"{gain[0] / steps:>10.5f} {per_second:>10.6f} {seconds[0]:>6.0f} ± {seconds[1]:<3.0f} "
              f"{tokens:>8.3f} {gain[0] / tokens:>9.4f}"
              + "".join(f" {passes[k]:>8.3f}" for k in ks) + f" {any_format:>8.3f}")
        summary[arm] = {"after": after, "gain": gain, "gain_per_step": gain[0] / steps,
                        "gain_per_rl_second": per_second, "rl_seconds": seconds, "pass_at_k": passes,
                        "generated_mtokens": tokens, "gain_per_mtoken": gain[0] / tokens,
                        "any_format": any_format, "seeds": [r.seed for r in rows]}
    if {"forkrl", "trl"} <= summary.keys():
        ratio = summary["forkrl"]["rl_seconds"][0] / summary["trl"]["rl_seconds"][0]
        print(f"\nRL wall time forkrl / TRL: {ratio:.2f}x")
        summary["rl_seconds_ratio"] = ratio
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "local-arith-format.yaml"))
    parser.add_argument("--objective", choices=("forking", "dapo"), default="forking")
    parser.add_argument("--schedule", choices=("linear", "cosine", "constant"), default="linear")
    parser.add_argument("--layout", choices=("spec", "one-rank", "tp2"), default="spec",
                        help="forkrl's learner as the spec has it, one rank with every core (as TRL runs), or "
                        "two tensor-parallel ranks")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (3 for intervals)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the spec's)")
    parser.add_argument("--arms", default="forkrl,trl", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--eval-problems", type=int, default=None, help="first N held-out problems (default all)")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "results" / "learning"))
    parser.add_argument("--out", default=None, help="JSON summary (default: <workdir>/summary.json)")
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        parser.error(f"--arms: unknown {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from forkrl.trainer.controller.setup import load_datasets
    from forkrl.trainer.spec import parse_spec

    base = yaml.safe_load(Path(args.spec).read_text())
    spec_data = bench_spec_data(base, args.objective, args.schedule, args.steps, layout=args.layout)
    spec = parse_spec(spec_data)
    forkrl_side = forkrl_settings(spec)
    trl_side = None
    if "trl" in arms:
        from learning_trl import grpo_config

        trl_side = trl_settings(grpo_config(spec, seeds[0], workdir / "trl-check"), spec.schedule.steps)
    print_settings(forkrl_side, trl_side)
    if trl_side is not None and (diff := differences(forkrl_side, trl_side)):
        raise SystemExit("the arms do not train alike:\n  " + "\n  ".join(diff))
    ds_data = bench_spec_data(base, args.objective, args.schedule, args.steps, dynamic_sampling=True,
                              layout=args.layout)
    ds_diff = differences(forkrl_side, forkrl_settings(parse_spec(ds_data)))
    if "forkrl-ds" in arms and [line.split(":")[0] for line in ds_diff] != ["dynamic_sampling"]:
        raise SystemExit("forkrl-ds differs from forkrl in more than dynamic sampling:\n  " + "\n  ".join(ds_diff))

    print("\n[1/3] cold start", flush=True)
    model = cold_start(base, workdir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)

    def render(row: Any) -> list[int]:
        return tokenizer(row.prompt, add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    _, eval_sets = load_datasets(spec, log=lambda _: None)
    heldout = next(iter(eval_sets.values()))[: args.eval_problems]
    ev = spec.eval
    eval_settings = EvalSettings(ev.samples_per_problem, ev.temperature, ev.top_p,
                                 ev.max_response_tokens or spec.model.max_response_tokens, tuple(ev.pass_k))
    print(f"evaluation: {len(heldout)} held-out problems, {asdict(eval_settings)}")
    cold = evaluate(model, heldout, render, decode, eval_settings)
    fingerprint = hashlib.sha256(json.dumps([forkrl_side.rows(), asdict(eval_settings), len(heldout),
                                             cold.per_problem]).encode()).hexdigest()[:16]
    saved = workdir / "results"
    saved.mkdir(exist_ok=True)

    print("\n[2/3] RL runs", flush=True)
    results: list[ArmResult] = []
    count = spec.schedule.steps * spec.schedule.train_batch_size
    for seed in seeds:
        rows = training_prompts(spec_data, seed, count)
        rows_file = write_rows(rows, workdir / f"train-seed{seed}.jsonl")
        for arm in arms:
            # forkrl's runs under another learner layout are other runs (TRL's are the same whatever it is).
            tag = arm if arm == "trl" or args.layout == "spec" else f"{arm}-{args.layout}"
            path = saved / f"{tag}-seed{seed}.json"
            if (done := ArmResult.load(path, fingerprint)) is not None:
                results.append(done)
                print(f"  seed {seed} {arm}: done before (held-out {done.score.avg_at_k:.3f})", flush=True)
                continue
            start = time.monotonic()
            print(f"  seed {seed} {arm}: training ...", flush=True)
            if arm in ("forkrl", "forkrl-ds"):
                rl_seconds, generated, final = run_forkrl(spec_data if arm == "forkrl" else ds_data, model,
                                                          rows_file, seed, workdir, f"{tag}-seed{seed}")
            else:
                from learning_trl import run_trl

                run = run_trl(model, [row.prompt for row in rows], rows, spec, seed, workdir / f"trl-seed{seed}",
                              [render(row) for row in rows])
                rl_seconds, generated, final = run.rl_seconds, run.generated_tokens, run.final_model
            score = evaluate(final, heldout, render, decode, eval_settings, log=lambda _: None)
            result = ArmResult(arm, seed, rl_seconds, generated, score)
            result.save(path, fingerprint)
            results.append(result)
            print(f"  seed {seed} {arm}: held-out {score.avg_at_k:.3f} (cold {cold.avg_at_k:.3f}), RL "
                  f"{rl_seconds:.0f} s, total {time.monotonic() - start:.0f} s", flush=True)

    print("\n[3/3] results", flush=True)
    summary = report(cold, results, spec.schedule.steps, eval_settings.pass_k)
    out = Path(args.out) if args.out else workdir / "summary.json"
    out.write_text(json.dumps({
        "settings": {"forkrl": dict(forkrl_side.rows()), "trl": dict(trl_side.rows()) if trl_side else None},
        "eval": asdict(eval_settings), "problems": len(heldout), "cold_start": asdict(cold) | {"per_problem": None},
        "runs": [{"arm": r.arm, "seed": r.seed, "rl_seconds": r.rl_seconds, "generated_tokens": r.generated_tokens,
                  "avg_at_k": r.score.avg_at_k, "pass_at_k": r.score.pass_at_k, "any_format": r.score.any_format}
                 for r in results],
        "summary": summary,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
