"""avg@k, the unbiased pass@k estimator (checked against brute-force enumeration) and CIs."""

from __future__ import annotations

import itertools
import math

import pytest

from forkrl.trainer.evaluation import paired_difference_ci, pass_at_k, score_dataset


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 1), (5, 2, 2), (6, 3, 4), (8, 1, 3), (4, 0, 2), (4, 4, 1)])
def test_pass_at_k_equals_enumeration_over_subsets(n: int, c: int, k: int) -> None:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    brute = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_1_is_the_accuracy_and_bad_args_fail() -> None:
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k"):
        pass_at_k(4, 2, 5)


def test_score_dataset() -> None:
    result = score_dataset("toy", [[True, False, False, True], [False, False, False, False]], ks=(1, 2, 8))
    assert result.avg_at_k == pytest.approx(0.25)
    assert result.pass_at_k[1] == pytest.approx(0.25)
    assert result.pass_at_k[2] == pytest.approx((1 - 1 / 6 + 0) / 2)  # problem 1: 1 - C(2,2)/C(4,2)
    assert 8 not in result.pass_at_k  # k > n is not reported
    half = 1.96 * math.sqrt(((0.5 - 0.25) ** 2 * 2) / 1 / 2)
    assert result.ci95 == pytest.approx((0.25 - half, 0.25 + half))
    assert result.row()["avg@4"] == pytest.approx(0.25)
    assert result.answered is None and "answered" not in result.row()
    # 5 of the 8 samples gave an answer (2 right, 3 wrong): the rest never reached a final answer.
    answered = [[True, True, False, True], [True, False, False, True]]
    with_answers = score_dataset("toy", [[True, False, False, True], [False] * 4], answered=answered)
    assert with_answers.answered == 5 / 8 and with_answers.row()["answered"] == 5 / 8
    with pytest.raises(ValueError, match="one flag per sample"):
        score_dataset("toy", [[True, False]], answered=[[True]])


def test_paired_difference_ci() -> None:
    mean, low, high = paired_difference_ci([0, 0, 1, 1], [1, 0, 1, 1])
    assert mean == pytest.approx(0.25)
    assert low < 0 < high  # one flip out of four problems is not significant
    mean, low, high = paired_difference_ci([0] * 50, [1] * 40 + [0] * 10)
    assert mean == pytest.approx(0.8) and low > 0.6
