"""One item in, one result out; plus the entry points the pool runs inside worker processes."""

from __future__ import annotations

import atexit
import functools
import os
import time
from dataclasses import dataclass

from forkrl.rollout.verifier.code_reward import score_code
from forkrl.rollout.verifier.config import VerifierConfig
from forkrl.rollout.verifier.extract import extract_program
from forkrl.rollout.verifier.isolation import LIBRARY_UID_OFFSET, derive_uid_base
from forkrl.rollout.verifier.math_reward import score_math
from forkrl.rollout.verifier.sandbox import Sandbox, SandboxError
from forkrl.rollout.verifier.schemas import CodeItem, MathItem, Reason, RewardValues, VerifyResult

# The worker answers on its own a little before the pool's hard deadline kills it.
_MARGIN_FRACTION, _MARGIN_MAX_S = 0.1, 0.5


@dataclass(frozen=True)
class ItemOutcome:
    result: VerifyResult
    sandbox_kills: int = 0


def item_timeout(item: MathItem | CodeItem, config: VerifierConfig) -> float:
    """The item's time budget: its own `timeout_s`, else its task's default."""
    if item.timeout_s is not None:
        return item.timeout_s
    return config.math.timeout_s if isinstance(item, MathItem) else config.code.timeout_s


def rewards_for(item: MathItem | CodeItem, config: VerifierConfig) -> RewardValues:
    if item.rewards is not None:
        return item.rewards
    if isinstance(item, MathItem):
        return config.math.rewards_dapo if item.extraction == "dapo" else config.math.rewards_boxed
    return config.code.rewards


def code_reward(passed: int, total: int, scoring: str, reason: Reason, rewards: RewardValues) -> float:
    """All-or-nothing, or `incorrect + (correct - incorrect) * passed / total`; a violation gets `incorrect`."""
    if reason == Reason.sandbox_violation or total == 0:
        return rewards.incorrect
    if scoring == "fraction":
        return rewards.incorrect + (rewards.correct - rewards.incorrect) * passed / total
    return rewards.correct if passed == total else rewards.incorrect


def error_result(item: MathItem | CodeItem, config: VerifierConfig, reason: Reason, detail: str) -> VerifyResult:
    """A result for an item the verifier could not score (timeout at the pool, worker crash)."""
    return VerifyResult(
        id=item.id,
        task=item.task,
        reward=rewards_for(item, config).incorrect,
        correct=False,
        reason=reason,
        latency_s=0.0,
        method="pool",
        detail=detail[:500],
    )


@functools.cache
def _library_sandbox(config_json: str) -> Sandbox:
    config = VerifierConfig.model_validate_json(config_json)
    base = config.sandbox.uid_base or derive_uid_base(os.getpid())
    sandbox = Sandbox(config.sandbox, base + LIBRARY_UID_OFFSET)
    atexit.register(sandbox.close)  # its cgroup, if it got one
    return sandbox


def verify_item(item: MathItem | CodeItem, config: VerifierConfig, sandbox: Sandbox | None = None) -> ItemOutcome:
    """Score one item in this process (math needs the main thread: math-verify uses SIGALRM)."""
    started = time.monotonic()
    budget = item_timeout(item, config)
    deadline = started + budget - min(_MARGIN_MAX_S, _MARGIN_FRACTION * budget)
    rewards = rewards_for(item, config)
    if isinstance(item, MathItem):
        score = score_math(item.response, item.ground_truth, item.extraction, config.math, deadline)
        result = VerifyResult(
            id=item.id,
            task="math",
            reward=rewards.correct if score.correct else rewards.incorrect,
            correct=score.correct,
            reason=score.reason,
            latency_s=time.monotonic() - started,
            method=score.method,
            extracted=score.extracted,
            detail=score.detail,
        )
        return ItemOutcome(result)
    total = len(item.tests.cases)
    program = extract_program(item.response, item.extraction, strip_think=config.code.strip_thinking)
    if program is None:
        result = VerifyResult(
            id=item.id,
            task="code",
            reward=rewards.incorrect,
            correct=False,
            reason=Reason.no_answer,
            latency_s=time.monotonic() - started,
            method="extraction",
            tests_passed=0,
            tests_total=total,
            detail=f"no program found ({item.extraction} extraction)",
        )
        return ItemOutcome(result)
    sandbox = sandbox or _library_sandbox(config.model_dump_json())
    kills_before = sandbox.kills
    scoring = item.scoring or config.code.scoring
    try:
        score = score_code(program, item.tests, config.code, sandbox, scoring, deadline)
    except (SandboxError, OSError) as error:
        result = error_result(item, config, Reason.internal_error, f"sandbox error: {error}")
        return ItemOutcome(result.model_copy(update={"latency_s": time.monotonic() - started}))
    result = VerifyResult(
        id=item.id,
        task="code",
        reward=code_reward(score.passed, score.total, scoring, score.reason, rewards),
        correct=score.reason == Reason.ok,
        reason=score.reason,
        latency_s=time.monotonic() - started,
        method="sandbox",
        tests_passed=score.passed,
        tests_total=score.total,
        detail=score.detail,
    )
    return ItemOutcome(result, sandbox.kills - kills_before)


@dataclass
class _WorkerContext:
    config: VerifierConfig
    sandbox: Sandbox


_CONTEXT: _WorkerContext | None = None


def init_worker(slot: int, setup: tuple[VerifierConfig, int]) -> dict[str, object]:
    """Pool initializer: this slot's sandbox (uid `uid_base + slot`) and a warmed-up math-verify."""
    global _CONTEXT
    config, uid_base = setup
    sandbox = Sandbox(config.sandbox, uid_base + slot, subreaper=True)
    _CONTEXT = _WorkerContext(config, sandbox)
    warm_up = config.math.model_copy(update={"fast_path": False})
    score_math("so \\boxed{\\dfrac{1}{2}}", "0.5", "boxed", warm_up)
    return {"isolation": sandbox.isolation.as_dict()}


def score_in_worker(item: MathItem | CodeItem) -> ItemOutcome:
    """The pool's task function (runs in a worker's main thread)."""
    if _CONTEXT is None:
        raise RuntimeError("score_in_worker called outside an initialised verifier worker")
    return verify_item(item, _CONTEXT.config, _CONTEXT.sandbox)
