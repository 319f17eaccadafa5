"""DAPO and the 80/20 forking-token objective: the clipped surrogate on all or on the top-rho tokens."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.aggregation import aggregate
from forkrl.trainer.objectives.config import DapoConfig, ForkingConfig
from forkrl.trainer.objectives.surrogate import clipped_surrogate
from forkrl.trainer.objectives.terms import ObjectiveTerms, PreparedTokens
from forkrl.trainer.objectives.types import LossContext, LossInputs
from forkrl.trainer.selection import topk_token_mask


def dapo_loss(cfg: DapoConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """L = -sum_t P_t m_t / sum_t m_t with P the dual-clipped surrogate (token-mean by default)."""
    objective, clipped, dual = clipped_surrogate(
        prep.ratio, prep.advantages, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c
    )
    loss = aggregate(prep.weighted(-objective), prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
    return ObjectiveTerms(loss=loss, pg_token_mask=prep.mask, clipped=clipped, dual_clipped=dual)


def forking_token_mask(cfg: ForkingConfig, inputs: LossInputs, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The forking tokens of this micro-batch: the precomputed global selection, or the local top-rho.

    Returns (bool mask [batch, resp_len], threshold tau; nan when the selection was precomputed).
    """
    if inputs.selection_mask is not None:
        return inputs.selection_mask.bool() & mask, float("nan")
    if cfg.scope == "mini_batch_global":
        raise ValueError(
            "forking scope 'mini_batch_global' needs LossInputs.selection_mask from "
            "forkrl.trainer.global_selection.global_forking_masks (computed before the loss)"
        )
    if inputs.entropy is None:
        raise ValueError("the forking objective needs LossInputs.entropy (current-policy token entropies)")
    return topk_token_mask(inputs.entropy, mask, cfg.rho, cfg.select, cfg.tie_rule)


def forking_loss(cfg: ForkingConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """80/20 Eq. 6: L = -sum_t P_t m_t M_t / sum_t m_t M_t over the selected (forking) tokens M."""
    selected, tau = forking_token_mask(cfg, inputs, prep.mask)
    objective, clipped, dual = clipped_surrogate(
        prep.ratio, prep.advantages, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c
    )
    loss = aggregate(prep.weighted(-objective), selected, cfg.loss_agg, ctx, prep.num_sequences)
    high = selected if cfg.select == "top" else prep.mask & ~selected
    num_valid = max(int(prep.mask.sum()), 1)
    metrics = {"forking/selected_frac": float(selected.sum()) / num_valid}
    if tau == tau:  # not nan: the threshold was computed here
        metrics["forking/threshold"] = tau
    return ObjectiveTerms(
        loss=loss, pg_token_mask=selected, clipped=clipped, dual_clipped=dual, high_entropy_mask=high,
        metrics=metrics,
    )
