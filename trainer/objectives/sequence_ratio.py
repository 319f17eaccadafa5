"""Objectives that reshape the importance ratio: GSPO (sequence-level ratio) and CISPO (clipped IS weight)."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.aggregation import aggregate
from forkrl.trainer.objectives.config import CispoConfig, GspoConfig
from forkrl.trainer.objectives.terms import ObjectiveTerms, PreparedTokens
from forkrl.trainer.objectives.types import LossContext, LossInputs


def gspo_loss(cfg: GspoConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """GSPO: s_i = exp(mean_t log r_it); token form log s_it = sg[log s_i] + logp_t - sg[logp_t] (value s_i,
    per-token gradient); objective min(s A, clip(s, 1 - eps_low, 1 + eps_high) A); no dual-clip."""
    weights = prep.mask.to(prep.log_ratio.dtype)
    seq_log_ratio = (prep.log_ratio * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)
    token_log_s = seq_log_ratio.detach().unsqueeze(-1) + inputs.logp - inputs.logp.detach()
    seq_ratio = torch.exp(torch.clamp(token_log_s, max=cfg.max_log_ratio))
    unclipped = seq_ratio * prep.advantages
    clipped_obj = torch.clamp(seq_ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high) * prep.advantages
    objective = torch.minimum(unclipped, clipped_obj)
    clipped = (clipped_obj < unclipped) & prep.mask
    loss = aggregate(prep.weighted(-objective), prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
    return ObjectiveTerms(loss=loss, pg_token_mask=prep.mask, clipped=clipped)


def cispo_loss(cfg: CispoConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """CISPO: loss_t = -sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp_t: every token keeps a gradient."""
    weight = torch.clamp(prep.ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high).detach()
    clipped = (weight != prep.ratio.detach()) & prep.mask
    loss_mat = -weight * prep.advantages * inputs.logp
    loss = aggregate(prep.weighted(loss_mat), prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
    return ObjectiveTerms(loss=loss, pg_token_mask=prep.mask, clipped=clipped)
