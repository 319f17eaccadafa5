"""Start N learner ranks as processes of this one host (tests, benchmarks): gloo on CPU, NCCL with one
GPU each. Runs across hosts go through Ray (`trainer/controller/learner_group.py`).

`run_world(fn, world_size, *args)` runs `fn(*args)` on every rank after `init_process_group`
and returns the per-rank results (anything `torch.save` can write). Ranks come from a forkserver
that has already imported torch and megatron-core, so a world costs one import, not one per rank.
`fn` must be importable by name (a module-level function).
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from forkrl.rollout.network import LOCAL_BIND_HOST

PRELOAD_MODULES = (
    "torch",
    "forkrl.trainer.learner.megatron_preload",  # before any megatron module: see megatron_import.py
    "megatron.core.models.gpt",
    "megatron.core.pipeline_parallel",
    "megatron.core.distributed",
    "megatron.core.optimizer",
    "megatron.core.dist_checkpointing",
    "forkrl.trainer.learner.learner",
)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((LOCAL_BIND_HOST, 0))
        return int(sock.getsockname()[1])


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    out_dir: str,
    threads: int,
    timeout_s: float,
    backend: str,
    args: Sequence[Any],
) -> None:
    torch.set_num_threads(threads)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR=LOCAL_BIND_HOST,
        MASTER_PORT=str(port),
    )
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        backend,
        init_method=f"tcp://{LOCAL_BIND_HOST}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        result = fn(*args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def run_world(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    threads: int | None = None,
    timeout_s: float = 300.0,
    backend: str = "gloo",
) -> list[Any]:
    """Run `fn(*args)` on `world_size` ranks; returns [result of rank 0, rank 1, ...].

    A failure on any rank raises in the caller with that rank's traceback.
    threads: intra-op threads per rank (default: the cores divided among the ranks, at least 1).
    timeout_s: collective timeout, so a mismatched collective fails instead of hanging.
    backend: "gloo" (CPU learner ranks) or "nccl" (one GPU per rank).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // world_size)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD_MODULES))
    with tempfile.TemporaryDirectory(prefix="forkrl-world-") as out_dir:
        torch_mp.start_processes(
            _rank_main,
            args=(fn, world_size, free_port(), out_dir, threads, timeout_s, backend, tuple(args)),
            nprocs=world_size,
            join=True,
            start_method="forkserver",
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
