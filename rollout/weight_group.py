"""A process group of its own between the learner's sender rank and the rollout receivers.

Built directly from a `TCPStore` (not `init_process_group`), so it coexists with whatever default group
the learner rank or the vLLM worker already has. gloo carries CPU tensors, NCCL carries GPU tensors.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from forkrl.rollout.network import export_socket_ifname


@dataclass
class SyncGroup:
    store: dist.Store
    group: dist.ProcessGroup
    rank: int
    world_size: int
    device: torch.device

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        """In-place broadcast from `root` (blocking)."""
        self.group.broadcast(tensor, root).wait()
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()


def open_sync_group(
    store: dist.Store,
    rank: int,
    world_size: int,
    backend: str,
    group_name: str,
    timeout_s: float,
    device: torch.device,
    local_address: str,
) -> SyncGroup:
    """Joins the group (blocks until every rank has joined or `timeout_s` passes).

    local_address: this rank's address on the network the peers share. gloo binds its transport to it
    (its default would follow the hostname, which may resolve to a loopback address); NCCL's bootstrap
    gets the matching interface through NCCL_SOCKET_IFNAME unless that is set already.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    prefixed = dist.PrefixStore(f"{group_name}/", store)
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_address)]
        group: dist.ProcessGroup = dist.ProcessGroupGloo(prefixed, rank, world_size, options)
    elif backend == "nccl":
        if device.type != "cuda":
            raise ValueError("backend: nccl needs a CUDA device")
        export_socket_ifname(local_address)
        torch.cuda.set_device(device)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
    else:
        raise ValueError(f"backend: unknown backend {backend!r} (gloo or nccl)")
    return SyncGroup(store=store, group=group, rank=rank, world_size=world_size, device=device)
