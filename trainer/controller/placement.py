"""Where the learner ranks run: rank order over nodes, and each rank's device, from what Ray assigned.

Megatron puts tensor parallelism innermost (ranks 0..TP-1 form the first TP group), so consecutive
ranks must share a node for TP traffic to stay on the node's fast links while PP/DP cross nodes.
Ray's placement groups give no such order, so the bundles are sorted by node before ranks are given
out. Pure functions: the Ray calls live in `learner_group.py`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RankPlacement:
    """Rank r runs in placement-group bundle `bundle` on the node at `node_ip`; `local_rank` is its index
    among the ranks of that node."""

    rank: int
    bundle: int
    node_ip: str
    local_rank: int


def _ip_key(address: str) -> tuple[int, int | str]:
    try:
        return (0, int(ipaddress.ip_address(address)))
    except ValueError:
        return (1, address)


def order_ranks(bundle_nodes: Mapping[int, str]) -> list[RankPlacement]:
    """Ranks over bundles so that each node's ranks are consecutive (nodes in address order, bundles in
    index order within a node). bundle_nodes: bundle index -> node IP."""
    ordered = sorted(bundle_nodes, key=lambda b: (_ip_key(bundle_nodes[b]), b))
    seen: dict[str, int] = {}
    placements = []
    for rank, bundle in enumerate(ordered):
        node = bundle_nodes[bundle]
        placements.append(RankPlacement(rank, bundle, node, seen.get(node, 0)))
        seen[node] = seen.get(node, 0) + 1
    return placements


def groups_split_across_nodes(placements: Sequence[RankPlacement], group_size: int) -> list[list[int]]:
    """The consecutive rank groups of `group_size` (TP groups) whose ranks are not all on one node."""
    split = []
    for start in range(0, len(placements), group_size):
        group = placements[start : start + group_size]
        if len({p.node_ip for p in group}) > 1:
            split.append([p.rank for p in group])
    return split


def cuda_device_index(gpu_ids: Sequence[int | str], cuda_visible_devices: str | None) -> int | None:
    """The CUDA device index of an actor's (first) assigned GPU, as torch numbers the visible devices.

    Ray normally sets CUDA_VISIBLE_DEVICES to just the assigned IDs (-> 0); with that isolation turned
    off every GPU stays visible and the index is the assigned ID's position in the visible list.
    None when the actor has no GPU.
    """
    if not gpu_ids:
        return None
    assigned = str(gpu_ids[0])
    if cuda_visible_devices is None or not cuda_visible_devices.strip():
        return int(assigned) if assigned.isdigit() else 0
    visible = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
    if assigned not in visible:
        raise RuntimeError(f"Ray assigned GPU {assigned} but CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} hides it")
    return visible.index(assigned)
