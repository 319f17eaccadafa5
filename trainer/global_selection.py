"""Exact top-ρ forking-token selection across DP ranks and micro-batches (scope `mini_batch_global`).

Spec §8.2: the k = num_selected(N, ρ) highest-entropy tokens among all N response tokens of the
mini-batch, with N summed over every DP rank and every local micro-batch. The threshold is found by a
radix select on order-preserving 32-bit integer keys of the fp32 entropies: 4 passes of 8 bits, each
one all-reduce of a 256-bin histogram of the surviving candidates, so the communication is a few KiB
whatever the number of tokens. Ties at the threshold are then split by one all-gather of a per-rank
tie count, so that the result equals `selection.topk_token_mask` applied to the concatenation of all
valid tokens in (rank, micro-batch, row-major position) order.

Entropies are compared as fp32 values (fp64 inputs are rounded to fp32 first): two tokens whose fp64
entropies differ below fp32 resolution count as a tie here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from forkrl.trainer.selection import num_selected

RADIX_BITS = 8
_NUM_BINS = 1 << RADIX_BITS
_KEY_BITS = 32
_SIGN_BIT = 1 << 31
_KEY_MAX = (1 << 32) - 1


def _rank_and_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """group=None means a single process (no communication), not the default world group."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_reduce_sum(tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    if group is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def float_to_ordered_key(values: Tensor) -> Tensor:
    """values: [n] fp32 (finite, no NaN) -> [n] int64 keys in [0, 2^32) with the same order.

    Non-negative floats keep their bit pattern (which is already monotone); negative floats — an
    entropy that rounded to -1e-8 — get their magnitude bits flipped so that they sort below. -0.0 is
    folded into +0.0 first since the two compare equal.
    """
    canonical = torch.where(values == 0, torch.zeros_like(values), values)
    bits = canonical.contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits + _SIGN_BIT


def ordered_key_to_float(key: int) -> float:
    """Inverse of float_to_ordered_key for one key."""
    bits = key - _SIGN_BIT
    if bits < 0:
        bits ^= 0x7FFFFFFF
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32).item())


def _radix_select(
    keys: Tensor,
    rank_from_total: Callable[[int], int],
    group: dist.ProcessGroup | None,
    num_invalid: int,
) -> tuple[int, int, int, int]:
    """k-th smallest key over all ranks. keys: [n] int64 in [0, 2^32) on this rank.

    rank_from_total maps the global number of keys to k; it runs on every rank on the same all-reduced
    count, so all ranks agree. num_invalid: this rank's count of rejected inputs, reduced with the first
    histogram so that a bad value on one rank raises on every rank instead of hanging the others.
    Returns (k, total, key of the k-th smallest, number of keys strictly below it); key is -1 if k == 0.
    """
    candidates = keys
    k_left = 0
    k = 0
    total = 0
    prefix = 0
    below = 0
    for shift in range(_KEY_BITS - RADIX_BITS, -1, -RADIX_BITS):
        digits = (candidates >> shift) & (_NUM_BINS - 1)
        hist = torch.zeros(_NUM_BINS + 1, dtype=torch.int64, device=keys.device)
        hist[:_NUM_BINS] = torch.bincount(digits, minlength=_NUM_BINS)
        if shift == _KEY_BITS - RADIX_BITS:
            hist[_NUM_BINS] = num_invalid
        _all_reduce_sum(hist, group)
        if shift == _KEY_BITS - RADIX_BITS:
            if int(hist[_NUM_BINS]) > 0:
                raise ValueError(f"values must be finite (no NaN/inf); {int(hist[_NUM_BINS])} invalid over all ranks")
            total = int(hist[:_NUM_BINS].sum())
            k = rank_from_total(total)
            if not 0 <= k <= total:
                raise ValueError(f"k must be in [0, {total}] (number of values over all ranks), got {k}")
            if k == 0:
                return 0, total, -1, 0
            k_left = k
        cumulative = hist[:_NUM_BINS].cumsum(0)
        digit = int(torch.searchsorted(cumulative, torch.tensor([k_left], device=keys.device)).item())
        before = int(cumulative[digit - 1]) if digit > 0 else 0
        below += before
        k_left -= before
        prefix |= digit << shift
        candidates = candidates[digits == digit]
    return k, total, prefix, below


def _selection_keys(values: Tensor, largest: bool) -> tuple[Tensor, int]:
    """fp32 values -> keys whose ascending order is the selection order, and the local invalid count."""
    flat = values.detach().reshape(-1).to(torch.float32)
    finite = torch.isfinite(flat)
    num_invalid = int((~finite).sum())
    keys = float_to_ordered_key(flat[finite])
    if largest:
        keys = _KEY_MAX - keys
    return keys, num_invalid


def _key_to_value(key: int, largest: bool) -> float:
    return ordered_key_to_float(_KEY_MAX - key if largest else key)


def radix_select_kth(
    values: Tensor, k: int, group: dist.ProcessGroup | None = None, largest: bool = True
) -> tuple[float, int]:
    """Exact k-th largest (or smallest) of the values held by all ranks of `group` (1-indexed k).

    values: [n] fp32 entropies on this rank (n may differ per rank, including 0); other float dtypes
    are rounded to fp32. k counts over all ranks, 1 <= k <= total. Collective: every rank must call.
    Returns (tau, number of values strictly greater (smaller when largest=False) than tau, all ranks).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if values.dim() != 1 or not values.is_floating_point():
        raise ValueError(f"values must be a 1-D float tensor, got {values.dtype} {tuple(values.shape)}")
    keys, num_invalid = _selection_keys(values, largest)
    _, _, key, beyond = _radix_select(keys, lambda _total: k, group, num_invalid)
    return _key_to_value(key, largest), beyond


def global_forking_masks(
    entropies: list[Tensor],
    response_masks: list[Tensor],
    rho: float,
    select: Literal["top", "bottom"] = "top",
    tie_rule: Literal["exact_k", "geq_tau"] = "exact_k",
    group: dist.ProcessGroup | None = None,
) -> tuple[list[Tensor], float, int]:
    """Forking masks for every local micro-batch under one threshold for the whole mini-batch.

    entropies, response_masks: one [batch, resp_len] tensor per local micro-batch (shapes may differ
    between micro-batches; a rank may pass an empty list). Collective over `group`.
    Returns (bool masks, one per micro-batch; tau = the k-th selected entropy as fp32, nan if k = 0;
    k = num_selected(global number of response tokens, rho)). Under `exact_k` exactly k tokens are
    selected over all ranks, ties at tau going to the earliest (rank, micro-batch, position); under
    `geq_tau` every token with H >= tau (H <= tau for `bottom`) is selected.
    """
    if len(entropies) != len(response_masks):
        raise ValueError(f"entropies ({len(entropies)}) and response_masks ({len(response_masks)}) differ in length")
    if select not in ("top", "bottom"):
        raise ValueError(f"select must be 'top' or 'bottom', got {select!r}")
    if tie_rule not in ("exact_k", "geq_tau"):
        raise ValueError(f"tie_rule must be 'exact_k' or 'geq_tau', got {tie_rule!r}")
    num_selected(0, rho)  # validates rho before any collective
    for index, (entropy, mask) in enumerate(zip(entropies, response_masks, strict=True)):
        if entropy.shape != mask.shape:
            raise ValueError(
                f"entropies[{index}] {tuple(entropy.shape)} and response_masks[{index}] {tuple(mask.shape)} differ"
            )
    largest = select == "top"
    valid = [mask.reshape(-1).bool() for mask in response_masks]
    local_values = torch.cat(
        [e.detach().reshape(-1)[v].to(torch.float32) for e, v in zip(entropies, valid, strict=True)]
        # Keeps the device of the inputs (CUDA under NCCL) even when there are no micro-batches here.
        + [torch.empty(0, dtype=torch.float32, device=entropies[0].device if entropies else "cpu")]
    )
    keys, num_invalid = _selection_keys(local_values, largest)
    k, _, tau_key, beyond = _radix_select(keys, lambda total: num_selected(total, rho), group, num_invalid)
    if k == 0:
        return [torch.zeros_like(v).reshape(m.shape) for v, m in zip(valid, response_masks, strict=True)], math.nan, 0

    selected = keys < tau_key
    ties = keys == tau_key
    if tie_rule == "geq_tau":
        selected |= ties
    else:
        selected |= _take_first_ties(ties, k - beyond, group)
    masks = []
    offset = 0
    for v, mask in zip(valid, response_masks, strict=True):
        out = torch.zeros_like(v)
        count = int(v.sum())
        out[v] = selected[offset : offset + count]
        offset += count
        masks.append(out.reshape(mask.shape))
    return masks, _key_to_value(tau_key, largest), k


def _take_first_ties(ties: Tensor, needed: int, group: dist.ProcessGroup | None) -> Tensor:
    """ties: [n] bool, this rank's tokens equal to tau in local order. Keeps the first `needed` ties
    over all ranks in rank order: one all-gather of a scalar tie count, no tokens exchanged."""
    rank, world = _rank_and_size(group)
    local = torch.tensor([int(ties.sum())], dtype=torch.int64, device=ties.device)
    if world > 1:
        counts = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(counts, local, group=group)
        before = int(sum(int(c) for c in counts[:rank]))
    else:
        before = 0
    keep = max(0, min(needed - before, int(local)))
    taken = torch.zeros_like(ties)
    taken[torch.nonzero(ties).squeeze(1)[:keep]] = True
    return taken
