"""The controller's side of a weight sync: which replicas, which backend, and the begin/send/commit order.

Control plane and data plane are split: the controller (which knows the replicas' URLs) sends each
replica its `begin` (the senders' addresses and ports) and `commit` over HTTP, while the learner's stage
senders broadcast the tensors straight to the replicas over gloo or NCCL. With the `checkpoint` method
the learner writes a safetensors directory on shared storage and every replica loads it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from forkrl.rollout.client import RolloutClient, SyncLayout, run_weight_sync, sync_layout
from forkrl.rollout.weight_sync import SyncSource
from forkrl.trainer.spec.components import WeightSyncSpec


class WeightSenders(Protocol):
    """What a weight push needs of the learner group."""

    @property
    def device(self) -> str: ...

    def open_weight_senders(self, group_prefix: str, backend: str, timeout_s: float,
                            token: str | None = None) -> list[dict[str, Any]]: ...

    def send_weights(self, version: int, world_size: int) -> list[dict[str, Any]]: ...

    def close_weight_senders(self) -> None: ...

    def write_weights(self, path: str) -> str: ...


def resolve_backend(configured: Literal["auto", "nccl", "gloo"], learner_device: str,
                    replica_devices: Sequence[str]) -> Literal["nccl", "gloo"]:
    """gloo carries CPU tensors anywhere; NCCL needs the learner and every replica on GPU."""
    all_gpu = learner_device.startswith("cuda") and all(d.startswith("cuda") for d in replica_devices)
    if configured == "nccl" and not all_gpu:
        cpu_sides = (["learner"] if not learner_device.startswith("cuda") else []) + [
            f"replica {i}" for i, d in enumerate(replica_devices) if not d.startswith("cuda")]
        raise ValueError(f"rollout.weight_sync.backend: nccl needs GPU tensors on both sides, but "
                         f"{', '.join(cpu_sides)} hold their weights on CPU (use auto or gloo)")
    if configured == "auto":
        return "nccl" if all_gpu else "gloo"
    return configured


@dataclass(frozen=True)
class PushReport:
    """One sync to a set of replicas."""

    version: int
    replicas: int
    backend: str
    senders: int
    seconds: float
    bytes: int


class WeightPusher:
    def __init__(self, learners: WeightSenders, spec: WeightSyncSpec, weights_root: Path,
                 log: Callable[[str], None] = print, control_token: str | None = None) -> None:
        """control_token: the job's token; the stage senders and the replicas prove it to each other."""
        self.learners = learners
        self.control_token = control_token
        self.spec = spec
        self.weights_root = weights_root
        self.log = log

    async def push(self, clients: Sequence[RolloutClient], version: int) -> PushReport:
        """Install the learner's current weights as `version` on every replica in `clients`."""
        start = time.perf_counter()
        if not clients:
            return PushReport(version, 0, "none", 0, 0.0, 0)
        if self.spec.method == "checkpoint":
            return await self._push_checkpoint(clients, version, start)
        layout = await sync_layout(clients)
        backend = resolve_backend(self.spec.backend, self.learners.device, layout.devices)
        return await self._broadcast(clients, layout, backend, version, start)

    async def _broadcast(self, clients: Sequence[RolloutClient], layout: SyncLayout, backend: Literal["nccl", "gloo"],
                         version: int, start: float) -> PushReport:
        prefix = f"forkrl-weights/v{version}/{uuid.uuid4().hex[:8]}"
        opened = await asyncio.to_thread(self.learners.open_weight_senders, prefix, backend, self.spec.timeout_s,
                                         self.control_token)
        sources = [SyncSource.model_validate(s) for s in opened]
        stats: list[dict[str, Any]] = []

        async def send() -> None:
            stats.extend(await asyncio.to_thread(self.learners.send_weights, version, layout.world_size))
            failed = [s for s in stats if s.get("error")]
            if failed:
                raise RuntimeError(f"weight sync v{version}: sender failed: {failed[0]['error']}")

        try:
            await run_weight_sync(clients, layout, sources, version, send, backend=backend,
                                  timeout_s=self.spec.timeout_s)
        finally:
            await asyncio.to_thread(self.learners.close_weight_senders)
        return PushReport(version, len(clients), backend, len(sources), time.perf_counter() - start,
                          int(sum(s.get("bytes", 0) for s in stats)))

    async def _push_checkpoint(self, clients: Sequence[RolloutClient], version: int, start: float) -> PushReport:
        path = self.weights_root / f"v{version}"
        if not (path / "model.safetensors").exists():
            await asyncio.to_thread(self.learners.write_weights, str(path))
        await asyncio.gather(*(client.load_checkpoint(str(path), version) for client in clients))
        self.prune(keep_version=version)
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return PushReport(version, len(clients), "checkpoint", 1, time.perf_counter() - start, size)

    def prune(self, keep_version: int) -> None:
        """Delete weight directories beyond the newest `keep_checkpoints` (never `keep_version`)."""
        if not self.weights_root.is_dir():
            return
        versions = sorted((int(p.name[1:]), p) for p in self.weights_root.iterdir()
                          if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit())
        for number, path in versions[: max(0, len(versions) - self.spec.keep_checkpoints)]:
            if number != keep_version:
                shutil.rmtree(path, ignore_errors=True)
