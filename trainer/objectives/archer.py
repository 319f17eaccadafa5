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


def _type_kl_term(kl: torch.Tensor, type_mask: torch.Tensor, type_normalizer: float | None, cfg: ArcherConfig,
                  prep: PreparedTokens, ctx: LossContext) -> torch.Tensor:
    """Mean KL over the tokens of one type, within the aggregation unit.

    For token-mean the unit is the whole mini-batch: the denominator is the global count of tokens of this
    type (from mini_batch_context), so the micro-batches and ranks add up exactly. Without a global context
    (one call, or verl-legacy micro-batch scope) it is this micro-batch's own count.
    """
    if cfg.loss_agg != "token-mean":
        return aggregate(kl, type_mask, cfg.loss_agg, ctx, prep.num_sequences)
    if type_normalizer is None:
        if ctx.token_normalizer is not None:
            raise ValueError(
                "archer per-type KL under a global token-mean needs the global per-type token counts: build the "
                "LossContext with mini_batch_context(..., selection_masks=token_split_masks(...))"
            )
        type_normalizer = float(type_mask.sum())
    return (kl * type_mask.to(kl.dtype)).sum() / max(type_normalizer, 1.0) * ctx.loss_scale


def archer_loss(cfg: ArcherConfig, inputs: LossInputs, prep: PreparedTokens, ctx: LossContext) -> ObjectiveTerms:
    """J = mean[min(r A, clip(r, 1 - eps(e), 1 + eps(e)) A) - beta(e) KL(pi_theta || pi_ref)] (Eq. 3-5)."""
    if inputs.entropy is None:
        raise ValueError("the archer objective needs LossInputs.entropy (current-policy token entropies)")
    tau = response_entropy_quantile(inputs.entropy, prep.mask, cfg.rho)
    if inputs.selection_mask is not None:  # the split mini_batch_context counted (token_split_masks)
        reasoning = inputs.selection_mask.bool() & prep.mask
    else:
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
            kl_loss = kl.new_zeros(())
            # beta = 0 adds nothing, and with both betas 0 mini_batch_context has no type counts to divide by.
            for beta, mask, normalizer in ((cfg.beta_knowledge, knowledge, ctx.knowledge_token_normalizer),
                                           (cfg.beta_reasoning, reasoning, ctx.reasoning_token_normalizer)):
                if beta > 0:
                    kl_loss = kl_loss + beta * _type_kl_term(kl, mask, normalizer, cfg, prep, ctx)
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
