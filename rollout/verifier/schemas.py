"""Wire types of the verifier service: items in, results out (pydantic, `extra="forbid"`).

Every item carries a caller-chosen `id` that is echoed in its result, so the training controller can
check that no sample was scored twice or lost across retries.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

MAX_ITEMS_PER_REQUEST = 8192
MAX_RESPONSE_CHARS = 1_000_000
MAX_TEST_CASES = 1000
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Reason(StrEnum):
    """Machine-readable outcome of one item (`ok` is the only one with `correct = True`)."""

    ok = "ok"
    wrong_answer = "wrong_answer"
    no_answer = "no_answer"
    parse_error = "parse_error"
    timeout = "timeout"
    runtime_error = "runtime_error"
    memory_limit = "memory_limit"
    output_limit = "output_limit"
    sandbox_violation = "sandbox_violation"
    # Not the model's fault: the verifier itself failed on this item (worker crash, verifier bug).
    internal_error = "internal_error"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RewardValues(_Strict):
    """Reward given for a correct and for an incorrect item, e.g. {1, 0} (Archer) or {+1, -1} (DAPO)."""

    # Strict numbers (an integer is a number, `true` is not): the schema promises a number, and lax coercion
    # would turn a caller's `{"correct": false}` into a reward of 0 instead of refusing it.
    correct: float = Field(1.0, description="Reward when the item is correct.", ge=-1e6, le=1e6, strict=True)
    incorrect: float = Field(0.0, description="Reward for any other outcome.", ge=-1e6, le=1e6, strict=True)

    @field_validator("correct", "incorrect")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class _ItemBase(_Strict):
    id: str = Field(..., min_length=1, max_length=256, description="Caller-chosen id, echoed in the result.")
    response: str = Field(..., max_length=MAX_RESPONSE_CHARS, description="The model's full response text.")
    rewards: RewardValues | None = Field(None, description="Per-item reward values; task default if absent.")
    timeout_s: float | None = Field(
        None, gt=0, le=600, strict=True, description="Per-item time budget in seconds; task default if absent."
    )


class MathItem(_ItemBase):
    """A chain of thought whose final answer is checked against `ground_truth`."""

    task: Literal["math"] = Field(description="Task discriminator.")
    ground_truth: str = Field(..., min_length=1, max_length=10_000, description="Reference answer.")
    extraction: Literal["boxed", "dapo"] = Field(
        "boxed",
        description="`boxed`: last \\boxed{...}; `dapo`: last `Answer: ...` line (DAPO prompt, rewards +1/-1).",
    )


class StdioCase(_Strict):
    input: str = Field(..., max_length=10_000_000, description="Bytes fed to the program's stdin (UTF-8).")
    output: str = Field(..., max_length=10_000_000, description="Expected stdout.")


class StdioTests(_Strict):
    """LiveCodeBench-style tests: the program reads stdin and prints to stdout."""

    style: Literal["stdio"] = Field(description="Test-style discriminator.")
    cases: list[StdioCase] = Field(..., min_length=1, max_length=MAX_TEST_CASES, description="Test cases.")


class CallCase(_Strict):
    args: list[JsonValue] = Field(..., max_length=64, description="Positional arguments (JSON values).")
    expected: JsonValue = Field(..., description="Expected return value (compared after a JSON round trip).")


class CallTests(_Strict):
    """Call-based tests: a named function (or `Solution().<name>`) is called with each case's arguments."""

    style: Literal["call"] = Field(description="Test-style discriminator.")
    fn_name: str = Field(
        ..., max_length=128, pattern=_IDENTIFIER, description="Name of the function to call (ASCII identifier)."
    )
    cases: list[CallCase] = Field(..., min_length=1, max_length=MAX_TEST_CASES, description="Test cases.")


class CodeItem(_ItemBase):
    """A generated program run against test cases in the sandbox."""

    task: Literal["code"] = Field(description="Task discriminator.")
    tests: Annotated[StdioTests | CallTests, Field(discriminator="style")] = Field(
        ..., description="The test cases, stdio or call-based."
    )
    extraction: Literal["fenced", "raw"] = Field(
        "fenced", description="`fenced`: last ``` code block of the response; `raw`: the response is the program."
    )
    scoring: Literal["fraction", "all_or_nothing"] | None = Field(
        None, description="Reward = fraction of tests passed, or all-or-nothing; task default if absent."
    )


VerifyItem = Annotated[MathItem | CodeItem, Field(discriminator="task")]


class VerifyRequest(_Strict):
    # Results are positional and echo each id; uniqueness of ids is the caller's contract (the client
    # checks it), not a request rule, so that everything the schema allows is accepted.
    items: list[VerifyItem] = Field(
        ..., min_length=1, max_length=MAX_ITEMS_PER_REQUEST, description="Items, scored and returned in order."
    )


class VerifyResult(_Strict):
    id: str = Field(..., description="The item's id.")
    task: Literal["math", "code"] = Field(..., description="The item's task.")
    reward: float = Field(..., description="Reward value (from the task's or item's reward values).")
    correct: bool = Field(..., description="True only when reason is `ok`.")
    reason: Reason = Field(..., description="Why the item got its reward.")
    latency_s: float = Field(..., ge=0, description="Seconds spent scoring the item (excluding queueing).")
    method: str | None = Field(None, description="How it was decided: fast_path, math_verify, sandbox, ...")
    extracted: str | None = Field(None, description="The extracted answer (math), truncated to 200 chars.")
    tests_passed: int | None = Field(None, ge=0, description="Code: number of passed test cases.")
    tests_total: int | None = Field(None, ge=0, description="Code: number of test cases.")
    detail: str | None = Field(None, description="Short human-readable detail (error line, mismatch).")


class VerifyResponse(_Strict):
    results: list[VerifyResult] = Field(..., description="One result per item, in request order.")
