"""Data readers on small fixtures in the forkrl, DAPO-Math-17k and AIME layouts (JSONL and Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forkrl.trainer.data import read_rows

FIXTURES = Path(__file__).parent / "fixtures"


def test_forkrl_layout_counts_malformed_rows() -> None:
    rows, stats = read_rows(FIXTURES / "forkrl_sample.jsonl")
    assert [r.prompt for r in rows] == ["1+1=", "Is 7 prime? Answer yes or no."]
    assert rows[0].answer == "2" and rows[0].metadata == {"difficulty": "easy"}
    assert rows[1].answer_format == "dapo"
    assert stats.rows == 2
    assert dict(stats.malformed) == {"bad_json": 1, "missing_answer": 1, "bad_task": 1, "not_an_object": 1}
    assert "4 malformed" in stats.summary() and "bad_json=1" in stats.summary()


def test_dapo_math_17k_layout() -> None:
    rows, stats = read_rows(FIXTURES / "dapo_math_17k_sample.jsonl")
    assert [r.answer for r in rows] == ["21", "5", "4"]
    assert all(r.answer_format == "dapo" and r.pre_templated for r in rows)
    assert "What is $3 \\cdot 7$?" in rows[0].prompt and rows[0].prompt.startswith("Solve the following")
    assert rows[1].index == 7 and rows[0].source == "math_dapo"
    assert dict(stats.malformed) == {"missing_prompt": 1}


def test_aime_layout_from_parquet(tmp_path: Path) -> None:
    records = [json.loads(line) for line in (FIXTURES / "aime_sample.jsonl").read_text().splitlines()]
    path = tmp_path / "aime.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    rows, stats = read_rows(path)
    assert [r.answer for r in rows] == ["204", "25"]  # integer answers become strings
    assert rows[0].metadata == {"id": "2024-I-1"}
    assert rows[0].prompt.startswith("Every morning Aya")
    assert dict(stats.malformed) == {"unknown_layout": 1}


def test_parquet_and_jsonl_give_the_same_rows(tmp_path: Path) -> None:
    records = [json.loads(line) for line in (FIXTURES / "dapo_math_17k_sample.jsonl").read_text().splitlines()]
    for record in records:  # Arrow columns need one type: the fixture mixes int and str indices
        record["extra_info"]["index"] = str(record["extra_info"]["index"])
    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(records[:2] + records[3:]), path)
    parquet_rows, _ = read_rows(path)
    jsonl_rows, _ = read_rows(FIXTURES / "dapo_math_17k_sample.jsonl")
    assert [(r.prompt, r.answer, r.index) for r in parquet_rows] == [(r.prompt, r.answer, r.index) for r in jsonl_rows]


def test_missing_and_wrong_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rows(tmp_path / "nope.jsonl")
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"jsonl or \.parquet"):
        read_rows(bad)


def test_code_rows_keep_their_tests_and_unusable_tests_are_counted(tmp_path: Path) -> None:
    stdio = {"style": "stdio", "cases": [{"input": "1\n", "output": "2\n"}]}
    call = {"style": "call", "fn_name": "f", "cases": [{"args": [[1, 2]], "expected": {"k": None}}]}
    records = [
        {"prompt": "a", "task": "code", "answer": stdio},
        {"prompt": "b", "task": "code", "answer": json.dumps(call)},  # tests stored as a JSON string
        {"prompt": "c", "task": "code", "answer": {"style": "stdio", "cases": []}},
        {"prompt": "d", "task": "code", "answer": {"style": "unit", "cases": [{"input": "", "output": ""}]}},
        {"prompt": "e", "task": "code", "answer": "print(1)"},
        {"prompt": "f", "task": "code"},
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, stats = read_rows(path)
    assert [(r.prompt, r.task) for r in rows] == [("a", "code"), ("b", "code")]
    assert [json.loads(r.answer) for r in rows] == [stdio, call]
    assert dict(stats.malformed) == {"bad_tests": 3, "missing_answer": 1}
    assert any("answer.stdio.cases" in example for example in stats.examples)
