"""The learner group's fan-out fails fast and names the rank that died, not the survivors it left
blocked in a collective (real Ray actors on a private local Ray)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import ray

from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.controller import learner_group
from forkrl.trainer.controller.learner_group import LearnerFailure, LearnerGroup
from forkrl.trainer.controller.placement import RankPlacement


class _Rank:
    """Rank `dies` exits abruptly (its host lost); the others block as if waiting in a collective."""

    def __init__(self, rank: int, dies: int | None, raises: int | None) -> None:
        self.rank, self.dies, self.raises = rank, dies, raises

    def train_step(self) -> int:
        if self.rank == self.dies:
            time.sleep(0.5)
            os._exit(1)
        if self.rank == self.raises:
            raise ValueError(f"bad batch on rank {self.rank}")
        if self.dies is not None or self.raises is not None:
            time.sleep(600)  # blocked on the lost peer
        return self.rank


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address=LOCAL_BIND_HOST)
    yield
    ray.shutdown()


@pytest.fixture
def make_group(local_ray: None) -> Iterator:
    made: list[LearnerGroup] = []

    def make(dies: int | None = None, raises: int | None = None) -> LearnerGroup:
        group = LearnerGroup.__new__(LearnerGroup)  # the fan-out alone: no placement group, no model
        group.world_size, group.failed = 3, None
        # Ranks 0, 2 on one node and rank 1 on another, as if a TP pair and a third rank.
        group.placements = [RankPlacement(0, 0, "198.18.0.2", 0), RankPlacement(1, 1, "198.18.0.3", 0),
                            RankPlacement(2, 2, "198.18.0.2", 1)]
        group.ranks = [ray.remote(_Rank).options(num_cpus=1).remote(r, dies, raises) for r in range(3)]
        made.append(group)
        return group

    yield make
    for group in made:  # the survivors would hold their CPUs for the rest of their 600 s wait
        for rank in group.ranks:
            ray.kill(rank)


def test_all_answers_come_back_in_rank_order(make_group) -> None:
    assert make_group()._gather("train_step") == [0, 1, 2]


def test_a_dead_rank_fails_the_call_fast_and_is_named_first(make_group, monkeypatch) -> None:
    monkeypatch.setattr(learner_group, "FAILURE_SETTLE_S", 5.0)
    group = make_group(dies=1)
    start = time.monotonic()
    with pytest.raises(LearnerFailure, match=r"^learner rank 1 on node 198\.18\.0\.3 died during train_step"):
        group._gather("train_step")
    assert time.monotonic() - start < 60, "the survivors' 600 s wait must not hold the controller"
    with pytest.raises(LearnerFailure, match="has failed before"):
        group._gather("train_step")


def test_a_rank_that_raises_is_reported_with_its_error(make_group, monkeypatch) -> None:
    monkeypatch.setattr(learner_group, "FAILURE_SETTLE_S", 1.0)
    with pytest.raises(LearnerFailure, match=r"learner rank 2 on node 198\.18\.0\.2 raised during train_step: "
                                             r"ValueError: bad batch on rank 2"):
        make_group(raises=2)._gather("train_step")
