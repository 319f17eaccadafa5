"""Rank order over nodes and each rank's CUDA device, from what Ray assigned (no Ray needed: pure)."""

from __future__ import annotations

import random

import pytest

from forkrl.trainer.controller.placement import (
    RankPlacement,
    cuda_device_index,
    groups_split_across_nodes,
    order_ranks,
)


def test_ranks_of_a_node_are_consecutive_whatever_order_ray_placed_bundles_in() -> None:
    # Ray interleaved the bundles over two 4-GPU nodes; TP=4 must not straddle them.
    bundle_nodes = {0: "10.0.0.9", 1: "10.0.0.10", 2: "10.0.0.9", 3: "10.0.0.10",
                    4: "10.0.0.9", 5: "10.0.0.10", 6: "10.0.0.9", 7: "10.0.0.10"}
    ranks = order_ranks(bundle_nodes)
    assert [p.node_ip for p in ranks] == ["10.0.0.9"] * 4 + ["10.0.0.10"] * 4  # numeric, not string, order
    assert [p.bundle for p in ranks] == [0, 2, 4, 6, 1, 3, 5, 7]
    assert [p.local_rank for p in ranks] == [0, 1, 2, 3] * 2
    assert [p.rank for p in ranks] == list(range(8))
    assert groups_split_across_nodes(ranks, 4) == []
    assert groups_split_across_nodes(ranks, 8) == [list(range(8))]


def test_order_is_a_permutation_for_any_assignment() -> None:
    rng = random.Random(0)
    for _ in range(200):
        count = rng.randint(1, 24)
        nodes = [f"198.18.0.{rng.randint(1, 5)}" for _ in range(count)]
        ranks = order_ranks(dict(enumerate(nodes)))
        assert sorted(p.bundle for p in ranks) == list(range(count))
        assert all(nodes[p.bundle] == p.node_ip for p in ranks)
        seen: dict[str, list[int]] = {}
        for p in ranks:
            seen.setdefault(p.node_ip, []).append(p.rank)
        for node_ranks in seen.values():  # one contiguous block per node
            assert node_ranks == list(range(node_ranks[0], node_ranks[0] + len(node_ranks)))


def test_a_tp_group_split_over_nodes_is_reported() -> None:
    placements = [RankPlacement(r, r, ip, 0) for r, ip in enumerate(["a", "a", "a", "b", "b", "b"])]
    assert groups_split_across_nodes(placements, 2) == [[2, 3]]


@pytest.mark.parametrize("gpu_ids, visible, expected", [
    ([], None, None),                      # a CPU actor
    ([3], "3", 0),                         # Ray's isolation: only the assigned GPU is visible
    (["5"], "5", 0),
    ([6], "0,1,2,3,4,5,6,7", 6),           # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: all visible
    ([2], "4, 2", 1),                      # visible list in another order
    ([1], None, 1),                        # nothing set: device IDs are CUDA indices
])
def test_cuda_device_from_ray_assignment(gpu_ids: list, visible: str | None, expected: int | None) -> None:
    assert cuda_device_index(gpu_ids, visible) == expected


def test_an_assigned_gpu_that_is_not_visible_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="hides it"):
        cuda_device_index([3], "0,1")
