"""The clipped PPO surrogate with dual-clip, per token (objective to maximise; loss = -objective)."""

from __future__ import annotations

import torch


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, clamp: float = 20.0) -> torch.Tensor:
    """log r = clamp(log pi_theta - log pi_old, -clamp, clamp)."""
    return torch.clamp(logp - old_logp, min=-clamp, max=clamp)


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float | torch.Tensor,
    eps_high: float | torch.Tensor,
    dual_clip_c: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token objective min(r A, clip(r, 1-eps_low, 1+eps_high) A), dual-clipped at c*A for A < 0.

    eps_low/eps_high may be per-token tensors (Archer). Returns (objective, clipped, dual_clipped): the
    two bool tensors mark tokens whose gradient the clip / the dual-clip removed.
    """
    unclipped = ratio * advantages
    clipped_ratio = torch.minimum(torch.maximum(ratio, 1.0 - torch.as_tensor(eps_low, dtype=ratio.dtype)),
                                  1.0 + torch.as_tensor(eps_high, dtype=ratio.dtype))
    clipped_obj = clipped_ratio * advantages
    objective = torch.minimum(unclipped, clipped_obj)
    clipped = clipped_obj < unclipped
    dual_clipped = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        floor = dual_clip_c * advantages
        dual_clipped = (advantages < 0) & (objective < floor)
        objective = torch.where(dual_clipped, floor, objective)
    return objective, clipped, dual_clipped
