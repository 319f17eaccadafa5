"""Which response tokens a forking-token objective trains on (local, single-process selection).

The k rule and tie-breaking here are the contract for every scope: the distributed
`mini_batch_global` select in `global_selection.py` must reproduce exactly these choices on the
concatenation of all ranks' and micro-batches' tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

SelectSide = Literal["top", "bottom"]


def num_selected(num_tokens: int, rho: float) -> int:
    """k = max(1, floor(rho * N + 0.9999)), a ceil tolerant of float error; 0 when N = 0.

    Examples (spec C4): N=10, rho=0.7 -> 7; N=5, rho=0.3 -> 2; N=0 -> 0.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if num_tokens == 0:
        return 0
    return min(num_tokens, max(1, math.floor(rho * num_tokens + 0.9999)))


def topk_token_mask(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    rho: float,
    select: SelectSide = "top",
    tie_rule: Literal["exact_k", "geq_tau"] = "exact_k",
) -> tuple[torch.Tensor, float]:
    """Select the k highest (or lowest) entropy response tokens.

    entropy, response_mask: [batch, resp_len] (any shape; flattened row-major).
    Returns (mask: bool, same shape, threshold tau = entropy of the k-th selected token; nan if none).

    `exact_k` keeps exactly k tokens; among tokens equal to tau the earliest positions (row-major
    order) win, so the choice is deterministic. `geq_tau` keeps every token with H >= tau (H <= tau
    for `bottom`), so ties at the threshold may push the count above k (the paper's Eq. 6 reading).
    """
    if entropy.shape != response_mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and response_mask {tuple(response_mask.shape)} differ")
    valid = response_mask.reshape(-1).bool()
    flat = entropy.detach().reshape(-1)
    mask = torch.zeros_like(valid)
    k = num_selected(int(valid.sum()), rho)
    if k == 0:
        return mask.reshape(response_mask.shape), float("nan")
    positions = torch.nonzero(valid).squeeze(1)
    values = flat[positions].double()
    # Stable sort on the negated key keeps earlier positions first among equal entropies.
    order = torch.sort(-values if select == "top" else values, stable=True).indices
    tau = float(values[order[k - 1]])
    if tie_rule == "exact_k":
        mask[positions[order[:k]]] = True
    elif select == "top":
        mask[positions[values >= tau]] = True
    else:
        mask[positions[values <= tau]] = True
    return mask.reshape(response_mask.shape), tau
