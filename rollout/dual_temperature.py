"""Dual-temperature decoding (80/20 paper, Eq. 5): pure tensor math shared by both engines.

Per token: H = entropy of softmax(z) at T = 1; the token is sampled from softmax(z / T) with
T = t_high if H > tau else t_low. In the running-quantile mode tau follows the Robbins-Monro update
tau <- tau + lr * (1[H > tau] - rho), whose fixed point is the upper rho-quantile of the sample's
entropies. `HFEngine` calls `dual_temperature_step` directly; the vLLM logits processors (through
`dual_temperature_state.py`) call the same function on the rows that asked for it, so the two engines
make identical decisions from identical logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forkrl.rollout.types import DualTemperatureParams

EXTRA_ARGS_KEY = "forkrl_dual_temperature"
"""Key of the dual-temperature parameters in vLLM's `SamplingParams.extra_args`."""
SAMPLE_KEY = "forkrl_sample_key"
"""Key of the per-sample id under which the vLLM processor keeps its counts."""


def entropy_at_unit_temperature(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum p log p of softmax(logits), T = 1; masked (-inf) entries contribute 0.

    logits: [rows, vocab] -> [rows] float32 (float64 in, float64 out).
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits.to(dtype), dim=-1)
    return torch.special.entr(probs).sum(dim=-1)


@dataclass
class DualTemperatureRows:
    """Dual-temperature parameters and state of a set of rows (all tensors [rows], same device)."""

    t_high: torch.Tensor
    t_low: torch.Tensor
    tau: torch.Tensor
    """Current entropy threshold (fixed in absolute mode, updated in running mode)."""
    running: torch.Tensor
    """bool: running-quantile mode."""
    rho: torch.Tensor
    quantile_lr: torch.Tensor

    @classmethod
    def from_params(
        cls, params: list[DualTemperatureParams], device: torch.device | str = "cpu"
    ) -> DualTemperatureRows:
        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        return cls(
            t_high=column([p.t_high for p in params]),
            t_low=column([p.t_low for p in params]),
            tau=column([p.threshold for p in params]),
            running=torch.tensor(
                [p.threshold_mode == "running_quantile" for p in params], dtype=torch.bool, device=device
            ),
            rho=column([p.rho for p in params]),
            quantile_lr=column([p.quantile_lr for p in params]),
        )

    def select(self, index: torch.Tensor) -> DualTemperatureRows:
        """Rows `index` ([k] int64) as a new object (used when finished rows leave the batch)."""
        return DualTemperatureRows(*(getattr(self, f)[index] for f in _FIELDS))


_FIELDS = ("t_high", "t_low", "tau", "running", "rho", "quantile_lr")


def choose_temperature(
    entropy: torch.Tensor, tau: torch.Tensor, t_high: torch.Tensor, t_low: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (temperature [rows], high [rows] bool); high iff entropy > tau (strict, as in Eq. 5)."""
    high = entropy > tau
    return torch.where(high, t_high, t_low), high


def update_running_threshold(
    tau: torch.Tensor, high: torch.Tensor, rho: torch.Tensor, lr: torch.Tensor, running: torch.Tensor
) -> torch.Tensor:
    """Robbins-Monro step towards the upper rho-quantile; rows not in running mode keep their tau."""
    stepped = tau + lr * (high.to(tau.dtype) - rho)
    return torch.where(running, stepped, tau)


def dual_temperature_step(
    logits: torch.Tensor, rows: DualTemperatureRows
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step for rows under dual temperature.

    logits: [rows, vocab] raw (T = 1) logits. Returns (tempered logits [rows, vocab] = logits / T,
    high [rows] bool, next tau [rows]). Does not modify its inputs.
    """
    entropy = entropy_at_unit_temperature(logits)
    temperature, high = choose_temperature(entropy, rows.tau, rows.t_high, rows.t_low)
    tempered = logits / temperature.to(logits.dtype).unsqueeze(1)
    next_tau = update_running_threshold(rows.tau, high, rows.rho, rows.quantile_lr, rows.running)
    return tempered, high, next_tau
