"""Spec 8.4 A1-A4 (GRPO advantages), R1 (overlong shaping), C11 (entropy advantage), float64."""

from __future__ import annotations

import pytest
import torch

from forkrl.trainer.advantages import entropy_shaped_advantages, grpo_advantages, overlong_penalty


def adv(rewards: list[float], groups: list[int] | None = None, **kwargs) -> list[float]:
    groups = groups if groups is not None else [0] * len(rewards)
    return grpo_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups), **kwargs).tolist()


def test_a1_unbiased_std() -> None:
    assert adv([1, 0, 0, 0]) == pytest.approx([1.499997, -0.499999, -0.499999, -0.499999], abs=1e-6)
    # The population std would give 1.732047 for the first response: that convention must not be used.
    assert adv([1, 0, 0, 0], unbiased_std=False)[0] == pytest.approx(1.732047, abs=1e-6)


def test_a2_plus_minus_rewards() -> None:
    assert adv([1, -1, -1, -1]) == pytest.approx([1.4999985, -0.4999995, -0.4999995, -0.4999995], abs=1e-6)


def test_a3_singleton_group_keeps_reward() -> None:
    assert adv([0.7]) == pytest.approx([0.7], abs=1e-6)


def test_a4_constant_group_is_zero() -> None:
    assert adv([1, 1, 1, 1]) == [0.0, 0.0, 0.0, 0.0]


def test_groups_are_independent_and_order_free() -> None:
    mixed = adv([1, 5, 0, 5, 0, 7, 0, 5], groups=[3, 9, 3, 9, 3, 9, 3, 1])
    first = adv([1, 0, 0, 0])
    second = adv([5, 5, 7])
    assert [mixed[i] for i in (0, 2, 4, 6)] == pytest.approx(first)
    assert [mixed[i] for i in (1, 3, 5)] == pytest.approx(second)
    assert mixed[7] == pytest.approx(5.0)  # a singleton group


def test_dr_grpo_does_not_divide() -> None:
    assert adv([1, 0, 0, 0], norm_by_std=False) == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(("length", "penalty"), [(16384, 0.0), (17408, -0.25), (18432, -0.5), (20480, -1.0),
                                                 (100, 0.0), (30000, -1.0)])
def test_r1_overlong_penalty(length: int, penalty: float) -> None:
    value = overlong_penalty(torch.tensor([length]), max_response_len=20480, cache_len=4096)
    assert float(value) == pytest.approx(penalty, abs=1e-12)


def test_r1_overlong_factor_and_bad_cache() -> None:
    assert float(overlong_penalty(torch.tensor([18432]), 20480, 4096, factor=2.0)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), 100, 0)


def test_c11_entropy_advantage() -> None:
    advantages = torch.tensor([1.5, 1.5, 1.5, 1.5, -0.5, -0.5], dtype=torch.float64)
    entropy = torch.tensor([0.30, 1.80, 0.02, 0.90, 1.20, 0.05], dtype=torch.float64, requires_grad=True)
    shaped = entropy_shaped_advantages(advantages, entropy, alpha=0.4, kappa=2.0)
    assert (shaped - advantages).tolist() == pytest.approx([0.12, 0.72, 0.008, 0.36, 0.25, 0.02], abs=1e-12)
    assert shaped.tolist() == pytest.approx([1.62, 2.22, 1.508, 1.86, -0.25, -0.48], abs=1e-12)
    assert not shaped.requires_grad  # the entropy is detached
    assert torch.all(torch.sign(shaped) == torch.sign(advantages))
