"""Dual-temperature math: spec R4, entropy values, running-quantile convergence (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from forkrl.rollout.dual_temperature import (
    DualTemperatureRows,
    choose_temperature,
    dual_temperature_step,
    entropy_at_unit_temperature,
    update_running_threshold,
)
from forkrl.rollout.types import DualTemperatureParams


def _rows(params: list[DualTemperatureParams]) -> DualTemperatureRows:
    rows = DualTemperatureRows.from_params(params)
    return DualTemperatureRows(*(t.double() if t.is_floating_point() else t for t in vars(rows).values()))


@pytest.mark.parametrize(
    ("logits", "expected"),
    [([0.0, 0.0, 0.0, 0.0], math.log(4)), ([2.0, 0.0], 0.3653339), ([1.0, 2.0, 3.0], 0.8323956)],
)
def test_entropy_matches_spec_values(logits: list[float], expected: float) -> None:
    value = entropy_at_unit_temperature(torch.tensor([logits], dtype=torch.float64))
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_entropy_ignores_masked_entries() -> None:
    masked = torch.tensor([[0.0, 0.0, float("-inf")]], dtype=torch.float64)
    assert entropy_at_unit_temperature(masked).item() == pytest.approx(math.log(2), abs=1e-12)


def test_r4_flat_row_takes_t_high_and_peaked_row_takes_t_low() -> None:
    """Spec 8.4 R4 with h_threshold = 0.672, T_high = 1.5, T_low = 0.6."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    params = DualTemperatureParams(t_high=1.5, t_low=0.6, threshold=0.672)
    tempered, high, next_tau = dual_temperature_step(logits, _rows([params, params]))
    entropy = entropy_at_unit_temperature(logits)
    assert entropy[0].item() == pytest.approx(1.3862944, abs=1e-6)
    assert entropy[1].item() == pytest.approx(0.0015, abs=1e-4)
    assert high.tolist() == [True, False]
    assert torch.allclose(tempered[0], logits[0] / 1.5)
    assert torch.allclose(tempered[1], logits[1] / 0.6)
    assert next_tau.tolist() == pytest.approx([0.672, 0.672])  # absolute mode never moves


def test_threshold_is_strict() -> None:
    def f64(*values: float) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    temperature, high = choose_temperature(f64(0.5, 0.5 + 1e-9), f64(0.5, 0.5), f64(2.0, 2.0), f64(0.5, 0.5))
    assert high.tolist() == [False, True]
    assert temperature.tolist() == [0.5, 2.0]


def test_running_update_by_hand() -> None:
    tau = torch.tensor([1.0, 1.0, 1.0])
    high = torch.tensor([True, False, True])
    running = torch.tensor([True, True, False])
    rho, lr = torch.full((3,), 0.2), torch.full((3,), 0.1)
    out = update_running_threshold(tau, high, rho, lr, running)
    assert out.tolist() == pytest.approx([1.0 + 0.1 * 0.8, 1.0 - 0.1 * 0.2, 1.0])


def test_running_quantile_converges_to_the_top_rho_quantile() -> None:
    """Entropies ~ Uniform(0, 2): the upper 20% quantile is 1.6 and 20% of tokens go high."""
    generator = torch.Generator().manual_seed(0)
    entropies = 2.0 * torch.rand(40_000, generator=generator, dtype=torch.float64)
    params = DualTemperatureParams(threshold_mode="running_quantile", threshold=0.3, rho=0.2, quantile_lr=0.01)
    rows = _rows([params])
    highs = []
    for value in entropies:
        _, high = choose_temperature(value.reshape(1), rows.tau, rows.t_high, rows.t_low)
        rows.tau = update_running_threshold(rows.tau, high, rows.rho, rows.quantile_lr, rows.running)
        highs.append(bool(high))
    assert rows.tau.item() == pytest.approx(1.6, abs=0.05)
    assert sum(highs[-20_000:]) / 20_000 == pytest.approx(0.2, abs=0.01)


def test_rows_without_running_mode_keep_their_threshold_in_a_mixed_batch() -> None:
    logits = torch.zeros((2, 5), dtype=torch.float64)  # H = ln 5 > both thresholds
    absolute = DualTemperatureParams(threshold=0.5, t_high=2.0)
    running = DualTemperatureParams(threshold_mode="running_quantile", threshold=0.5, rho=0.25, quantile_lr=0.5)
    _, high, next_tau = dual_temperature_step(logits, _rows([absolute, running]))
    assert high.tolist() == [True, True]
    assert next_tau.tolist() == pytest.approx([0.5, 0.5 + 0.5 * 0.75])
