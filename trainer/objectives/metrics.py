"""Metrics every loss call reports: entropy percentiles, token-type clip fractions and KL, ratio stats,
train-inference mismatch. Plain floats, ready to chart."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.config import _ObjectiveBase
from forkrl.trainer.objectives.terms import ObjectiveTerms, PreparedTokens
from forkrl.trainer.objectives.types import LossInputs
from forkrl.trainer.selection import topk_token_mask

ENTROPY_PERCENTILES = (10, 50, 80, 90, 99)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    count = int(mask.sum())
    return float((values.detach().to(torch.float64) * mask).sum()) / count if count else 0.0


def entropy_percentiles(entropy: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """p10/p50/p80/p90/p99 (linear interpolation) and the mean of the response-token entropies."""
    values = entropy.detach()[mask].to(torch.float64)
    if values.numel() == 0:
        return {}
    qs = torch.tensor([p / 100 for p in ENTROPY_PERCENTILES], dtype=torch.float64)
    stats = {f"entropy/p{p}": float(v) for p, v in zip(ENTROPY_PERCENTILES, torch.quantile(values, qs), strict=True)}
    stats["entropy/mean"] = float(values.mean())
    return stats


def mismatch_metrics(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """KL(pi_rollout || pi_learner) estimated on the rollout's own samples: k1 = E[log pi_rollout - log pi_old]
    and the non-negative k3 = E[e^d - d - 1], d = log pi_old - log pi_rollout."""
    d = (old_logp.detach() - rollout_logp.detach()).to(torch.float64)
    return {
        "mismatch/kl_k1": _masked_mean(-d, mask),
        "mismatch/kl_k3": _masked_mean(torch.expm1(d) - d, mask),
    }


def loss_metrics(
    cfg: _ObjectiveBase, inputs: LossInputs, prep: PreparedTokens, terms: ObjectiveTerms
) -> dict[str, float]:
    """Everything a user charts about one loss call (see module docstring)."""
    mask = prep.mask
    metrics: dict[str, float] = {
        "loss": float(terms.loss.detach()),
        "pg_token_frac": float(terms.pg_token_mask.sum()) / max(int(mask.sum()), 1),
        "response_tokens": float(mask.sum()),
    }
    ratio = prep.ratio.detach()[mask]
    if ratio.numel():
        metrics.update({"ratio/mean": float(ratio.mean()), "ratio/min": float(ratio.min()),
                        "ratio/max": float(ratio.max())})
    high = terms.high_entropy_mask
    if inputs.entropy is not None:
        metrics.update(entropy_percentiles(inputs.entropy, mask))
        if high is None:
            high = topk_token_mask(inputs.entropy, mask, cfg.metrics_high_entropy_rho)[0]
    low = mask & ~high if high is not None else None
    if high is not None:
        metrics["high_tokens"] = float((high & mask).sum())
    if terms.clipped is not None:
        metrics["clip_frac"] = _masked_mean(terms.clipped.float(), mask)
        if high is not None:
            metrics["clip_frac/high"] = _masked_mean(terms.clipped.float(), high)
            metrics["clip_frac/low"] = _masked_mean(terms.clipped.float(), low)
    if terms.dual_clipped is not None:
        metrics["dual_clip_frac"] = _masked_mean(terms.dual_clipped.float(), mask)
    if terms.kl is not None:
        metrics["kl"] = _masked_mean(terms.kl, mask)
        if high is not None:
            metrics["kl/high"] = _masked_mean(terms.kl, high)
            metrics["kl/low"] = _masked_mean(terms.kl, low)
    if inputs.rollout_logp is not None:
        metrics.update(mismatch_metrics(inputs.old_logp, inputs.rollout_logp, mask))
    if prep.tis_weight is not None:
        metrics["tis/weight_mean"] = _masked_mean(prep.tis_weight, mask)
        if cfg.tis_cap is not None:
            metrics["tis/capped_frac"] = _masked_mean((prep.tis_weight >= cfg.tis_cap).float(), mask)
    metrics.update(terms.metrics)
    return metrics
