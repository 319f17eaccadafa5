"""avg@k of a checkpoint over a grid of dual temperatures (the 80/20 paper's Table 3: decoding with t_high on
high-entropy tokens and t_low on the rest; its finding is that lowering t_high hurts more than lowering t_low).

Every cell samples the same problems with the same seeds (common random numbers), so differences between
cells are paired; each cell's avg@k and 95% interval over problems are trainer/evaluation.py's `score_dataset`.
Math rows are scored in this process with the verifier's own `score_math` (extraction as the row says).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forkrl.trainer.data.schema import PromptRow
from forkrl.trainer.evaluation import score_dataset


@dataclass(frozen=True)
class GridCell:
    t_high: float
    t_low: float
    avg_at_k: float
    ci95: float
    """Half-width of the 95% interval over problems."""
    samples: int
    per_problem: tuple[float, ...] = ()
    """Each problem's share of correct samples, in the data set's order (cells are paired by problem)."""


def dual_temperature_grid(model_path: str, tokenizer: Any, rows: Sequence[PromptRow],
                          render: Callable[[PromptRow], str], t_highs: Sequence[float], t_lows: Sequence[float],
                          samples: int, max_new_tokens: int, threshold: float, seed: int,
                          progress: Callable[[str], None] = lambda _: None) -> list[GridCell]:
    """`tokenizer`: the checkpoint's (prompts are encoded and responses decoded with it)."""
    from forkrl.rollout.hf_engine import HFEngine, HFEngineConfig
    from forkrl.rollout.types import GenerateRequest
    from forkrl.rollout.verifier.config import MathRewardConfig
    from forkrl.rollout.verifier.math_reward import score_math

    if any(row.task != "math" for row in rows):
        raise SystemExit("forkrl analyze dual-temperature: only math rows can be scored in process")
    engine = HFEngine.from_pretrained(model_path, HFEngineConfig(seed=seed))
    prompts = [tokenizer(render(row)).input_ids for row in rows]
    config = MathRewardConfig()
    cells = []
    try:
        for t_high in t_highs:
            for t_low in t_lows:
                sampling: dict[str, Any] = {"dual_temperature": {"t_high": t_high, "t_low": t_low,
                                                                 "threshold": threshold}}
                requests = [GenerateRequest(request_id=str(i), prompt_token_ids=ids, n=samples,
                                            max_new_tokens=max_new_tokens, seed=seed + i, sampling=sampling)
                            for i, ids in enumerate(prompts)]
                correctness = []
                for row, result in zip(rows, engine.generate(requests), strict=True):
                    texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in result.samples]
                    correctness.append([score_math(text, row.answer, row.answer_format, config).correct
                                        for text in texts])
                scores = score_dataset(f"t_high={t_high:g},t_low={t_low:g}", correctness)
                half = (scores.ci95[1] - scores.ci95[0]) / 2
                cells.append(GridCell(t_high, t_low, scores.avg_at_k, half, samples * len(rows),
                                      tuple(sum(c) / len(c) for c in correctness)))
                progress(f"t_high {t_high:g} t_low {t_low:g}: avg@{samples} {scores.avg_at_k:.3f} +- {half:.3f}")
    finally:
        engine.close()
    return cells
