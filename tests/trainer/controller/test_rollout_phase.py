"""Each prompt row is scored by its own task's verifier: math rows by their ground truth (fast path or
math-verify), code rows by running their tests in the sandbox (issue 2: code rows used to go out as math)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from forkrl.rollout.types import GenerateRequest, GenerateResult, SampleResult, SamplingParams
from forkrl.rollout.verifier.client import VerifierClient
from forkrl.rollout.verifier.schemas import CallTests, CodeItem, MathItem, Reason, StdioTests, VerifyResult
from forkrl.trainer.controller.rollout_phase import PhaseTimes, build_requests, generate_and_verify
from forkrl.trainer.controller.services import start_verifier
from forkrl.trainer.data import read_rows
from forkrl.trainer.data.schema import PromptRow

DOUBLE = "```python\nprint(int(input()) * 2)\n```"
TRIPLE = "```python\nprint(int(input()) * 3)\n```"
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
STDIO_TESTS = {"style": "stdio", "cases": [{"input": "3\n", "output": "6\n"}, {"input": "0\n", "output": "0\n"}]}
CALL_TESTS = {"style": "call", "fn_name": "add",
              "cases": [{"args": [1, 2], "expected": 3}, {"args": [-1, 1], "expected": 0}]}


class ScriptedReplicas:
    """Rollout replicas that answer sample j of request i with token [i * 100 + j] (decoded by a table)."""

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        return [
            GenerateResult(request.request_id,
                           [SampleResult([i * 100 + j], [-0.5], "stop", 0) for j in range(request.n)],
                           seed=0, prompt_length=len(request.prompt_token_ids))
            for i, request in enumerate(requests)
        ]


class RecordingVerifier:
    """Records the items it is asked to score; every item is 'correct'."""

    def __init__(self) -> None:
        self.items: list[MathItem | CodeItem] = []

    async def verify(self, items: Sequence[MathItem | CodeItem]) -> list[VerifyResult]:
        self.items += items
        return [VerifyResult(id=item.id, task=item.task, reward=1.0, correct=True, reason=Reason.ok, latency_s=0.0)
                for item in items]


def _requests(rows: list[PromptRow], n: int) -> tuple[list[PromptRow], list[GenerateRequest]]:
    kept, requests, skipped = build_requests(rows, lambda row: [1, 2, 3], n, 16, SamplingParams(temperature=1.0),
                                             0, "t", 64)
    assert skipped == 0
    return kept, requests


def test_rows_are_routed_to_their_tasks_verifier_request() -> None:
    rows = [
        PromptRow(prompt="6*7=", answer="42", task="math", answer_format="dapo"),
        PromptRow(prompt="double it", answer=json.dumps(STDIO_TESTS), task="code"),
        PromptRow(prompt="add", answer=json.dumps(CALL_TESTS), task="code"),
    ]
    texts = {0: "Answer: 42", 1: "Answer: 41", 100: DOUBLE, 101: TRIPLE, 200: ADD, 201: "no code"}
    verifier = RecordingVerifier()
    kept, requests = _requests(rows, n=2)
    groups = asyncio.run(generate_and_verify(kept, requests, ScriptedReplicas(), verifier,
                                             lambda ids: texts[ids[0]], PhaseTimes()))

    assert [g.rewards for g in groups] == [[1.0, 1.0]] * 3
    math_items, double_items, add_items = verifier.items[0:2], verifier.items[2:4], verifier.items[4:6]
    assert all(isinstance(item, MathItem) for item in math_items)
    assert [(i.ground_truth, i.extraction, i.response) for i in math_items] == [("42", "dapo", "Answer: 42"),
                                                                                  ("42", "dapo", "Answer: 41")]
    assert all(isinstance(item, CodeItem) and item.task == "code" for item in double_items + add_items)
    assert [i.response for i in double_items] == [DOUBLE, TRIPLE]
    assert [i.tests for i in double_items] == [StdioTests.model_validate(STDIO_TESTS)] * 2
    assert [i.tests for i in add_items] == [CallTests.model_validate(CALL_TESTS)] * 2
    assert [i.response for i in add_items] == [ADD, "no code"]
    # Ids still pair each verdict with its sample.
    assert [item.id for item in verifier.items] == [f"{r.request_id}/s{j}" for r in requests for j in range(2)]


def test_mixed_math_and_code_dataset_through_a_real_verifier(tmp_path: Path) -> None:
    records = [
        {"prompt": "sqrt 12 simplified", "answer": r"\sqrt{12}"},
        {"prompt": "double the input", "task": "code", "answer": STDIO_TESTS},
        {"prompt": "add two numbers", "task": "code", "answer": json.dumps(CALL_TESTS)},  # tests as a JSON string
        {"prompt": "half", "answer": "0.5", "answer_format": "boxed"},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, stats = read_rows(data)
    assert [r.task for r in rows] == ["math", "code", "code", "math"] and stats.num_malformed == 0

    texts = {
        0: r"so the answer is $\boxed{2\sqrt{3}}$",  # equal only symbolically: math-verify decides
        1: r"$\boxed{3\sqrt{2}}$",
        100: DOUBLE,  # passes both cases
        101: TRIPLE,  # passes only 0 -> 0
        200: ADD,
        201: "```python\ndef add(a, b):\n    return a - b\n```",  # -1 and -2: passes neither
        300: r"\boxed{\frac{1}{2}}",
        301: "no answer at all",
    }
    # fraction scoring runs every test case, so a partial pass shows up as a partial reward.
    config = {"run": "pytest", "code": {"test_timeout_s": 5.0, "scoring": "fraction"}}
    verifier = start_verifier(config, tmp_path / "logs", workers=1)
    try:
        async def score() -> list:
            async with VerifierClient(verifier.url, timeout_s=120.0) as client:
                kept, requests = _requests(rows, n=2)
                return await generate_and_verify(kept, requests, ScriptedReplicas(), client,
                                                 lambda ids: texts[ids[0]], PhaseTimes())

        groups = asyncio.run(score())
    finally:
        verifier.stop()

    sqrt, double, add, half = (g.verdicts for g in groups)
    # Code rows ran their tests in the sandbox: tripling passes only the 0 -> 0 case, half the reward.
    assert [(v.task, v.method, v.tests_passed, v.tests_total) for v in double] == [("code", "sandbox", 2, 2),
                                                                                  ("code", "sandbox", 1, 2)]
    assert [(v.correct, v.reward) for v in double] == [(True, 1.0), (False, 0.5)]
    assert [(v.task, v.method, v.tests_passed, v.tests_total) for v in add] == [("code", "sandbox", 2, 2),
                                                                               ("code", "sandbox", 0, 2)]
    assert [(v.correct, v.reward) for v in add] == [(True, 1.0), (False, 0.0)]
    # Math rows were checked against their ground truth, the symbolic case by math-verify.
    assert [(v.task, v.method, v.correct, v.reward) for v in sqrt] == [("math", "math_verify", True, 1.0),
                                                                       ("math", "math_verify", False, 0.0)]
    assert [(v.task, v.correct, v.reason) for v in half] == [("math", True, Reason.ok),
                                                             ("math", False, Reason.no_answer)]
    assert all(v.tests_total is None for v in sqrt + half)
