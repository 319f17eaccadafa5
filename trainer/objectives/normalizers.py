"""Global normalisers for a mini-batch split over micro-batches and data-parallel ranks.

Contract: with the returned context, the `loss` of every micro-batch on every DP rank sums to exactly the
loss of the whole mini-batch computed in one process. (If the gradient reduction *averages* over DP, the
caller multiplies its loss by the DP world size.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from forkrl.trainer.objectives.aggregation import sequence_count
from forkrl.trainer.objectives.config import ForkingConfig, ObjectiveConfig
from forkrl.trainer.objectives.types import LossContext
from forkrl.trainer.selection import num_selected


def _all_reduce_sum(values: list[float], group: dist.ProcessGroup | None, device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    # group=None means no data parallelism (as in global_selection), never "the default world group".
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor.tolist()


def mini_batch_context(
    cfg: ObjectiveConfig,
    response_masks: list[torch.Tensor],
    selection_masks: list[torch.Tensor] | None = None,
    group: dist.ProcessGroup | None = None,
    max_response_len: int | None = None,
) -> LossContext:
    """The LossContext shared by all micro-batches of one mini-batch on this rank.

    response_masks: one [batch, resp_len] mask per local micro-batch; selection_masks: the precomputed
    global forking masks (scope `mini_batch_global`), if any; group: the data-parallel group (None = no DP,
    no communication).
    `token_mean_scope='micro_batch'` reproduces verl-legacy scaling: each micro-batch is normalised by its
    own counts and weighted 1 / (micro-batches over all ranks).
    """
    if not response_masks:
        raise ValueError("mini_batch_context needs at least one micro-batch")
    device = response_masks[0].device
    if cfg.token_mean_scope == "micro_batch":
        (total_micro_batches,) = _all_reduce_sum([float(len(response_masks))], group, device)
        return LossContext(loss_scale=1.0 / total_micro_batches, max_response_len=max_response_len)
    if selection_masks is not None:
        tokens = sum(float((s.bool() & m.bool()).sum()) for s, m in zip(selection_masks, response_masks, strict=True))
    elif isinstance(cfg, ForkingConfig):
        # Per-micro-batch selection keeps exactly k tokens of each micro-batch (exact_k), known in advance.
        tokens = float(sum(num_selected(int(m.bool().sum()), cfg.rho) for m in response_masks))
    else:
        tokens = sum(float(m.bool().sum()) for m in response_masks)
    sequences = float(sum(sequence_count(m) for m in response_masks))
    token_total, sequence_total = _all_reduce_sum([tokens, sequences], group, device)
    return LossContext(token_normalizer=token_total, sequence_normalizer=sequence_total, loss_scale=1.0,
                       max_response_len=max_response_len)
