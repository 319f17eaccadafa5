"""Archer dual-token constraints: a per-response entropy quantile splits knowledge from reasoning tokens;
knowledge tokens get the tight clip and the KL penalty, reasoning tokens the loose clip and weak/no KL."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.aggregation import aggregate
from forkrl.trainer.objectives.config import ArcherConfig
from forkrl.trainer.objectives.kl import kl_estimate
from forkrl.trainer.objectives.surrogate import clipped_surrogate
from forkrl.trainer.objectives.terms import ObjectiveTerms, PreparedTokens
from forkrl.trainer.objectives.types import LossContext, LossInputs


def response_entropy_quantile(entropy: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """tau_i = linear-interpolated q-quantile of each response's own token entropies.

    entropy, mask: [batch, resp_len]. Returns [batch] (nan for responses without tokens).
    """
    values = torch.where(mask, entropy.detach().to(torch.float64), torch.full_like(entropy, float("nan"),
                                                                                    dtype=torch.float64))
    return torch.nanquantile(values, q, dim=-1, interpolation="linear")


def reasoning_token_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float, tie_rule: str) -> torch.Tensor:
    """omega = 1 for reasoning (high-entropy) tokens: H > tau_i (`gt`, code) or H >= tau_i (`geq`, paper)."""
    return _above_threshold(entropy, response_entropy_quantile(entropy, mask, rho), tie_rule) & mask


def _above_threshold(entropy: torch.Tensor, tau: torch.Tensor, tie_rule: str) -> torch.Tensor:
    """entropy [batch, resp_len] vs per-response tau [batch] under the tie rule (nan tau: never above)."""
    h = entropy.detach().to(torch.float64)
    return h > tau.unsqueeze(-1) if tie_rule == "gt" else h >= tau.unsqueeze(-1)


def _type_kl_term(kl: torch.Tensor, type_mask: torch.Tensor, cfg: ArcherConfig, prep: PreparedTokens,
                  ctx: LossContext) -> torch.Tensor:
    """Mean KL over the tokens of one type, within the aggregation unit.

    For token-mean the type mean is local to the micro-batch, weighted by the micro-batch's share of the
    global token count so the micro-batches still add up (exact with one micro-batch, as in the code).
    """
    if cfg.loss_agg != "token-mean":
        return aggregate(kl, type_mask, cfg.loss_agg, ctx, prep.num_sequences)
    type_tokens = float(type_mask.sum())
    local_tokens = float(prep.mask.sum())
    share = 1.0 if ctx.token_normalizer is None else local_tokens / max(ctx.token_normalizer, 1.0)
    return (kl * type_mask.to(kl.dtype)).sum() / max(type_tokens, 1.0) * share * ctx.loss_scale


def archer_loss(cfg: ArcherConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """J = mean[min(r A, clip(r, 1 - eps(e), 1 + eps(e)) A) - beta(e) KL(pi_theta || pi_ref)] (Eq. 3-5)."""
    if inputs.entropy is None:
        raise ValueError("the archer objective needs LossInputs.entropy (current-policy token entropies)")
    tau = response_entropy_quantile(inputs.entropy, prep.mask, cfg.rho)
    reasoning = _above_threshold(inputs.entropy, tau, cfg.tie_rule) & prep.mask
    knowledge = prep.mask & ~reasoning
    dtype = prep.ratio.dtype
    is_reasoning = reasoning.to(dtype)
    eps_low = is_reasoning * cfg.eps_reasoning_low + (1 - is_reasoning) * cfg.eps_knowledge_low
    eps_high = is_reasoning * cfg.eps_reasoning_high + (1 - is_reasoning) * cfg.eps_knowledge_high
    objective, clipped, dual = clipped_surrogate(prep.ratio, prep.advantages, eps_low, eps_high, cfg.dual_clip_c)
    loss = aggregate(prep.weighted(-objective), prep.mask, cfg.loss_agg, ctx, prep.num_sequences)

    kl = None
    metrics = {"archer/reasoning_frac": float(reasoning.sum()) / max(int(prep.mask.sum()), 1)}
    if bool(torch.isfinite(tau).any()):
        metrics["archer/threshold_mean"] = float(tau[torch.isfinite(tau)].mean())
    if inputs.ref_logp is not None:
        kl = kl_estimate(inputs.logp, inputs.ref_logp, cfg.kl_estimator)
        if cfg.kl_norm == "per_type":
            kl_loss = cfg.beta_knowledge * _type_kl_term(kl, knowledge, cfg, prep, ctx) + (
                cfg.beta_reasoning * _type_kl_term(kl, reasoning, cfg, prep, ctx)
            )
        else:
            beta = is_reasoning * cfg.beta_reasoning + (1 - is_reasoning) * cfg.beta_knowledge
            kl_loss = aggregate(beta * kl, prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
        metrics["kl_loss"] = float(kl_loss.detach())
        loss = loss + kl_loss
    elif cfg.needs_reference:
        raise ValueError("archer with beta_knowledge/beta_reasoning > 0 needs LossInputs.ref_logp")
    return ObjectiveTerms(
        loss=loss, pg_token_mask=prep.mask, clipped=clipped, dual_clipped=dual, high_entropy_mask=reasoning,
        kl=kl, metrics=metrics,
    )
