"""Per-token entropies of given responses under a checkpoint, one response at a time (so a response file
larger than memory streams through).

Responses come as JSON lines, either token ids `{"prompt_ids": [...], "response_ids": [...]}` or text
`{"prompt": "...", "response": "..."}` (tokenized with the checkpoint's tokenizer, without special tokens).
Rows that are not such an object are counted and skipped, never fatal (`ResponseFile.malformed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forkrl.trainer.entropy import logprobs_and_entropy

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""input_ids [1, tokens] -> logits [1, tokens, vocab] (a causal LM's forward)."""


@dataclass(frozen=True)
class ResponseRecord:
    prompt_ids: list[int]
    response_ids: list[int]
    line: int
    """1-based line of the responses file."""


@dataclass
class ResponseFile:
    """Reads a responses file lazily; `malformed` counts skipped rows, `errors` keeps the first few reasons."""

    path: Path
    tokenize: Callable[[str], list[int]] | None = None
    malformed: int = 0
    errors: list[str] = field(default_factory=list)

    def _reject(self, line: int, reason: str) -> None:
        self.malformed += 1
        if len(self.errors) < 10:
            self.errors.append(f"{self.path}:{line}: {reason}")

    def _record(self, row: Any, line: int) -> ResponseRecord | None:
        if not isinstance(row, dict):
            self._reject(line, "not a JSON object")
            return None
        if "prompt_ids" in row or "response_ids" in row:
            prompt, response = row.get("prompt_ids"), row.get("response_ids")
            if not all(isinstance(ids, list) and all(isinstance(t, int) and t >= 0 for t in ids)
                       for ids in (prompt, response)):
                self._reject(line, "prompt_ids and response_ids must both be lists of token ids")
                return None
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
            if self.tokenize is None:
                self._reject(line, "a text row needs a tokenizer")
                return None
            prompt, response = self.tokenize(row["prompt"]), self.tokenize(row["response"])
        else:
            self._reject(line, "needs prompt_ids + response_ids, or prompt + response (strings)")
            return None
        if not prompt or not response:
            self._reject(line, "empty prompt or response")
            return None
        return ResponseRecord(list(prompt), list(response), line)

    def __iter__(self) -> Iterator[ResponseRecord]:
        with self.path.open() as rows:
            for line, text in enumerate(rows, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    self._reject(line, f"not JSON ({err.msg})")
                    continue
                record = self._record(row, line)
                if record is not None:
                    yield record


@torch.no_grad()
def response_entropies(logits_fn: LogitsFn, record: ResponseRecord, temperature: float = 1.0) -> np.ndarray:
    """[response_tokens] entropies (nats) of the next-token distributions that produced each response token,
    at `temperature`."""
    ids = torch.tensor([record.prompt_ids + record.response_ids], dtype=torch.long)
    logits = logits_fn(ids)[0]
    start = len(record.prompt_ids) - 1  # position t's logits predict token t + 1
    predicting = logits[start: start + len(record.response_ids)].float()
    targets = torch.tensor(record.response_ids, dtype=torch.long)
    _, entropy = logprobs_and_entropy(predicting, targets, temperature, chunk_size=None)
    return entropy.double().numpy()


@dataclass
class Checkpoint:
    """A Hugging Face causal LM directory (a forkrl run's `final_model` or checkpoint export, or any HF model)."""

    path: str
    logits: LogitsFn
    tokenize: Callable[[str], list[int]]
    decode: Callable[[int], str]

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Checkpoint:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"--model: {path} is not a model directory")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)

        def logits(ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids.to(device)).logits.cpu()

        return cls(str(path), logits, lambda text: tokenizer(text, add_special_tokens=False).input_ids,
                   lambda token: tokenizer.decode([token]))
