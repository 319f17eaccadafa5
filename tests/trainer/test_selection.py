"""The forking-token k rule and local top-k selection (spec C4 k rule, tie rules)."""

from __future__ import annotations

import pytest
import torch

from forkrl.trainer.selection import num_selected, topk_token_mask


@pytest.mark.parametrize(("n", "rho", "k"), [(10, 0.7, 7), (5, 0.3, 2), (0, 0.2, 0), (1, 0.01, 1), (6, 0.2, 2),
                                             (6, 1.0, 6), (100, 0.2, 20)])
def test_k_rule(n: int, rho: float, k: int) -> None:
    assert num_selected(n, rho) == k


def test_k_rule_rejects_bad_rho() -> None:
    with pytest.raises(ValueError, match="rho"):
        num_selected(4, 0.0)


def test_ties_exact_k_prefers_earlier_positions_and_geq_keeps_all() -> None:
    entropy = torch.tensor([[0.5, 0.9, 0.5, 0.5], [0.5, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    exact, tau = topk_token_mask(entropy, mask, rho=0.5)  # 6 tokens -> k = 3
    assert tau == 0.5
    assert exact.int().tolist() == [[1, 1, 1, 0], [0, 0, 0, 0]]  # 0.9, then the first two 0.5s
    geq, _ = topk_token_mask(entropy, mask, rho=0.5, tie_rule="geq_tau")
    assert geq.int().tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    bottom, tau_low = topk_token_mask(entropy, mask, rho=0.5, select="bottom")
    assert tau_low == 0.5
    assert bottom.int().tolist() == [[1, 0, 1, 0], [0, 1, 0, 0]]  # 0.1, then the first two 0.5s


def test_padding_is_never_selected() -> None:
    entropy = torch.tensor([[0.1, 9.0], [0.2, 8.0]])
    mask = torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)
    selected, _ = topk_token_mask(entropy, mask, rho=0.5)
    assert selected.int().tolist() == [[0, 0], [1, 0]]
