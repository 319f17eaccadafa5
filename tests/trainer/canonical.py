"""The canonical mini-batch of spec section 8.4, laid out as [2 responses, 4 positions] (float64)."""

from __future__ import annotations

import torch

from forkrl.trainer.objectives import LossInputs

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
LOGP = [-0.3, -1.6, -0.1, -1.5, -0.7, -0.25]
OLD = [-0.5, -2.0, -0.2, -1.2, -1.0, -0.05]
REF = [-0.4, -2.2, -0.1, -1.0, -1.1, -0.05]
ENTROPY = [0.30, 1.80, 0.02, 0.90, 1.20, 0.05]
ADVANTAGES = [1.5, 1.5, 1.5, 1.5, -0.5, -0.5]


def padded(values: list[float], fill: float = 0.0) -> torch.Tensor:
    """Scatter the 6 flattened token values into the padded [2, 4] layout."""
    out = torch.full(MASK.shape, fill, dtype=torch.float64)
    out[MASK] = torch.tensor(values, dtype=torch.float64)
    return out


def flat(tensor: torch.Tensor) -> list[float]:
    """The 6 real tokens of a padded [2, 4] tensor, in order."""
    return tensor[MASK].tolist()


def canonical_inputs(**overrides: torch.Tensor) -> LossInputs:
    """Fresh LossInputs with a leaf `logp` (requires_grad) for gradient checks."""
    fields = {
        "logp": padded(LOGP).requires_grad_(True),
        "old_logp": padded(OLD),
        "advantages": padded(ADVANTAGES),
        "response_mask": MASK.clone(),
        "entropy": padded(ENTROPY),
        "ref_logp": padded(REF),
    }
    fields.update(overrides)
    return LossInputs(**fields)
