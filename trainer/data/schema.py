"""One prompt row: what the controller samples from and the verifier scores against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TaskKind = Literal["math", "code"]
AnswerFormat = Literal["boxed", "dapo"]


@dataclass(frozen=True)
class PromptRow:
    """prompt: the problem text (untemplated unless `pre_templated`); answer: ground truth (math) or a JSON
    test specification (code); task: which verifier scores it; answer_format: how the final answer is
    extracted from a response (`boxed`: last \\boxed{}; `dapo`: last `Answer:` line); source/index: provenance.
    """

    prompt: str
    answer: str
    task: TaskKind = "math"
    answer_format: AnswerFormat = "boxed"
    pre_templated: bool = False
    source: str = ""
    index: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
