"""Global normalisers for a mini-batch split over micro-batches and data-parallel ranks.

Contract: with the returned context, the `loss` of every micro-batch on every DP rank sums to exactly the
loss of the whole mini-batch computed in one process. (If the gradient reduction *averages* over DP, the
caller multiplies its loss by the DP world size.)

A normaliser must count the tokens the loss will really use. Where that count depends on the entropies
(a global forking threshold, ties kept under `geq_tau`, Archer's per-type KL means), the token split is
computed before the loss with `token_split_masks` and handed both to `mini_batch_context` and to each
micro-batch's `LossInputs.selection_mask`, so that the count and the loss see the very same tokens.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from forkrl.trainer.global_selection import global_forking_masks
from forkrl.trainer.objectives.aggregation import sequence_count
from forkrl.trainer.objectives.archer import reasoning_token_mask
from forkrl.trainer.objectives.config import ArcherConfig, ForkingConfig, ObjectiveConfig
from forkrl.trainer.objectives.types import LossContext
from forkrl.trainer.selection import num_selected, topk_token_mask


def _all_reduce_sum(values: list[float], group: dist.ProcessGroup | None, device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    # group=None means no data parallelism (as in global_selection), never "the default world group".
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor.tolist()


def needs_token_split(cfg: ObjectiveConfig) -> bool:
    """Whether the token split must be computed from the entropies before the loss (`token_split_masks`).

    Forking `mini_batch_global`: the threshold spans all micro-batches and ranks. Forking `geq_tau` under a
    global token-mean: ties at tau are all kept, so the normaliser (the number of selected tokens) is only
    known from the entropies. Forking `exact_k` per micro-batch needs nothing: it keeps exactly k tokens.
    Archer token-mean with `kl_norm='per_type'` and a KL term: each type's KL mean divides by the number of
    tokens of that type in the whole mini-batch, which depends on every response's entropy quantile.
    """
    if isinstance(cfg, ForkingConfig):
        return cfg.scope == "mini_batch_global" or (cfg.tie_rule == "geq_tau" and cfg.token_mean_scope == "global")
    if isinstance(cfg, ArcherConfig):
        return _archer_type_means_are_global(cfg)
    return False


def _archer_type_means_are_global(cfg: ArcherConfig) -> bool:
    return (cfg.loss_agg == "token-mean" and cfg.kl_norm == "per_type" and cfg.needs_reference
            and cfg.token_mean_scope == "global")


def token_split_masks(
    cfg: ObjectiveConfig,
    entropies: list[torch.Tensor],
    response_masks: list[torch.Tensor],
    group: dist.ProcessGroup | None = None,
) -> list[torch.Tensor]:
    """The tokens the objective trains on, per local micro-batch (bool [batch, resp_len] each).

    entropies, response_masks: one [batch, resp_len] tensor per micro-batch; group: the data-parallel group
    (collective for `mini_batch_global`, None = no DP). Pass the result as `selection_masks` to
    `mini_batch_context` and as `LossInputs.selection_mask` of each micro-batch.
    Forking: the selected (forking) tokens. Archer: the reasoning (high-entropy) tokens of each response.
    """
    return token_split(cfg, entropies, response_masks, group)[0]


def token_split(
    cfg: ObjectiveConfig,
    entropies: list[torch.Tensor],
    response_masks: list[torch.Tensor],
    group: dist.ProcessGroup | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """`token_split_masks` and the forking thresholds that made them: one for scope `mini_batch_global`, one
    per micro-batch otherwise (nan where nothing was selected); none for Archer (a threshold per response)."""
    if len(entropies) != len(response_masks):
        raise ValueError(f"entropies ({len(entropies)}) and response_masks ({len(response_masks)}) differ in length")
    if isinstance(cfg, ArcherConfig):
        # Per response: no communication, whatever the data-parallel layout.
        return [reasoning_token_mask(e, m.bool(), cfg.rho, cfg.tie_rule)
                for e, m in zip(entropies, response_masks, strict=True)], []
    if not isinstance(cfg, ForkingConfig):
        raise ValueError(f"objective {cfg.name!r} has no precomputed token split")
    if cfg.scope == "mini_batch_global":
        masks, tau, _ = global_forking_masks(entropies, response_masks, cfg.rho, cfg.select, cfg.tie_rule, group=group)
        return masks, [tau]
    splits = [topk_token_mask(e, m, cfg.rho, cfg.select, cfg.tie_rule) for e, m in zip(entropies, response_masks,
                                                                                       strict=True)]
    return [mask for mask, _ in splits], [float(tau) for _, tau in splits]


def _forking_token_count(
    cfg: ForkingConfig, response_masks: list[torch.Tensor], selected: list[torch.Tensor] | None
) -> float:
    if selected is not None:
        return float(sum(int(s.sum()) for s in selected))
    if needs_token_split(cfg):
        raise ValueError(
            f"forking scope={cfg.scope!r}, tie_rule={cfg.tie_rule!r}: the number of selected tokens depends on the "
            "entropies; pass selection_masks from token_split_masks (and the same masks as "
            "LossInputs.selection_mask)"
        )
    # exact_k per micro-batch keeps exactly k of each micro-batch's tokens whatever the entropies, so the
    # count of the real mask is known before the forward pass that produces them.
    return float(sum(num_selected(int(m.bool().sum()), cfg.rho) for m in response_masks))


def mini_batch_context(
    cfg: ObjectiveConfig,
    response_masks: list[torch.Tensor],
    selection_masks: list[torch.Tensor] | None = None,
    group: dist.ProcessGroup | None = None,
    max_response_len: int | None = None,
) -> LossContext:
    """The LossContext shared by all micro-batches of one mini-batch on this rank.

    response_masks: one [batch, resp_len] mask per local micro-batch; selection_masks: the precomputed token
    split (`token_split_masks`), required where `needs_token_split(cfg)`; group: the data-parallel group
    (None = no DP, no communication); max_response_len: the run's maximum response length, L of
    seq-mean-token-sum-norm unless the objective sets token_sum_norm_length.
    `token_mean_scope='micro_batch'` reproduces verl-legacy scaling: each micro-batch is normalised by its
    own counts and weighted 1 / (micro-batches over all ranks).
    """
    if not response_masks:
        raise ValueError("mini_batch_context needs at least one micro-batch")
    if selection_masks is not None and len(selection_masks) != len(response_masks):
        raise ValueError(f"selection_masks ({len(selection_masks)}) and response_masks ({len(response_masks)}) "
                         "differ in length")
    device = response_masks[0].device
    if cfg.token_mean_scope == "micro_batch":
        (total_micro_batches,) = _all_reduce_sum([float(len(response_masks))], group, device)
        return LossContext(loss_scale=1.0 / total_micro_batches, max_response_len=max_response_len)
    selected = None
    if selection_masks is not None:
        selected = [s.bool() & m.bool() for s, m in zip(selection_masks, response_masks, strict=True)]
    response_tokens = float(sum(int(m.bool().sum()) for m in response_masks))
    tokens = _forking_token_count(cfg, response_masks, selected) if isinstance(cfg, ForkingConfig) else response_tokens
    reasoning = 0.0
    type_means = isinstance(cfg, ArcherConfig) and _archer_type_means_are_global(cfg)
    if type_means:
        if selected is None:
            raise ValueError(
                "archer token-mean with kl_norm='per_type': the per-type KL means divide by the global number of "
                "tokens of each type; pass selection_masks (the reasoning masks) from token_split_masks (and the "
                "same masks as LossInputs.selection_mask)"
            )
        reasoning = float(sum(int(s.sum()) for s in selected))
    sequences = float(sum(sequence_count(m) for m in response_masks))
    # One all-reduce for every count.
    token_total, sequence_total, all_tokens, reasoning_total = _all_reduce_sum(
        [tokens, sequences, response_tokens, reasoning], group, device
    )
    return LossContext(
        token_normalizer=token_total,
        sequence_normalizer=sequence_total,
        loss_scale=1.0,
        max_response_len=max_response_len,
        knowledge_token_normalizer=all_tokens - reasoning_total if type_means else None,
        reasoning_token_normalizer=reasoning_total if type_means else None,
    )
