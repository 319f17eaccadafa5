"""Code correctness: a program run against stdio or call-based test cases in the sandbox.

- stdio (LiveCodeBench style): one fresh sandboxed process per case, the case's input on stdin; the
  output matches when, line by line and token by token (surrounding whitespace ignored), every token
  is equal or both are numbers that are equal (within `float_tolerance` when it is set).
- call: one sandboxed process calls `fn_name` (or `Solution().fn_name`) for every case; return values
  come back over the launcher's channel and are compared here with the JSON-normalised expected value.
  Expected values never enter the sandbox.

The item's reason is that of its first failing case, except that a sandbox violation anywhere wins.
A case that cannot pass for the same cause on every input (compile error, missing function,
violation) or that burns a whole budget (timeout, memory limit) stops the run; all-or-nothing
scoring also stops at the first failure. Cases left unrun count as failed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from forkrl.rollout.verifier.config import CodeRewardConfig
from forkrl.rollout.verifier.outcome import Outcome, SandboxRun
from forkrl.rollout.verifier.sandbox import Sandbox, SandboxLimits
from forkrl.rollout.verifier.schemas import CallTests, Reason, StdioTests

_OUTCOME_REASON = {
    Outcome.timeout: Reason.timeout,
    Outcome.memory_limit: Reason.memory_limit,
    Outcome.output_limit: Reason.output_limit,
    Outcome.sandbox_violation: Reason.sandbox_violation,
    Outcome.runtime_error: Reason.runtime_error,
    Outcome.compile_error: Reason.runtime_error,
    Outcome.missing_function: Reason.runtime_error,
}
_STOPPING = {Outcome.timeout, Outcome.memory_limit, Outcome.sandbox_violation}
_SAME_FOR_ALL = {Outcome.compile_error, Outcome.missing_function}
_MIN_TEST_BUDGET_S = 0.05


@dataclass(frozen=True)
class CodeScore:
    passed: int
    total: int
    reason: Reason
    detail: str | None

    @property
    def all_passed(self) -> bool:
        return self.passed == self.total


def _tokens_equal(actual: str, expected: str, tolerance: float) -> bool:
    if actual == expected:
        return True
    try:
        a, b = Decimal(actual), Decimal(expected)
    except InvalidOperation:
        return False
    if not (a.is_finite() and b.is_finite()):
        return False
    return abs(a - b) <= Decimal(str(tolerance)) if tolerance else a == b


def stdout_matches(actual: str, expected: str, tolerance: float = 0.0) -> bool:
    """Judge-style comparison of program output with the expected output."""
    actual_lines = [line.strip() for line in actual.strip().splitlines()]
    expected_lines = [line.strip() for line in expected.strip().splitlines()]
    if actual_lines == expected_lines:
        return True
    if len(actual_lines) != len(expected_lines):
        return False
    for actual_line, expected_line in zip(actual_lines, expected_lines, strict=True):
        actual_tokens, expected_tokens = actual_line.split(), expected_line.split()
        if len(actual_tokens) != len(expected_tokens):
            return False
        if not all(_tokens_equal(a, e, tolerance) for a, e in zip(actual_tokens, expected_tokens, strict=True)):
            return False
    return True


def values_match(actual: Any, expected: Any, tolerance: float = 0.0) -> bool:
    """Structural equality of JSON values; bools are not numbers, ints and floats compare by value."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        if isinstance(actual, float) or isinstance(expected, float):
            if math.isnan(actual) or math.isnan(expected):
                return False
            return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=tolerance)
        return actual == expected
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            values_match(a, e, tolerance) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(values_match(actual[k], expected[k], tolerance) for k in actual)
    return type(actual) is type(expected) and actual == expected


def _shorten(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class _Tally:
    """Passed count and the item's reason (first failure; a violation anywhere wins)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.passed = 0
        self.reason: Reason | None = None
        self.detail: str | None = None

    def fail(self, reason: Reason, detail: str | None) -> None:
        overrides = reason == Reason.sandbox_violation and self.reason != Reason.sandbox_violation
        if self.reason is None or overrides:
            self.reason, self.detail = reason, detail

    def score(self) -> CodeScore:
        if self.passed == self.total:
            return CodeScore(self.passed, self.total, Reason.ok, None)
        return CodeScore(self.passed, self.total, self.reason or Reason.wrong_answer, self.detail)


def _run_failure(run: SandboxRun, case_index: int) -> tuple[Reason, str]:
    return _OUTCOME_REASON[run.outcome], f"test {case_index}: {run.outcome.value}: {run.detail}"


def _score_stdio(
    program: str,
    tests: StdioTests,
    config: CodeRewardConfig,
    sandbox: Sandbox,
    stop_on_failure: bool,
    deadline: float,
) -> CodeScore:
    tally = _Tally(len(tests.cases))
    for index, case in enumerate(tests.cases):
        remaining = deadline - time.monotonic()
        if remaining < _MIN_TEST_BUDGET_S:
            tally.fail(Reason.timeout, f"item time budget exhausted before test {index}")
            break
        limits = SandboxLimits.for_code(config, min(config.test_timeout_s, remaining))
        run = sandbox.run(program, mode="stdio", stdin=case.input.encode("utf-8", "surrogatepass"), limits=limits)
        if run.outcome == Outcome.exited:
            actual = run.stdout.decode("utf-8", "replace")
            if stdout_matches(actual, case.output, config.float_tolerance):
                tally.passed += 1
                continue
            tally.fail(Reason.wrong_answer, f"test {index}: expected {_shorten(case.output)}, got {_shorten(actual)}")
        else:
            tally.fail(*_run_failure(run, index))
            if run.outcome in _STOPPING or run.outcome in _SAME_FOR_ALL:
                break
        if stop_on_failure:
            break
    return tally.score()


def _score_call(
    program: str, tests: CallTests, config: CodeRewardConfig, sandbox: Sandbox, deadline: float
) -> CodeScore:
    tally = _Tally(len(tests.cases))
    remaining = deadline - time.monotonic()
    if remaining < _MIN_TEST_BUDGET_S:
        tally.fail(Reason.timeout, "item time budget exhausted before the first test")
        return tally.score()
    wall = min(config.test_timeout_s * len(tests.cases), remaining)
    stdin = json.dumps([case.args for case in tests.cases]).encode("utf-8", "surrogatepass")
    run = sandbox.run(
        program, mode="call", stdin=stdin, limits=SandboxLimits.for_code(config, wall), fn_name=tests.fn_name
    )
    returned = {record["i"]: record for record in run.records if isinstance(record.get("i"), int)}
    for index, case in enumerate(tests.cases):
        record = returned.get(index)
        if record is None:
            if run.outcome == Outcome.exited:
                tally.fail(Reason.runtime_error, f"test {index}: no result reported")
            else:
                tally.fail(*_run_failure(run, index))
        elif not record.get("ok"):
            error = str(record.get("error", ""))
            reason = Reason.memory_limit if error.startswith("MemoryError") else Reason.runtime_error
            tally.fail(reason, f"test {index}: {error}")
        elif values_match(record.get("value"), json.loads(json.dumps(case.expected)), config.float_tolerance):
            tally.passed += 1
        else:
            got = json.dumps(record.get("value"))
            tally.fail(
                Reason.wrong_answer,
                f"test {index}: expected {_shorten(json.dumps(case.expected))}, got {_shorten(got)}",
            )
    if run.outcome == Outcome.sandbox_violation:
        tally.fail(Reason.sandbox_violation, f"{run.outcome.value}: {run.detail}")
    return tally.score()


def score_code(
    program: str,
    tests: StdioTests | CallTests,
    config: CodeRewardConfig,
    sandbox: Sandbox,
    scoring: str,
    deadline: float,
) -> CodeScore:
    """Run `program` against `tests` within the time.monotonic() `deadline`."""
    if isinstance(tests, StdioTests):
        return _score_stdio(program, tests, config, sandbox, scoring == "all_or_nothing", deadline)
    return _score_call(program, tests, config, sandbox, deadline)
