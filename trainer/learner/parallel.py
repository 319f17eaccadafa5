"""Process groups of one learner rank, built from `ParallelConfig` (the single owner of the dims).

Wraps megatron-core's `parallel_state` (the one global the learner keeps) and exposes the ranks
and groups the learner code needs, so nothing else reads `parallel_state` directly.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from forkrl.trainer.learner import cpu_shim
from forkrl.trainer.learner.config import ParallelConfig


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """This rank's coordinates in the TP x PP x DP grid (read-only view of megatron's groups)."""

    tp: int
    pp: int
    dp: int
    vpp: int | None
    tp_rank: int
    pp_rank: int
    dp_rank: int
    world_size: int
    global_rank: int

    @property
    def tp_group(self) -> dist.ProcessGroup:
        return parallel_state.get_tensor_model_parallel_group()

    @property
    def pp_group(self) -> dist.ProcessGroup:
        return parallel_state.get_pipeline_model_parallel_group()

    @property
    def dp_group(self) -> dist.ProcessGroup:
        return parallel_state.get_data_parallel_group()

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def pp_last_global_rank(self) -> int:
        return parallel_state.get_pipeline_model_parallel_last_rank()

    @property
    def key(self) -> str:
        """Stable name of this rank's shard: pp{p}_tp{t}_dp{d} of a tp x pp x dp layout."""
        return f"pp{self.pp_rank}_tp{self.tp_rank}_dp{self.dp_rank}"

    def describe(self) -> dict[str, int | None]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "vpp": self.vpp}


def initialize_parallel(parallel: ParallelConfig, seed: int, use_gpu: bool) -> ParallelLayout:
    """Build megatron's TP/PP/DP groups on the already-initialised default process group and seed RNGs.

    Idempotent per process only through `destroy_parallel()`: call that before re-initialising with
    another layout (tests and benchmarks do).
    """
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed must be initialised before the learner (see learner.launch)")
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
    else:
        cpu_shim.install()
    world = dist.get_world_size()
    dp = parallel.data_parallel_size(world)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
    )
    seed_everything(seed, use_gpu)
    return ParallelLayout(
        tp=parallel.tensor_parallel,
        pp=parallel.pipeline_parallel,
        dp=dp,
        vpp=parallel.virtual_pipeline,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        world_size=world,
        global_rank=dist.get_rank(),
    )


def seed_everything(seed: int, use_gpu: bool) -> None:
    """Default generator = seed (same on every rank); megatron's tracker adds the TP-distinct states."""
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    if not use_gpu:
        # megatron seeded the (absent) CUDA generator with `seed`; on CPU the default one plays that role.
        torch.manual_seed(seed)


def destroy_parallel() -> None:
    """Tear down megatron's groups (the default process group stays)."""
    parallel_state.destroy_model_parallel()
