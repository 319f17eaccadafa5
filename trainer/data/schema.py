"""One prompt row: what the controller samples from and the verifier scores against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from forkrl.rollout.verifier.schemas import CallTests, StdioTests

TaskKind = Literal["math", "code"]
AnswerFormat = Literal["boxed", "dapo"]
CodeTests = Annotated[StdioTests | CallTests, Field(discriminator="style")]
CODE_TESTS: TypeAdapter[StdioTests | CallTests] = TypeAdapter(CodeTests)


@dataclass(frozen=True)
class PromptRow:
    """prompt: the problem text (untemplated unless `pre_templated`); answer: ground truth (math) or a JSON
    test specification (code: the verifier's `StdioTests` or `CallTests`, see `code_tests`); task: which
    verifier scores it (math: the final answer against `answer`; code: the program run against the tests);
    answer_format: how a math row's final answer is extracted from a response (`boxed`: last \\boxed{};
    `dapo`: last `Answer:` line); source/index: provenance.
    """

    prompt: str
    answer: str
    task: TaskKind = "math"
    answer_format: AnswerFormat = "boxed"
    pre_templated: bool = False
    source: str = ""
    index: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def code_tests(answer: str) -> StdioTests | CallTests:
    """The tests of a code row, parsed from its `answer` (JSON); raises pydantic's ValidationError."""
    return CODE_TESTS.validate_json(answer)
