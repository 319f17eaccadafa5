"""Rewards to advantages: overlong shaping, GRPO group normalisation, entropy advantage shaping."""

from __future__ import annotations

import torch


def overlong_penalty(
    response_lengths: torch.Tensor, max_response_len: int, cache_len: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO soft overlong punishment (Eq. 13), added to the correctness reward.

    response_lengths: [batch] token counts |y|. Returns [batch] penalties:
    0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache * factor inside the buffer; -factor beyond L_max.
    """
    if cache_len <= 0 or cache_len > max_response_len:
        raise ValueError(f"cache_len must be in (0, max_response_len={max_response_len}], got {cache_len}")
    expected = max_response_len - cache_len
    lengths = response_lengths.to(torch.float64)
    penalty = torch.clamp(-(lengths - expected) / cache_len * factor, max=0.0)
    return torch.where(lengths > max_response_len, torch.full_like(penalty, -factor), penalty)


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    std_eps: float = 1e-6,
    norm_by_std: bool = True,
    unbiased_std: bool = True,
) -> torch.Tensor:
    """GRPO outcome advantage per response: (R - mean_group) / (std_group + eps).

    rewards: [responses]; group_ids: [responses] int (responses to the same prompt share an id).
    Unbiased (N-1) std as in verl; a group of one gets mean 0 and std 1 (advantage = R);
    norm_by_std=False is Dr.GRPO (no division). Returns [responses] in the rewards' dtype.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D")
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = unique.numel()
    values = rewards.to(torch.float64)
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values))
    sums = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, inverse, values)
    means = sums / counts
    centered = values - means[inverse]
    sq = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, inverse, centered.square())
    dof = counts - 1.0 if unbiased_std else counts
    std = torch.sqrt(sq / dof.clamp(min=1.0))
    singleton = counts[inverse] == 1
    mean_per_item = torch.where(singleton, torch.zeros_like(values), means[inverse])
    std_per_item = torch.where(singleton, torch.ones_like(values), std[inverse])
    advantages = values - mean_per_item
    if norm_by_std:
        advantages = advantages / (std_per_item + std_eps)
    return advantages.to(rewards.dtype)


def entropy_shaped_advantages(
    advantages: torch.Tensor, entropy: torch.Tensor, alpha: float = 0.4, kappa: float = 2.0
) -> torch.Tensor:
    """A' = A + min(alpha * H.detach(), |A| / kappa): an exploration bonus that never flips A's sign.

    advantages, entropy: [batch, resp_len] (any equal shapes).
    """
    if alpha <= 0 or kappa <= 1:
        raise ValueError(f"entropy advantage needs alpha > 0 and kappa > 1, got alpha={alpha}, kappa={kappa}")
    bonus = torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)
    return advantages + bonus
