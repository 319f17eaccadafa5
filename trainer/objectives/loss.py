"""`compute_policy_loss`: one entry point for every objective, read top to bottom.

advantages (+ optional entropy shaping) -> ratio -> TIS weight -> the objective's loss -> entropy bonus
-> metrics. One call = one micro-batch on one rank; `LossContext` makes the micro-batches add up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from forkrl.trainer.advantages import entropy_shaped_advantages
from forkrl.trainer.objectives.aggregation import aggregate, sequence_count
from forkrl.trainer.objectives.archer import archer_loss
from forkrl.trainer.objectives.config import ObjectiveConfig
from forkrl.trainer.objectives.covariance import clip_cov_loss, kl_cov_loss
from forkrl.trainer.objectives.metrics import loss_metrics
from forkrl.trainer.objectives.ppo import dapo_loss, forking_loss
from forkrl.trainer.objectives.sequence_ratio import cispo_loss, gspo_loss
from forkrl.trainer.objectives.surrogate import log_ratio
from forkrl.trainer.objectives.terms import ObjectiveTerms, PreparedTokens
from forkrl.trainer.objectives.types import LossContext, LossInputs, LossOutput

OBJECTIVES: dict[str, Callable[..., ObjectiveTerms]] = {
    "dapo": dapo_loss,
    "forking": forking_loss,
    "archer": archer_loss,
    "clip_cov": clip_cov_loss,
    "kl_cov": kl_cov_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
}


def prepare_tokens(cfg: ObjectiveConfig, inputs: LossInputs) -> PreparedTokens:
    """The per-token quantities shared by every objective (see PreparedTokens)."""
    mask = inputs.response_mask.bool()
    advantages = inputs.advantages.to(inputs.logp.dtype)
    if cfg.entropy_advantage is not None:
        if inputs.entropy is None:
            raise ValueError("entropy_advantage needs LossInputs.entropy")
        advantages = entropy_shaped_advantages(
            advantages, inputs.entropy.to(advantages.dtype), cfg.entropy_advantage.alpha, cfg.entropy_advantage.kappa
        )
    lr = log_ratio(inputs.logp, inputs.old_logp.detach(), cfg.log_ratio_clamp)
    tis_weight = None
    if cfg.tis_cap is not None:
        if inputs.rollout_logp is None:
            raise ValueError("tis_cap is set but LossInputs.rollout_logp (sampling log-probs) is missing")
        behaviour = torch.clamp(inputs.old_logp - inputs.rollout_logp, min=-cfg.log_ratio_clamp,
                                max=cfg.log_ratio_clamp)
        tis_weight = torch.clamp(torch.exp(behaviour), max=cfg.tis_cap).detach().to(inputs.logp.dtype)
    return PreparedTokens(mask=mask, advantages=advantages, log_ratio=lr, ratio=torch.exp(lr),
                          tis_weight=tis_weight, num_sequences=sequence_count(mask))


def compute_policy_loss(cfg: ObjectiveConfig, inputs: LossInputs, ctx: LossContext | None = None) -> LossOutput:
    """Loss (to minimise) of the configured objective on one micro-batch, with its metrics."""
    ctx = ctx or LossContext()
    if cfg.token_sum_norm_length is not None:  # the configured constant wins over the run's max response length
        ctx = dataclasses.replace(ctx, max_response_len=cfg.token_sum_norm_length)
    if cfg.needs_entropy and inputs.entropy is None:
        raise ValueError(f"objective {cfg.name!r} needs LossInputs.entropy")
    prep = prepare_tokens(cfg, inputs)
    terms = OBJECTIVES[cfg.name](cfg, inputs, prep, ctx)
    loss = terms.loss
    if cfg.entropy_coef > 0:
        bonus = aggregate(inputs.entropy, prep.mask, cfg.loss_agg, ctx, prep.num_sequences)
        loss = loss - cfg.entropy_coef * bonus
        terms.metrics["entropy_bonus"] = float(bonus.detach())
    terms.loss = loss
    return LossOutput(loss=loss, metrics=loss_metrics(cfg, inputs, prep, terms), token_mask=terms.pg_token_mask)
