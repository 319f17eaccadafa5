"""Responses to analyse, sampled from a checkpoint with forkrl's HF rollout engine, or by a running rollout
service (its URL, e.g. a job's rollout Service, whatever engine it runs): prompts from a spec's data
set (rendered with its template, as training and evaluation see them) or from a JSON-lines file of
`{"prompt": ...}` rows. Written as they are generated, one JSON line per sample, in the format
`scoring.ResponseFile` reads (`prompt_ids`, `response_ids`, plus the prompt text)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, TextIO

from forkrl.rollout.types import GenerateRequest, GenerateResult
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


class ResponseEngine(Protocol):
    """What samples the responses: the in-process HF engine, or a running rollout service."""

    def generate(self, requests: list[GenerateRequest]) -> list[GenerateResult]: ...

    def close(self) -> None: ...


def local_engine(model_path: str | Path, seed: int) -> ResponseEngine:
    from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig

    return HFEngine.from_pretrained(model_path, HFEngineConfig(seed=seed))


class ServiceEngine:
    """A rollout service (`python -m forkrl.rollout`, a job's rollout Service) behind its HTTP API: the
    same requests, sampled by whatever engine serves them (HF or vLLM), with the client's retries."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        from forkrl.rollout.client import RolloutClient

        self._loop = asyncio.new_event_loop()
        self._client = RolloutClient(url, timeout_s=timeout_s)
        self.url = url

    def generate(self, requests: list[GenerateRequest]) -> list[GenerateResult]:
        return self._loop.run_until_complete(self._client.generate(requests))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


def generate_responses(engine: ResponseEngine, tokenizer: Any, prompts: Iterator[str], out: TextIO, samples: int,
                       max_new_tokens: int, temperature: float, top_p: float, seed: int,
                       progress: Callable[[int], None] = lambda _: None) -> int:
    """Sample `samples` responses per prompt (encoded with the served checkpoint's `tokenizer`) and write them to
    `out`; returns the number written. Request i is seeded `seed + i` wherever it is sampled."""
    written = index = 0
    try:
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
    finally:
        engine.close()
    return written
