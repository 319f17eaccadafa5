"""Responses to analyse, sampled from a checkpoint with forkrl's HF rollout engine: prompts from a spec's data
set (rendered with its template, as training and evaluation see them) or from a JSON-lines file of
`{"prompt": ...}` rows. Written as they are generated, one JSON line per sample, in the format
`scoring.ResponseFile` reads (`prompt_ids`, `response_ids`, plus the prompt text)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from forkrl.trainer.data.schema import PromptRow

PROMPTS_PER_BATCH = 32


def spec_rows(spec_path: str | Path, dataset: str) -> tuple[str, list[PromptRow]]:
    """(the spec's prompt template, the rows of its data set `dataset`: an eval or a training set)."""
    from forkrl.trainer.controller.setup import load_dataset
    from forkrl.trainer.spec import load_spec

    spec = load_spec(spec_path)
    sets = {d.name: d for d in [*spec.eval.datasets, *spec.data.train]}
    if dataset not in sets:
        raise SystemExit(f"forkrl analyze: --dataset: {dataset!r} is not a data set of {spec_path} "
                         f"(it has {', '.join(sorted(sets))})")
    return spec.data.template, load_dataset(sets[dataset])


def spec_prompts(spec_path: str | Path, dataset: str, tokenizer: Any) -> Iterator[str]:
    """The prompts of data set `dataset` of a spec, rendered with its template."""
    from forkrl.trainer.data.templates import render_prompt

    template, rows = spec_rows(spec_path, dataset)
    for row in rows:
        yield render_prompt(row, template, tokenizer)


def file_prompts(path: Path) -> Iterator[str]:
    """`{"prompt": ...}` rows; others raise naming the line (a prompt file is small and written by hand)."""
    with path.open() as rows:
        for line, text in enumerate(rows, start=1):
            if text.strip():
                row = json.loads(text)
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
                    raise SystemExit(f"forkrl analyze: {path}:{line}: expected {{\"prompt\": \"...\"}}")
                yield row["prompt"]


def generate_responses(model_path: str | Path, tokenizer: Any, prompts: Iterator[str], out: TextIO, samples: int,
                       max_new_tokens: int, temperature: float, top_p: float, seed: int,
                       progress: Callable[[int], None] = lambda _: None) -> int:
    """Sample `samples` responses per prompt (encoded with the checkpoint's `tokenizer`) and write them to `out`;
    returns the number written."""
    from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
    from forkrl.rollout.types import GenerateRequest

    engine = HFEngine.from_pretrained(model_path, HFEngineConfig(seed=seed))
    written = index = 0
    while batch := list(islice(prompts, PROMPTS_PER_BATCH)):
        requests = [GenerateRequest(request_id=str(index + i), prompt_token_ids=tokenizer(text).input_ids,
                                    n=samples, max_new_tokens=max_new_tokens, seed=seed + index + i,
                                    sampling={"temperature": temperature, "top_p": top_p})
                    for i, text in enumerate(batch)]
        for request, text, result in zip(requests, batch, engine.generate(requests), strict=True):
            for sample in result.samples:
                if sample.token_ids:
                    out.write(json.dumps({"prompt": text, "prompt_ids": request.prompt_token_ids,
                                          "response_ids": sample.token_ids}) + "\n")
                    written += 1
        out.flush()
        index += len(batch)
        progress(index)
    engine.close()
    return written
