"""Shared per-token quantities of one loss call and what each objective hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PreparedTokens:
    """Per-token tensors [batch, resp_len] every objective starts from.

    mask: bool response mask; advantages: after optional entropy shaping; log_ratio/ratio: clamped
    log pi_theta - log pi_old and its exp; tis_weight: detached truncated-IS weight or None;
    num_sequences: sequences with at least one response token.
    """

    mask: torch.Tensor
    advantages: torch.Tensor
    log_ratio: torch.Tensor
    ratio: torch.Tensor
    tis_weight: torch.Tensor | None
    num_sequences: int

    def weighted(self, loss_mat: torch.Tensor) -> torch.Tensor:
        """Apply the TIS weight to a per-token policy-gradient loss (no-op when TIS is off)."""
        return loss_mat if self.tis_weight is None else loss_mat * self.tis_weight


@dataclass
class ObjectiveTerms:
    """What an objective computed: the scalar loss and the per-token facts its metrics need.

    pg_token_mask: tokens that carried policy gradient; clipped/dual_clipped: tokens whose gradient a clip
    removed (None where the objective has no clip); high_entropy_mask: the objective's own high-entropy
    token type (None = use the metrics default); kl: per-token KL to the reference (None = no KL term).
    """

    loss: torch.Tensor
    pg_token_mask: torch.Tensor
    clipped: torch.Tensor | None = None
    dual_clipped: torch.Tensor | None = None
    high_entropy_mask: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
