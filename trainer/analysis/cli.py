"""`forkrl analyze generate|entropy|tokens|overlap|dual-temperature`: `generate` samples a responses file from
a checkpoint; `entropy`, `tokens` and `overlap` score one (scoring.py); `dual-temperature` samples and verifies
a grid. Each writes `<out>/<command>.json` and `<out>/<command>.png`.

    forkrl analyze generate --model M --spec examples/local-arith.yaml --dataset arith-heldout --out r.jsonl

    forkrl analyze entropy --model runs/local-arith/final_model --responses responses.jsonl --out analysis/
    forkrl analyze tokens  --model M --responses R --out DIR [--rho 0.2] [--top 30]
    forkrl analyze dual-temperature --model M --spec SPEC --dataset NAME --t-high 0.7,1.0 --t-low 0.7,1.0 --out DIR
    forkrl analyze overlap --base COLD_START --model STEP_50 [--model STEP_100 ...] --responses R --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def add_analyze_parser(commands: Any) -> None:
    analyze = commands.add_parser("analyze", help="entropy analyses of a checkpoint's responses (80/20 paper)")
    sub = analyze.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--responses", required=True, type=Path,
                            help="JSON lines: {prompt_ids, response_ids} or {prompt, response}")
        parser.add_argument("--out", required=True, type=Path, help="folder for the JSON and PNG")
        parser.add_argument("--temperature", type=float, default=1.0, help="entropy of softmax(logits / T)")
        parser.add_argument("--limit", type=int, default=None, help="score at most this many responses")
        parser.add_argument("--device", default="cpu")

    generate = sub.add_parser("generate", help="sample responses to analyse from a checkpoint (HF rollout engine) "
                              "or a running rollout service")
    generate.add_argument("--model", required=True,
                          help="the checkpoint (with --endpoint: the served model's, for its tokenizer)")
    generate.add_argument("--endpoint", default=None,
                          help="a rollout service URL (python -m forkrl.rollout, a job's rollout Service) to sample "
                          "from instead of loading --model here")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="take the prompts of a data set of this spec (with --dataset)")
    source.add_argument("--prompts", type=Path, help='JSON lines of {"prompt": "..."}')
    generate.add_argument("--dataset", help="the spec's data set (an eval or training set) to prompt with")
    generate.add_argument("--samples", type=int, default=4, help="responses per prompt")
    generate.add_argument("--max-new-tokens", type=int, default=256)
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    generate.add_argument("--out", required=True, type=Path, help="the responses file to write (JSON lines)")
    generate.set_defaults(handler=_generate)

    dual = sub.add_parser("dual-temperature", help="avg@k over a grid of t_high x t_low (80/20 paper, Table 3)")
    dual.add_argument("--model", required=True)
    dual.add_argument("--spec", required=True, help="the spec whose data set and template to use")
    dual.add_argument("--dataset", required=True, help="a math data set of the spec (e.g. its eval set)")
    dual.add_argument("--t-high", default="0.7,1.0,1.3", help="comma-separated temperatures of high-entropy tokens")
    dual.add_argument("--t-low", default="0.7,1.0,1.3", help="comma-separated temperatures of the other tokens")
    dual.add_argument("--threshold", type=float, default=0.672, help="entropy threshold (nats)")
    dual.add_argument("--samples", type=int, default=4, help="k of avg@k: samples per problem")
    dual.add_argument("--max-new-tokens", type=int, default=256)
    dual.add_argument("--limit", type=int, default=100, help="problems (from the start of the data set)")
    dual.add_argument("--seed", type=int, default=0)
    dual.add_argument("--out", required=True, type=Path)
    dual.set_defaults(handler=_dual_temperature)

    entropy = sub.add_parser("entropy", help="histogram and percentiles of per-token entropy")
    entropy.add_argument("--model", required=True)
    common(entropy)
    entropy.set_defaults(handler=_entropy)
    tokens = sub.add_parser("tokens", help="tokens most often at the highest / lowest entropy positions")
    tokens.add_argument("--model", required=True)
    tokens.add_argument("--rho", type=float, default=0.2, help="share of each response's positions counted")
    tokens.add_argument("--top", type=int, default=30, help="rows of each table")
    common(tokens)
    tokens.set_defaults(handler=_tokens)
    overlap = sub.add_parser("overlap", help="overlap of top-rho entropy positions with a base checkpoint")
    overlap.add_argument("--base", required=True, help="the reference checkpoint (e.g. the cold start)")
    overlap.add_argument("--model", required=True, action="append", help="a checkpoint to compare (repeatable)")
    overlap.add_argument("--rho", type=float, default=0.2)
    common(overlap)
    overlap.set_defaults(handler=_overlap)


def _progress(items: Iterable[T], what: str, every_s: float = 10.0) -> Iterator[T]:
    start = last = time.monotonic()
    count = 0
    for count, item in enumerate(items, start=1):
        yield item
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            print(f"{what}: {count} responses ({count / (last - start):.1f}/s)", file=sys.stderr, flush=True)
    print(f"{what}: {count} responses in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)


def _records(args: argparse.Namespace, tokenize: Any) -> tuple[Any, Iterator[Any]]:
    from itertools import islice

    from forkrl.trainer.analysis.scoring import ResponseFile

    if not args.responses.is_file():
        raise SystemExit(f"forkrl analyze: --responses: {args.responses} is not a file")
    source = ResponseFile(args.responses, tokenize)
    return source, islice(iter(source), args.limit)


def _write(out: Path, name: str, result: dict[str, Any], figure: Any) -> int:
    """`<out>/<name>.json` and `<out>/<name>.png`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")
    return 0


def _finish(args: argparse.Namespace, name: str, result: dict[str, Any], source: Any, figure: Any) -> int:
    """_write, with what was read from the responses file (malformed rows reported)."""
    result["responses_file"] = {"path": str(args.responses), "malformed_rows": source.malformed,
                                "first_errors": source.errors}
    if source.malformed:
        print(f"forkrl analyze: skipped {source.malformed} malformed rows, e.g. {source.errors[0]}", file=sys.stderr)
    return _write(args.out, name, result, figure)


def _generate(args: argparse.Namespace) -> int:
    from itertools import islice

    from transformers import AutoTokenizer

    from forkrl.trainer.analysis.generate import (
        ServiceEngine,
        file_prompts,
        generate_responses,
        local_engine,
        spec_prompts,
    )

    if args.spec and not args.dataset:
        raise SystemExit("forkrl analyze generate: --spec needs --dataset (which of its data sets to prompt with)")
    if args.prompts and not args.prompts.is_file():
        raise SystemExit(f"forkrl analyze generate: --prompts: {args.prompts} is not a file")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = spec_prompts(args.spec, args.dataset, tokenizer) if args.spec else file_prompts(args.prompts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def progress(done: int) -> None:
        print(f"generate: {done} prompts ({done / (time.monotonic() - start):.1f}/s)", file=sys.stderr, flush=True)

    engine = ServiceEngine(args.endpoint) if args.endpoint else local_engine(args.model, args.seed)
    with args.out.open("w") as out:
        written = generate_responses(engine, tokenizer, islice(prompts, args.limit), out, args.samples,
                                     args.max_new_tokens, args.temperature, args.top_p, args.seed, progress)
    print(f"wrote {written} responses to {args.out}" + (f" (sampled by {args.endpoint})" if args.endpoint else ""))
    return 0


def _temperatures(text: str, flag: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"forkrl analyze: {flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise SystemExit(f"forkrl analyze: {flag}: temperatures must be > 0, got {text!r}")
    return values


def _dual_temperature(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from transformers import AutoTokenizer

    from forkrl.trainer.analysis.dual_temperature import dual_temperature_grid
    from forkrl.trainer.analysis.generate import spec_rows
    from forkrl.trainer.analysis.plots import dual_temperature_figure
    from forkrl.trainer.data.templates import render_prompt

    t_highs, t_lows = _temperatures(args.t_high, "--t-high"), _temperatures(args.t_low, "--t-low")
    template, rows = spec_rows(args.spec, args.dataset)
    rows = rows[: args.limit]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    cells = dual_temperature_grid(args.model, tokenizer, rows, lambda row: render_prompt(row, template, tokenizer),
                                  t_highs, t_lows, args.samples, args.max_new_tokens, args.threshold, args.seed,
                                  progress=lambda line: print(line, file=sys.stderr, flush=True))
    result = {"model": args.model, "dataset": args.dataset, "problems": len(rows), "k": args.samples,
              "threshold": args.threshold, "cells": [asdict(cell) for cell in cells]}
    return _write(args.out, "dual_temperature", result, dual_temperature_figure(result))


def _entropy(args: argparse.Namespace) -> int:
    from forkrl.trainer.analysis.histogram import EntropyHistogram
    from forkrl.trainer.analysis.plots import entropy_figure
    from forkrl.trainer.analysis.scoring import Checkpoint, response_entropies

    model = Checkpoint.load(args.model, args.device)
    source, records = _records(args, model.tokenize)
    histogram = EntropyHistogram()
    for record in _progress(records, "entropy"):
        histogram.add(response_entropies(model.logits, record, args.temperature))
    if histogram.total == 0:
        raise SystemExit(f"forkrl analyze: no usable responses in {args.responses} ({source.malformed} malformed)")
    result = {"model": args.model, "temperature": args.temperature, **histogram.summary()}
    return _finish(args, "entropy", result, source, entropy_figure(histogram, args.model))


def _tokens(args: argparse.Namespace) -> int:
    from forkrl.trainer.analysis.plots import tokens_figure
    from forkrl.trainer.analysis.scoring import Checkpoint, response_entropies
    from forkrl.trainer.analysis.token_table import TokenEntropyTable

    model = Checkpoint.load(args.model, args.device)
    source, records = _records(args, model.tokenize)
    table = TokenEntropyTable(rho=args.rho)
    for record in _progress(records, "tokens"):
        table.add(record.response_ids, response_entropies(model.logits, record, args.temperature))
    result = {"model": args.model, "temperature": args.temperature, "rho": args.rho,
              "highest_entropy": table.rows("high", args.top, model.decode),
              "lowest_entropy": table.rows("low", args.top, model.decode)}
    return _finish(args, "tokens", result, source, tokens_figure(result))


def _overlap(args: argparse.Namespace) -> int:
    from forkrl.trainer.analysis.overlap import OverlapStats
    from forkrl.trainer.analysis.plots import overlap_figure
    from forkrl.trainer.analysis.scoring import Checkpoint, response_entropies

    base = Checkpoint.load(args.base, args.device)
    others = [Checkpoint.load(path, args.device) for path in args.model]
    source, records = _records(args, base.tokenize)
    stats = [OverlapStats(rho=args.rho) for _ in others]
    for record in _progress(records, "overlap"):
        reference = response_entropies(base.logits, record, args.temperature)
        for checkpoint, stat in zip(others, stats, strict=True):
            stat.add(reference, response_entropies(checkpoint.logits, record, args.temperature))
    result = {"base": args.base, "temperature": args.temperature,
              "checkpoints": {path: stat.summary() for path, stat in zip(args.model, stats, strict=True)}}
    return _finish(args, "overlap", result, source, overlap_figure(result))
