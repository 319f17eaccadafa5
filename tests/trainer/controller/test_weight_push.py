"""The controller's weight-push decisions: backend from where the weights live, pruning of weight dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkrl.trainer.controller.weight_push import WeightPusher, resolve_backend
from forkrl.trainer.spec.components import WeightSyncSpec


@pytest.mark.parametrize("configured, learner, replicas, expected", [
    ("auto", "cuda:0", ["cuda", "cuda"], "nccl"),
    ("auto", "cuda:0", ["cuda", "cpu"], "gloo"),   # one CPU replica: gloo for everyone
    ("auto", "cpu", ["cuda"], "gloo"),
    ("auto", "cpu", ["cpu"], "gloo"),
    ("gloo", "cuda:0", ["cuda"], "gloo"),          # allowed: tensors go through host memory
    ("nccl", "cuda:3", ["cuda"], "nccl"),
])
def test_backend_follows_devices(configured: str, learner: str, replicas: list[str], expected: str) -> None:
    assert resolve_backend(configured, learner, replicas) == expected  # type: ignore[arg-type]


def test_nccl_with_a_cpu_side_names_the_field_and_the_side() -> None:
    with pytest.raises(ValueError, match=r"rollout.weight_sync.backend: nccl .* replica 1 hold"):
        resolve_backend("nccl", "cuda:0", ["cuda", "cpu"])
    with pytest.raises(ValueError, match="learner"):
        resolve_backend("nccl", "cpu", ["cuda"])


def test_checkpoint_weight_dirs_are_pruned_to_the_newest(tmp_path: Path) -> None:
    for version in (1, 2, 3, 10):
        (tmp_path / f"v{version}").mkdir()
    (tmp_path / "notes").mkdir()
    pusher = WeightPusher(learners=None, spec=WeightSyncSpec(method="checkpoint", keep_checkpoints=2),  # type: ignore[arg-type]
                          weights_root=tmp_path)
    pusher.prune(keep_version=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "v10", "v3"]  # numeric order, not "v10" < "v2"


class _Learners:
    """Stands in for the learner group's export: writes a real safetensors directory."""

    device = "cpu"

    def __init__(self) -> None:
        self.written: list[str] = []

    def write_weights(self, path: str) -> str:
        import torch

        from forkrl.rollout.weight_checkpoint import write_checkpoint

        self.written.append(path)
        return str(write_checkpoint([("w", torch.full((2,), float(len(self.written))))], path))


class _Replica:
    def __init__(self) -> None:
        self.loaded: list[tuple[str, int]] = []

    async def load_checkpoint(self, path: str, version: int) -> dict:
        self.loaded.append((path, version))
        return {}


def test_checkpoint_method_writes_once_per_version_and_every_replica_loads_it(tmp_path: Path) -> None:
    import asyncio

    learners, replicas = _Learners(), [_Replica(), _Replica()]
    pusher = WeightPusher(learners, WeightSyncSpec(method="checkpoint", keep_checkpoints=2), tmp_path)  # type: ignore[arg-type]
    for version in (1, 2, 3):
        report = asyncio.run(pusher.push(replicas, version))  # type: ignore[arg-type]
        assert report.backend == "checkpoint" and report.replicas == 2 and report.bytes > 0
    # A replica that comes back later gets the current version from the same directory, not a new export.
    late = _Replica()
    asyncio.run(pusher.push([late], 3))  # type: ignore[list-item]
    assert learners.written == [str(tmp_path / f"v{v}") for v in (1, 2, 3)]
    assert late.loaded == [(str(tmp_path / "v3"), 3)]
    assert all(r.loaded == [(str(tmp_path / f"v{v}"), v) for v in (1, 2, 3)] for r in replicas)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2", "v3"]
