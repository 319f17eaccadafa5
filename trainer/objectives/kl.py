"""KL estimators between the policy and a reference, per token (verl `kl_penalty` conventions)."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives.config import KLEstimator


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta; same shape as `logp`.

    k1 = logp - ref; abs = |logp - ref|; k2 = 0.5 (logp - ref)^2;
    k3 = e^d - d - 1 with d = clamp(ref - logp, -20, 20), value clamped to [-10, 10];
    k3+ = k3 value with the k2 gradient (straight-through).
    """
    diff = logp - ref_logp
    if estimator == "k1":
        return diff
    if estimator == "abs":
        return diff.abs()
    if estimator == "k2":
        return 0.5 * diff.square()
    if estimator in ("k3", "k3+"):
        d = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
        k3 = torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)
        if estimator == "k3":
            return k3
        k2 = 0.5 * diff.square()
        return k2 + (k3 - k2).detach()
    raise ValueError(f"unknown kl estimator {estimator!r}")
