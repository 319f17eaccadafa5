"""The rollout engine as a Ray actor (local mode): the same engine, called in-process without HTTP.

    actor = create_rollout_actor(RolloutServerConfig(model=path), num_cpus=1)
    results = ray.get(actor.generate.remote([request.model_dump() for request in requests]))

Requests and results cross the actor boundary as plain dicts (the HTTP wire format), weights as
(HF name, CPU tensor) pairs.
"""

from __future__ import annotations

from typing import Any

import torch

from forkrl.rollout.config import RolloutServerConfig, build_engine
from forkrl.rollout.types import GenerateRequest
from forkrl.rollout.weight_sync import WeightSyncBegin


class RolloutWorker:
    """Plain class wrapped by `ray.remote`; also usable directly in a process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = RolloutServerConfig.model_validate(config)
        self.engine = build_engine(self.config)

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parsed = [GenerateRequest.model_validate(r) for r in requests]
        return [result.to_dict() for result in self.engine.generate(parsed)]

    def weight_version(self) -> int | None:
        return self.engine.weight_version

    def update_weights(self, weights: list[tuple[str, torch.Tensor]], version: int) -> int | None:
        self.engine.update_weights(weights, version)
        return self.engine.weight_version

    def load_checkpoint(self, path: str, version: int) -> int | None:
        self.engine.load_checkpoint(path, version)
        return self.engine.weight_version

    def begin_weight_sync(self, begin: dict[str, Any], token: str | None = None) -> None:
        self.engine.begin_weight_sync(WeightSyncBegin.model_validate(begin), token)

    def commit_weight_sync(self, version: int, timeout_s: float = 300.0) -> int | None:
        self.engine.commit_weight_sync(version, timeout_s)
        return self.engine.weight_version

    def sleep(self, level: int = 1) -> None:
        self.engine.sleep(level)

    def wake(self) -> None:
        self.engine.wake()

    def health(self) -> dict[str, Any]:
        return self.engine.health().to_dict()


def create_rollout_actor(config: RolloutServerConfig, *, num_cpus: float = 1, num_gpus: float = 0, **options):
    """Starts a `RolloutWorker` actor (Ray must be initialised by the caller)."""
    import ray

    actor_class = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, **options)(RolloutWorker)
    return actor_class.remote(config.model_dump())
