"""The learner ranks as Ray actors, gang-scheduled in one placement group, joined in a gloo (CPU) or
NCCL (GPU) world. The controller calls every rank with the same global batch (each rank takes its
data-parallel share, see `Learner`); rank 0's answer is returned."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
from collections.abc import Sequence
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.learner.launch import free_port


class LearnerRank:
    """One learner rank inside a Ray actor process (wrapped with `ray.remote` by LearnerGroup)."""

    def __init__(self, rank: int, world_size: int, master_port: int, threads: int | None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.master_port = master_port
        if threads:
            torch.set_num_threads(threads)
        self.learner: Any = None

    def setup(self, spec_json: str, objective_json: str, model_path: str, timeout_s: float) -> dict[str, Any]:
        """Join the process group and build the rank's model (collective: call on every rank at once)."""
        import torch.distributed as dist

        from forkrl.trainer.learner.learner import Learner
        from forkrl.trainer.objectives.config import parse_objective

        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(self.master_port), LOCAL_RANK=str(self.rank))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{self.master_port}", rank=self.rank,
                                world_size=self.world_size, timeout=datetime.timedelta(seconds=timeout_s))
        spec = LearnerSpec.model_validate_json(spec_json)
        self.learner = Learner(spec, parse_objective(json.loads(objective_json)), model_path=model_path)
        return {"rank": self.rank, "layout": self.learner.layout.describe()}

    def compute_logprobs(self, batch: LearnerBatch, which: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        stats = self.learner.compute_logprobs(batch, which)
        return (stats.logp, stats.entropy) if self.rank == 0 else None

    def train_step(self, batch: LearnerBatch) -> dict[str, float] | None:
        metrics = self.learner.train_step(batch)
        return metrics if self.rank == 0 else None

    def push_weights(self, urls: Sequence[str], version: int, timeout_s: float) -> dict[str, float] | None:
        """Broadcast the exported weights to the rollout replicas at `urls` (rank 0 sends; every rank takes
        part in the export's gathers)."""
        weights = self.learner.export_weights()
        if self.rank != 0:
            for _ in weights:
                pass
            return None
        from forkrl.rollout.client import RolloutClient, push_weights

        async def push() -> dict[str, float]:
            clients = [RolloutClient(url, timeout_s=timeout_s) for url in urls]
            try:
                stats = await push_weights(clients, weights, version, timeout_s=timeout_s)
            finally:
                await asyncio.gather(*(c.aclose() for c in clients))
            return {"tensors": float(stats.num_tensors), "bytes": float(stats.num_bytes), "seconds": stats.seconds}

        self.learner.weight_version = version
        return asyncio.run(push())

    def write_weights(self, path: str) -> str | None:
        """Export to a safetensors directory (checkpoint-directory weight sync and the final model)."""
        from forkrl.rollout.weight_sync import write_checkpoint

        weights = self.learner.export_weights()
        if self.rank != 0:
            for _ in weights:
                pass
            return None
        return str(write_checkpoint(weights, path))

    def save(self, path: str, data_state: dict[str, Any]) -> None:
        self.learner.save(path, data_state)

    def load(self, path: str) -> dict[str, Any]:
        return self.learner.load(path)

    def metrics(self) -> dict[str, float]:
        return self.learner.metrics()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LearnerGroup:
    """Creates `world_size` LearnerRank actors in a PACK placement group and fans calls out to them."""

    def __init__(self, spec: LearnerSpec, objective: Any, model_path: str, world_size: int,
                 cpus_per_rank: float = 1.0, gpus_per_rank: float = 0.0, threads: int | None = None,
                 timeout_s: float = 600.0) -> None:
        self.world_size = world_size
        self.placement_group = placement_group([{"CPU": cpus_per_rank, "GPU": gpus_per_rank} if gpus_per_rank
                                                else {"CPU": cpus_per_rank}] * world_size, strategy="PACK")
        ray.get(self.placement_group.ready(), timeout=timeout_s)
        actor_cls = ray.remote(LearnerRank)
        port = free_port()
        self.ranks = [
            actor_cls.options(
                num_cpus=cpus_per_rank, num_gpus=gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, rank),
            ).remote(rank, world_size, port, threads)
            for rank in range(world_size)
        ]
        self.layouts = ray.get([r.setup.remote(spec.model_dump_json(), objective.model_dump_json(), model_path,
                                               timeout_s) for r in self.ranks])

    def _all(self, method: str, *args: Any) -> Any:
        """Call `method` on every rank at once (collectives need all of them) and return rank 0's result."""
        return ray.get([getattr(r, method).remote(*args) for r in self.ranks])[0]

    def compute_logprobs(self, batch: LearnerBatch, which: str = "policy") -> tuple[torch.Tensor, torch.Tensor]:
        """(logp, entropy), both [B, S] token-aligned like batch.input_ids."""
        return self._all("compute_logprobs", batch, which)

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        return self._all("train_step", batch)

    def push_weights(self, urls: Sequence[str], version: int, timeout_s: float = 300.0) -> dict[str, float]:
        return self._all("push_weights", list(urls), version, timeout_s)

    def write_weights(self, path: str) -> str:
        return self._all("write_weights", path)

    def save(self, path: str, data_state: dict[str, Any]) -> None:
        self._all("save", path, data_state)

    def load(self, path: str) -> dict[str, Any]:
        return self._all("load", path)

    def metrics(self) -> dict[str, float]:
        return self._all("metrics")

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # a dead rank must not block tearing the rest down
            ray.get([r.shutdown.remote() for r in self.ranks], timeout=30)
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement_group)
