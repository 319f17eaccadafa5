"""The built-in arithmetic task: worked solutions are correct, sets are reproducible and disjoint."""

from __future__ import annotations

import random

import pytest

from forkrl.trainer.data.arithmetic import ArithmeticSpec, arithmetic_rows, make_problem, worked_solution


def test_worked_solution_follows_operator_precedence() -> None:
    steps, value = worked_solution(["3", "+", "4", "*", "2", "-", "5"])
    assert steps == ["4*2=8", "3+8=11", "11-5=6"]
    assert value == 6


def test_answers_match_python_evaluation() -> None:
    rng = random.Random(0)
    for _ in range(300):
        expression, solution, answer = make_problem(rng, ArithmeticSpec(max_ops=4))
        assert answer == eval(expression)  # the expression holds only digits and + - *
        assert solution.endswith(f"\\boxed{{{answer}}}")


def test_sets_are_reproducible_distinct_and_disjoint() -> None:
    held_out = arithmetic_rows(200, seed=1)
    assert [r.prompt for r in held_out] == [r.prompt for r in arithmetic_rows(200, seed=1)]
    train = arithmetic_rows(300, seed=2, exclude={r.prompt[:-1] for r in held_out})
    assert len({r.prompt for r in train}) == 300
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}
    assert all(r.metadata["solution"].endswith(f"\\boxed{{{r.answer}}}") for r in train)


def test_impossible_request_fails_clearly() -> None:
    with pytest.raises(ValueError, match="distinct problems"):
        arithmetic_rows(1000, seed=0, spec=ArithmeticSpec(min_ops=1, max_ops=1, max_operand=2, ops="+"))


def test_boxed_fraction_mixes_answer_styles() -> None:
    rows = arithmetic_rows(400, seed=4, spec=ArithmeticSpec(boxed_fraction=0.5))
    boxed = [r for r in rows if r.metadata["solution"].endswith(f"\\boxed{{{r.answer}}}")]
    plain = [r for r in rows if r.metadata["solution"].endswith(f". Answer: {r.answer}")]
    assert len(boxed) + len(plain) == 400
    assert 150 < len(boxed) < 250  # about half, from a seeded coin
    assert all(r.metadata["solution"].endswith("\\boxed{" + r.answer + "}")
               for r in arithmetic_rows(50, seed=4, spec=ArithmeticSpec(boxed_fraction=1.0)))
