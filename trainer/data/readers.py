"""Readers for prompt data: JSONL or Parquet, in forkrl's own layout or the public DAPO-Math-17k / AIME
layouts. Malformed rows are counted by reason and skipped, never fatal."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from forkrl.trainer.data.schema import CODE_TESTS, PromptRow

Layout = Literal["auto", "forkrl", "dapo_math_17k", "aime"]


class MalformedRow(ValueError):
    """A row that cannot become a PromptRow; `reason` is a short machine-readable key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class DataStats:
    """What a read produced: rows kept and malformed rows by reason (with the first few examples)."""

    path: str = ""
    rows: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def num_malformed(self) -> int:
        return sum(self.malformed.values())

    def summary(self) -> str:
        """One line for logs: `data.jsonl: 98 rows, 2 malformed (bad_json=1, missing_answer=1)`."""
        text = f"{self.path}: {self.rows} rows"
        if self.malformed:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.malformed.items()))
            text += f", {self.num_malformed} malformed ({reasons})"
        return text


def _pick(record: dict[str, Any], *names: str) -> Any:
    lowered = {str(k).lower(): v for k, v in record.items()}
    for name in names:
        if name in lowered and lowered[name] is not None:
            return lowered[name]
    return None


def _text(value: Any, what: str) -> str:
    if isinstance(value, bool) or value is None:
        raise MalformedRow(f"missing_{what}", f"no usable {what}")
    if isinstance(value, int | float):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRow(f"missing_{what}", f"{what} must be a non-empty string, got {type(value).__name__}")
    return value


def _code_tests(value: Any) -> str:
    """A code row's tests (an object, or a string holding its JSON) as canonical JSON. Checked here, so a
    row the verifier would reject is counted and skipped at read time instead of failing a training step."""
    if value is None:
        raise MalformedRow("missing_answer", "a code row needs its tests as answer")
    try:
        tests = CODE_TESTS.validate_json(value) if isinstance(value, str) else CODE_TESTS.validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MalformedRow("bad_tests", f"answer.{where}: {first['msg']}" if where else first["msg"]) from None
    return tests.model_dump_json()


def _from_forkrl(record: dict[str, Any], source: str, index: int) -> PromptRow:
    task = record.get("task", "math")
    if task not in ("math", "code"):
        raise MalformedRow("bad_task", f"task must be 'math' or 'code', got {task!r}")
    answer_format = record.get("answer_format", "boxed")
    if answer_format not in ("boxed", "dapo"):
        raise MalformedRow("bad_answer_format", f"answer_format must be 'boxed' or 'dapo', got {answer_format!r}")
    known = {"prompt", "answer", "task", "answer_format", "pre_templated"}
    return PromptRow(
        prompt=_text(record.get("prompt"), "prompt"),
        answer=_text(record.get("answer"), "answer") if task == "math" else _code_tests(record.get("answer")),
        task=task,
        answer_format=answer_format,
        pre_templated=bool(record.get("pre_templated", False)),
        source=source,
        index=index,
        metadata={k: v for k, v in record.items() if k not in known},
    )


def _from_dapo_math(record: dict[str, Any], source: str, index: int) -> PromptRow:
    """DAPO-Math-17k: prompt = [{role, content}] already holding the DAPO instruction; answer in
    reward_model.ground_truth; scored with the `Answer:` line (reward +1/-1)."""
    messages = record.get("prompt")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise MalformedRow("missing_prompt", "dapo_math_17k rows need prompt = [{role, content}, ...]")
    reward_model = record.get("reward_model")
    if not isinstance(reward_model, dict):
        raise MalformedRow("missing_answer", "dapo_math_17k rows need reward_model.ground_truth")
    extra = record.get("extra_info") if isinstance(record.get("extra_info"), dict) else {}
    raw_index = extra.get("index", index)
    return PromptRow(
        prompt=_text(messages[-1].get("content"), "prompt"),
        answer=_text(reward_model.get("ground_truth"), "answer"),
        task="math",
        answer_format="dapo",
        pre_templated=True,
        source=str(record.get("data_source") or source),
        index=int(raw_index) if str(raw_index).isdigit() else index,
        metadata={"ability": record.get("ability"), "original_index": raw_index},
    )


def _from_aime(record: dict[str, Any], source: str, index: int) -> PromptRow:
    """AIME-style evaluation sets: Problem/problem/question + Answer/answer (+ ID/id/year)."""
    row_id = _pick(record, "id", "year")
    return PromptRow(
        prompt=_text(_pick(record, "problem", "question"), "prompt"),
        answer=_text(_pick(record, "answer"), "answer"),
        task="math",
        answer_format="boxed",
        source=source,
        index=index,
        metadata={"id": row_id} if row_id is not None else {},
    )


def detect_layout(record: dict[str, Any]) -> Layout:
    """Guess the layout of one record from its keys."""
    if isinstance(record.get("reward_model"), dict) and isinstance(record.get("prompt"), list):
        return "dapo_math_17k"
    if "prompt" in record:
        return "forkrl"
    if _pick(record, "problem", "question") is not None:
        return "aime"
    raise MalformedRow("unknown_layout", f"no prompt/problem/question field among {sorted(record)[:8]}")


_CONVERTERS = {"forkrl": _from_forkrl, "dapo_math_17k": _from_dapo_math, "aime": _from_aime}


def _records(path: Path, stats: DataStats) -> Iterator[tuple[int, dict[str, Any] | None]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, record in enumerate(pq.read_table(path).to_pylist()):
            yield index, record
        return
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                stats.malformed["bad_json"] += 1
                if len(stats.examples) < 5:
                    stats.examples.append(f"line {index + 1}: bad_json: {err}")
                continue
            if not isinstance(record, dict):
                stats.malformed["not_an_object"] += 1
                continue
            yield index, record


def read_rows(path: str | Path, layout: Layout = "auto") -> tuple[list[PromptRow], DataStats]:
    """Read every well-formed row of a .jsonl/.json-lines or .parquet file; count and skip the rest."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix not in (".jsonl", ".parquet", ".json"):
        raise ValueError(f"data file {path}: expected a .jsonl or .parquet file")
    stats = DataStats(path=str(path))
    rows: list[PromptRow] = []
    for index, record in _records(path, stats):
        try:
            row_layout = detect_layout(record) if layout == "auto" else layout
            rows.append(_CONVERTERS[row_layout](record, path.stem, index))
        except MalformedRow as err:
            stats.malformed[err.reason] += 1
            if len(stats.examples) < 5:
                stats.examples.append(f"row {index}: {err}")
    stats.rows = len(rows)
    return rows, stats
