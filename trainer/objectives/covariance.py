"""Clip-Cov and KL-Cov (Cui et al. 2025): act on the few tokens whose log-prob/advantage covariance is
highest, the tokens that drive entropy collapse."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.aggregation import aggregate
from forkrl.trainer.objectives.config import ClipCovConfig, KlCovConfig
from forkrl.trainer.objectives.terms import ObjectiveTerms, PreparedTokens
from forkrl.trainer.objectives.types import LossContext, LossInputs


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov_t = (logp_t - mean logp)(A_t - mean A), means over the valid tokens; selection only (detached).

    logp, advantages, mask: [batch, resp_len]. Returns [batch, resp_len] (0 outside the mask).
    """
    weights = mask.to(torch.float64)
    count = weights.sum().clamp(min=1.0)
    lp = logp.detach().to(torch.float64)
    adv = advantages.detach().to(torch.float64)
    cov = (lp - (lp * weights).sum() / count) * (adv - (adv * weights).sum() / count)
    return cov * weights


def _cov_count(ratio: float, num_tokens: int) -> int:
    """k = max(1, floor(ratio * N)) (0 when there are no tokens)."""
    return 0 if num_tokens == 0 else max(1, int(ratio * num_tokens))


def kl_cov_loss(cfg: KlCovConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """loss_t = -A r + kl_coef |log r| on the top-k covariance tokens, -A r elsewhere; no clipping."""
    cov = token_covariance(inputs.logp, prep.advantages, prep.mask)
    flat_valid = torch.nonzero(prep.mask.reshape(-1)).squeeze(1)
    k = _cov_count(cfg.kl_cov_ratio, flat_valid.numel())
    selected = torch.zeros_like(prep.mask)
    if k:
        order = torch.sort(-cov.reshape(-1)[flat_valid], stable=True).indices[:k]
        selected.view(-1)[flat_valid[order]] = True
    loss_mat = -prep.advantages * prep.ratio + cfg.kl_coef * prep.log_ratio.abs() * selected.to(prep.ratio.dtype)
    loss = aggregate(prep.weighted(loss_mat), prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
    metrics = {"cov/selected_frac": float(selected.sum()) / max(flat_valid.numel(), 1)}
    return ObjectiveTerms(loss=loss, pg_token_mask=prep.mask, metrics=metrics)


def clip_cov_loss(cfg: ClipCovConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """Normal clipped loss, except k random tokens with cov_lower < Cov < cov_upper (not already clipped)
    get loss 0; they stay in the token-mean denominator."""
    unclipped = -prep.advantages * prep.ratio
    clipped_loss = -prep.advantages * torch.clamp(prep.ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
    clipped = (clipped_loss > unclipped) & prep.mask
    cov = token_covariance(inputs.logp, prep.advantages, prep.mask)
    candidates = (cov > cfg.cov_lower) & (cov < cfg.cov_upper) & prep.mask & ~clipped
    candidate_idx = torch.nonzero(candidates.reshape(-1)).squeeze(1)
    k = min(_cov_count(cfg.clip_ratio, int(prep.mask.sum())), candidate_idx.numel())
    zeroed = torch.zeros_like(prep.mask)
    if k:
        generator = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(candidate_idx.numel(), generator=generator)[:k]
        zeroed.view(-1)[candidate_idx[pick]] = True
    keep = (~zeroed).to(prep.ratio.dtype)
    loss_mat = torch.maximum(unclipped, clipped_loss) * keep
    loss = aggregate(prep.weighted(loss_mat), prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
    metrics = {"cov/zeroed_frac": float(zeroed.sum()) / max(int(prep.mask.sum()), 1)}
    return ObjectiveTerms(loss=loss, pg_token_mask=prep.mask & ~zeroed, clipped=clipped, metrics=metrics)
