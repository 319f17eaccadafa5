"""A built-in task for the local mode: multi-step integer arithmetic with worked solutions.

`3+4*2-5` has the worked solution `4*2=8,3+8=11,11-5=6.\\boxed{6}`: multiplications first, then left to
right, one step per operator. Problems and solutions are deterministic functions of the seed, so the
training, cold-start and held-out sets are reproducible and disjoint by seed.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forkrl.trainer.data.schema import PromptRow


class ArithmeticSpec(BaseModel):
    """Shape of the generated problems."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_ops: int = Field(2, ge=1, le=16, description="Fewest operators in a problem.")
    max_ops: int = Field(3, ge=1, le=16, description="Most operators in a problem.")
    max_operand: int = Field(9, ge=1, le=10_000, description="Operands are drawn from [0, max_operand].")
    ops: str = Field("+-*", pattern=r"^[+*-]+$", description="Operator characters used (from + - *).")
    boxed_fraction: float = Field(
        1.0, ge=0.0, le=1.0, description="Fraction of worked solutions ending in \\boxed{answer}; the rest end "
        "with `Answer: answer`, a style the boxed verifier does not reward (a cold start with mixed habits)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ArithmeticSpec:
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops={self.min_ops} exceeds max_ops={self.max_ops}")
        return self


def worked_solution(tokens: list[str]) -> tuple[list[str], int]:
    """Reduce [n, op, n, op, ...] one operator at a time: every '*' first, then left to right.

    Returns (steps like '4*2=8', final value).
    """
    values = [int(t) for t in tokens[::2]]
    ops = list(tokens[1::2])
    steps = []
    while ops:
        i = ops.index("*") if "*" in ops else 0
        a, b, op = values[i], values[i + 1], ops[i]
        result = a * b if op == "*" else a + b if op == "+" else a - b
        steps.append(f"{a}{op}{b}={result}")
        values[i : i + 2] = [result]
        del ops[i]
    return steps, values[0]


def make_problem(rng: random.Random, spec: ArithmeticSpec) -> tuple[str, str, int]:
    """One random problem: (expression, worked solution ending in \\boxed{answer} or, for a
    1 - boxed_fraction share, in `Answer: answer`, answer)."""
    num_ops = rng.randint(spec.min_ops, spec.max_ops)
    tokens = [str(rng.randint(0, spec.max_operand))]
    for _ in range(num_ops):
        tokens += [rng.choice(spec.ops), str(rng.randint(0, spec.max_operand))]
    steps, answer = worked_solution(tokens)
    ending = f".\\boxed{{{answer}}}" if rng.random() < spec.boxed_fraction else f". Answer: {answer}"
    return "".join(tokens), ",".join(steps) + ending, answer


def arithmetic_rows(count: int, seed: int, spec: ArithmeticSpec | None = None,
                    exclude: set[str] | None = None) -> list[PromptRow]:
    """`count` distinct problems as PromptRows (prompt 'expr=', answer, worked solution in metadata);
    expressions in `exclude` (e.g. the held-out set) are skipped so the sets never overlap."""
    spec = spec or ArithmeticSpec()
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[PromptRow] = []
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct problems from {spec}; widen max_ops/max_operand")
        expression, solution, answer = make_problem(rng, spec)
        if expression in seen:
            continue
        seen.add(expression)
        rows.append(PromptRow(prompt=f"{expression}=", answer=str(answer), task="math", answer_format="boxed",
                              source="arithmetic", index=len(rows), metadata={"solution": solution}))
    return rows
