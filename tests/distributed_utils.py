"""Run a function on N real processes joined in a gloo group on 127.0.0.1 (for distributed tests).

    results = run_on_ranks(my_fn, world_size=2, args=(...,))

`my_fn(rank, world_size, *args)` must be a module-level function (it is pickled by name into spawned
processes). It runs after `torch.distributed` is initialised with the default (world) gloo group; its
return value (tensors, numbers, containers of them) comes back through `torch.save`, one entry per
rank. An exception on any rank fails the call with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    out_dir: str,
    args: tuple[Any, ...],
) -> None:
    # Two ranks share 2 cores with other work: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        result = fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run_on_ranks(fn: Callable[..., Any], world_size: int = 2, args: tuple[Any, ...] = ()) -> list[Any]:
    """Returns [fn's result on rank 0, rank 1, ...]."""
    with tempfile.TemporaryDirectory(prefix="forkrl-dist-") as out_dir:
        mp.start_processes(
            _rank_entry,
            args=(fn, world_size, free_port(), out_dir, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
