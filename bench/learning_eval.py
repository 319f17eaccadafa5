"""One evaluator for every model `bench/learning.py` compares: the same held-out problems, the same sampling
(seeded per problem, so two models see the same random draws), the same scoring (forkrl's math verifier on
the `\\boxed{}` answer), in this process on forkrl's HF rollout engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
from forkrl.rollout.types import GenerateRequest, SamplingParams
from forkrl.rollout.verifier.config import MathRewardConfig
from forkrl.rollout.verifier.math_reward import score_math
from forkrl.trainer.controller.rollout_phase import request_seed
from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.evaluation import pass_at_k

EVAL_SEED = 1234  # the draws' seed: every model, arm and seed of a bench run is scored on the same draws
REWARDS = MathRewardConfig()  # the verifier's defaults, as the forkrl arm's verifier service scores


@dataclass(frozen=True)
class EvalSettings:
    samples_per_problem: int
    temperature: float
    top_p: float
    max_response_tokens: int
    pass_k: tuple[int, ...]


@dataclass(frozen=True)
class HeldoutScore:
    """avg@k (mean per-sample accuracy) and pass@k over the held-out set, with per-problem accuracies for
    paired comparisons; `any_format` counts answers right in either the boxed or the `Answer:` style."""

    model: str
    problems: int
    avg_at_k: float
    pass_at_k: dict[int, float]
    per_problem: tuple[float, ...]
    any_format: float
    seconds: float


def reward_of(response: str, answer: str) -> float:
    """The reward forkrl's verifier gives a math response with a boxed ground truth (1 correct, 0 not)."""
    verdict = score_math(response, answer, "boxed", REWARDS)
    return REWARDS.rewards_boxed.correct if verdict.correct else REWARDS.rewards_boxed.incorrect


def evaluate(model_dir: str | Path, rows: Sequence[PromptRow], render: Callable[[PromptRow], list[int]],
             decode: Callable[[list[int]], str], settings: EvalSettings, batch_problems: int = 64,
             log: Callable[[str], Any] = print) -> HeldoutScore:
    """Score the model in `model_dir` on `rows`: `samples_per_problem` draws per problem."""
    start = time.monotonic()
    engine = HFEngine.from_pretrained(model_dir, HFEngineConfig(max_batch_size=512, num_threads=2))
    sampling = SamplingParams(temperature=settings.temperature, top_p=settings.top_p)
    correct: list[list[bool]] = []
    any_format = 0
    for first in range(0, len(rows), batch_problems):
        chunk = rows[first:first + batch_problems]
        requests = [GenerateRequest(request_id=f"eval/{first + i}", prompt_token_ids=render(row),
                                    n=settings.samples_per_problem, max_new_tokens=settings.max_response_tokens,
                                    seed=request_seed(EVAL_SEED, "heldout", first + i), sampling=sampling)
                    for i, row in enumerate(chunk)]
        for row, result in zip(chunk, engine.generate(requests), strict=True):
            texts = [decode(sample.token_ids) for sample in result.samples]
            boxed = [score_math(text, row.answer, "boxed", REWARDS).correct for text in texts]
            correct.append(boxed)
            any_format += sum(ok or score_math(text, row.answer, "dapo", REWARDS).correct
                              for ok, text in zip(boxed, texts, strict=True))
        log(f"  eval {Path(model_dir).name}: {len(correct)}/{len(rows)} problems")
    n = settings.samples_per_problem
    per_problem = tuple(sum(samples) / n for samples in correct)
    return HeldoutScore(
        model=str(model_dir),
        problems=len(rows),
        avg_at_k=sum(per_problem) / len(per_problem),
        pass_at_k={k: sum(pass_at_k(n, sum(s), k) for s in correct) / len(correct) for k in settings.pass_k if k <= n},
        per_problem=per_problem,
        any_format=any_format / (n * len(rows)),
        seconds=time.monotonic() - start,
    )
