"""Math correctness: extraction -> fast path -> math-verify (parse + verify).

Reasons:
- `no_answer`: the extraction mode found no (non-empty) answer.
- `ok` / `wrong_answer`: the fast path or math-verify decided.
- `parse_error`: math-verify could not turn the extracted answer (or the ground truth) into an
  expression (it kept only the raw string) and the strings differ.
- `timeout`: a math-verify parse/compare hit its signal timeout, or the item's budget ran out.

math-verify times itself out with SIGALRM, so the symbolic part must run in a process's main thread
(the service runs it in worker processes, never in threads).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from itertools import product
from typing import Any

from forkrl.rollout.verifier.config import MathRewardConfig
from forkrl.rollout.verifier.extract import extract_answer
from forkrl.rollout.verifier.normalize import fast_path_equal
from forkrl.rollout.verifier.schemas import Reason


class MathTimeout(Exception):
    """math-verify ran out of time (its own signal timeout or the item budget)."""


@dataclass(frozen=True)
class MathScore:
    correct: bool
    reason: Reason
    method: str  # "extraction", "fast_path", "math_verify" or "exact" (symbolic off)
    extracted: str | None
    detail: str | None = None


def _math_verify() -> Any:
    # Imported lazily: it pulls in sympy and antlr (about a second), which only math workers need.
    import math_verify

    return math_verify


def _require_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "math-verify uses SIGALRM timeouts and must run in a main thread; use VerifierPool from threads"
        )


def _parse(text: str, timeout_s: int) -> list[Any]:
    mv = _math_verify()
    from math_verify.errors import TimeoutException

    configs = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    try:
        return list(mv.parse(text, extraction_config=configs, parsing_timeout=timeout_s, raise_on_error=True))
    except TimeoutException as error:
        raise MathTimeout("math-verify parse timed out") from error
    except Exception:
        return []


def parse_answer(answer: str, timeout_s: int = 3) -> list[Any]:
    """math-verify's parse of an isolated final answer (sympy objects and/or its string form).

    The answer is wrapped in `$...$` so math-verify treats it as one LaTeX expression; plain-text
    forms (`sqrt(2)`) fall back to its expression parser. [] when nothing parses.
    """
    _require_main_thread()
    text = answer.strip().strip("$").strip()
    parsed = _parse(f"${text}$", timeout_s)
    return parsed if parsed else _parse(text, timeout_s)


@functools.lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str, timeout_s: int) -> tuple[Any, ...]:
    # A prompt's ground truth is scored once per sampled response (16x per group): parse it once.
    return tuple(parse_answer(gold, timeout_s))


def symbolic_equal(gold: list[Any] | tuple[Any, ...], predicted: list[Any], timeout_s: int = 3) -> bool:
    """math-verify's `verify` over all (gold, predicted) pairs; MathTimeout when a pair timed out and
    none matched. Errors other than timeouts count as "not equal" for that pair only."""
    _require_main_thread()
    mv = _math_verify()
    from math_verify.errors import TimeoutException

    timed_out = False
    for gold_value, pred_value in product(gold, predicted):
        try:
            if mv.verify(gold_value, pred_value, timeout_seconds=timeout_s, raise_on_error=True):
                return True
        except TimeoutException:
            timed_out = True
        except Exception:
            continue
    if timed_out:
        raise MathTimeout("math-verify comparison timed out")
    return False


def _truncate(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def score_math(
    response: str,
    ground_truth: str,
    extraction: str,
    config: MathRewardConfig,
    deadline: float | None = None,
) -> MathScore:
    """Correctness of `response` against `ground_truth`; `deadline` is a time.monotonic() budget."""
    answer = extract_answer(
        response, extraction, strip_think=config.strip_thinking, dapo_tail_chars=config.dapo_tail_chars
    )
    if answer is None:
        return MathScore(False, Reason.no_answer, "extraction", None, f"no {extraction} answer found")
    shown = _truncate(answer)
    if config.fast_path or not config.symbolic:
        verdict = fast_path_equal(answer, ground_truth)
        if verdict is not None:
            reason = Reason.ok if verdict else Reason.wrong_answer
            return MathScore(verdict, reason, "fast_path" if config.symbolic else "exact", shown)
    if not config.symbolic:
        return MathScore(False, Reason.wrong_answer, "exact", shown)

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def within_budget(limit_s: int) -> int:
        # math-verify's alarms take whole seconds; never arm one past the item's own budget.
        if deadline is None:
            return limit_s
        return max(1, min(limit_s, int(deadline - time.monotonic())))

    try:
        if out_of_time():
            raise MathTimeout("item budget exhausted before math-verify")
        gold = _parse_gold_cached(ground_truth, within_budget(config.parse_timeout_s))
        if not gold:
            return MathScore(False, Reason.parse_error, "math_verify", shown, "ground truth did not parse")
        predicted = parse_answer(answer, within_budget(config.parse_timeout_s))
        if not predicted:
            return MathScore(False, Reason.parse_error, "math_verify", shown, "answer did not parse")
        if out_of_time():
            raise MathTimeout("item budget exhausted before comparison")
        equal = symbolic_equal(gold, predicted, within_budget(config.verify_timeout_s))
    except MathTimeout as error:
        return MathScore(False, Reason.timeout, "math_verify", shown, str(error))
    if equal:
        return MathScore(True, Reason.ok, "math_verify", shown)
    # math-verify falls back to the raw string when it cannot build an expression.
    if all(isinstance(value, str) for value in predicted):
        return MathScore(False, Reason.parse_error, "math_verify", shown, "answer did not parse")
    if all(isinstance(value, str) for value in gold):
        return MathScore(False, Reason.parse_error, "math_verify", shown, "ground truth did not parse")
    return MathScore(False, Reason.wrong_answer, "math_verify", shown)
