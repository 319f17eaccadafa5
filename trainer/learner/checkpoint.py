"""Learner checkpoints with megatron dist-checkpointing (torch.distributed.checkpoint underneath).

Model and optimizer state are saved as sharded tensors in model space (one logical tensor per
parameter, each rank writing its own slice), so a checkpoint saved under one TP/PP/DP layout loads
under another. Plain values (LR scheduler, counters, the controller's data cursor, the layout) go
in the common state. RNG states are per rank: restored when the layout is unchanged (exact resume),
re-seeded otherwise (a resharded run cannot replay another layout's streams).
"""

from __future__ import annotations

import logging
import queue
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

if TYPE_CHECKING:
    from forkrl.trainer.learner.learner import Learner

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
# Model-space optimizer state (one tensor per parameter, like a plain Adam state dict): any TP/PP/DP
# layout can load it. Saving gathers each DP group's optimizer shards (megatron's
# `fully_reshardable`; its `fully_sharded_model_space` is not loadable by 0.16's dist-checkpointing).
SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _rng_state() -> dict[str, Any]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


@torch.no_grad()
def _materialise_optimizer_state(optimizer: Any) -> None:
    """Give a fresh torch Adam its per-parameter state (step, moments) without changing any parameter.

    megatron reads `step` from the inner optimizer's state when building the template to load into,
    and only apex/TE optimizers have it before the first step. One step with lr = wd = 0 and zero
    gradients creates it; the loaded checkpoint then overwrites every value.
    """
    for inner in [getattr(o, "optimizer", o) for o in getattr(optimizer, "chained_optimizers", [optimizer])]:
        if inner is None or len(inner.state) > 0:
            continue
        saved = [(group["lr"], group["weight_decay"]) for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"], group["weight_decay"] = 0.0, 0.0
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        for group, (lr, wd) in zip(inner.param_groups, saved, strict=True):
            group["lr"], group["weight_decay"] = lr, wd
            for param in group["params"]:
                param.grad = None


def _load_optimizer(optimizer: Any, state: Any) -> None:
    """`optimizer.load_state_dict`, working around two megatron 0.16 + torch Adam (no apex/TE) bugs.

    With torch Adam, megatron's `load_state_dict` first inserts a `step` entry in every parameter's
    state and then copies the checkpoint's model-space state over *all* keys of that state, failing
    on `step`, which the checkpoint keeps in its param groups. So the non-parameter part is loaded
    first, `step` is set aside while the parameter state is copied, then put back.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [state] if len(chained) == 1 else [v for _, v in sorted(state.items())]
    for sub, sub_state in zip(chained, states, strict=True):
        reshardable = sub_state.get("param_state_sharding_type") == "fully_reshardable"
        if not (isinstance(sub, DistributedOptimizer) and reshardable):
            sub.load_state_dict(sub_state)
            continue
        param_state = sub_state.pop("param_state")
        sharding = sub_state.pop("param_state_sharding_type")
        sub.load_state_dict(sub_state)
        steps = {param: st.pop("step") for param, st in sub.optimizer.state.items() if "step" in st}
        sub.load_parameter_state_from_fully_reshardable(param_state)
        for param, step in steps.items():
            sub.optimizer.state[param]["step"] = step
        sub_state["param_state"], sub_state["param_state_sharding_type"] = param_state, sharding
    _unshare_adam_steps(optimizer)


def _unshare_adam_steps(optimizer: Any) -> None:
    """megatron's torch-Adam load puts *one* `step` tensor in every parameter's state; Adam increments
    it in place per parameter, so each parameter needs its own copy."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def _layout_key(learner: Learner) -> dict[str, int | None]:
    return learner.layout.describe()


def _sharded_state(learner: Learner, is_loading: bool) -> dict[str, Any]:
    layout = learner.layout
    model = {
        f"model{i}": chunk.sharded_state_dict(metadata=dict(SHARDING_METADATA))
        for i, chunk in enumerate(learner.chunks)
    }
    merged: dict[str, Any] = {}
    for part in model.values():
        merged.update(part)
    state: dict[str, Any] = dict(model)
    state["optimizer"] = learner.optimizer.sharded_state_dict(
        merged, is_loading=is_loading, metadata=dict(SHARDING_METADATA)
    )
    state["rng"] = ShardedObject(
        "learner.rng_state",
        _rng_state(),
        (layout.pp, layout.tp, layout.dp),
        (layout.pp_rank, layout.tp_rank, layout.dp_rank),
        replica_id=0,
    )
    return state


def _in_process_results_queue() -> None:
    """Give megatron's save an in-process queue for its write results.

    On first use megatron creates that queue from a `spawn` multiprocessing Manager: a server process per
    rank that imports torch afresh (several CPU-seconds per rank, on every run's first checkpoint) only to
    hand each save's results from this process back to itself. Saves here are synchronous (the writes run
    in this process and in workers it forks, which report on queues of their own), so a thread queue
    carries them as well. Were a save ever made asynchronous, its results would not arrive here and
    megatron would fail it ("results_queue should not be empty"), not lose them.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", "absent") is None:  # unset, under the name 0.16 uses
        filesystem_async._results_queue = queue.Queue()


def save(learner: Learner, path: Path, data_state: dict[str, Any]) -> None:
    """Write the checkpoint directory `path` (created; must not already hold a checkpoint)."""
    _in_process_results_queue()
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise FileExistsError(f"checkpoint directory {path} is not empty")
    dist.barrier()
    state = _sharded_state(learner, is_loading=False)
    state["common"] = {
        "format_version": FORMAT_VERSION,
        "scheduler": learner.scheduler.state_dict(),
        "weight_version": learner.weight_version,
        "consumed_sequences": learner.consumed_sequences,
        "data_state": data_state,
        "layout": _layout_key(learner),
    }
    dist_checkpointing.save(state, str(path))
    dist.barrier()


def load(learner: Learner, path: Path) -> dict[str, Any]:
    """Restore `learner` from `path`; returns the saved data cursor."""
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    common = dist_checkpointing.load_common_state_dict(str(path))["common"]
    if common.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version={common.get('format_version')}, want {FORMAT_VERSION}")
    same_layout = common["layout"] == _layout_key(learner)
    _materialise_optimizer_state(learner.optimizer)
    template = _sharded_state(learner, is_loading=True)
    if not same_layout:
        template.pop("rng")
        log.warning("checkpoint layout %s != current %s: RNG states re-seeded", common["layout"], _layout_key(learner))
    state = dist_checkpointing.load(template, str(path))
    for i, chunk in enumerate(learner.chunks):
        chunk.load_state_dict(state[f"model{i}"], strict=True)
    _load_optimizer(learner.optimizer, state["optimizer"])
    learner.scheduler.load_state_dict(common["scheduler"])
    learner.weight_version = int(common["weight_version"])
    learner.consumed_sequences = int(common["consumed_sequences"])
    if same_layout:
        _set_rng_state(state["rng"])
    return dict(common["data_state"])
