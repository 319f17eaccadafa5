"""The learner ranks as Ray actors, gang-scheduled in one placement group, joined in a gloo (CPU) or
NCCL (GPU) world that may span hosts.

- Ranks are ordered by node (see `placement.py`) so TP groups stay within a node.
- The world's TCP store is hosted by rank 0 on its routable address (its Ray node IP, which is the pod
  IP on KubeRay) and a port it binds itself (`FORKRL_RENDEZVOUS_PORT`, default: any free port).
- Each rank's CUDA device comes from the GPUs Ray assigned to its actor; the socket interface of
  gloo/NCCL from its address (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME win when already set).
- Weight sync: the first TP rank of DP replica 0 of every pipeline stage sends its own stage's tensors;
  the controller drives the replicas' begin/commit (`weight_push.py`).

The controller calls every rank with the same global batch (each rank takes its data-parallel share,
see `Learner`); rank 0's answer is returned. A rank that dies fails the call at once with
`LearnerFailure` naming the rank and its node, instead of leaving the others blocked in a collective.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from forkrl.rollout.network import RENDEZVOUS_PORT_ENV, WEIGHT_SYNC_PORT_ENV, export_socket_ifname, pod_address
from forkrl.rollout.weight_sync import WeightSender
from forkrl.trainer.controller.placement import (
    RankPlacement,
    cuda_device_index,
    groups_split_across_nodes,
    order_ranks,
)
from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.metrics.records import LearnerStepMetrics
from forkrl.trainer.objectives.config import ObjectiveConfig

FAILURE_SETTLE_S = 30.0
"""After a first failure, how long to wait for the other ranks' outcomes before reporting."""


class LearnerFailure(RuntimeError):
    """A learner rank died or raised; the group cannot continue (resume from the last checkpoint)."""

    def __init__(self, message: str, during: str = "") -> None:
        super().__init__(message)
        self.during = during
        """The learner call that failed ("setup" means no step ran: nothing to resume from)."""


def _env_port(name: str) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return 0
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}={value} is not a TCP port")
    return port


def node_address() -> str:
    """The address other hosts reach this process at: Ray's node IP (the pod IP on KubeRay)."""
    if ray.is_initialized():
        return ray.util.get_node_ip_address()
    return pod_address() or ray.util.get_node_ip_address()


class LearnerRank:
    """One learner rank inside a Ray actor process (wrapped with `ray.remote` by LearnerGroup)."""

    def __init__(self, rank: int, world_size: int, local_rank: int, threads: int | None,
                 address: str | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        if threads:
            torch.set_num_threads(threads)
        self.address = address or node_address()
        self.learner: Any = None
        self._store: Any = None
        self._sender: WeightSender | None = None

    def where(self) -> dict[str, Any]:
        """Where this rank landed (node address, assigned GPUs, pid): for logs and tests."""
        return {"rank": self.rank, "address": self.address, "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "pid": os.getpid(), "local_rank": self.local_rank}

    def open_rendezvous(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0: host the world's TCP store on this node's address; returns (address, port)."""
        import torch.distributed as dist

        self._store = dist.TCPStore(self.address, _env_port(RENDEZVOUS_PORT_ENV), self.world_size, is_master=True,
                                    timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
        return self.address, int(self._store.port)

    def setup(self, spec_json: str, objective_json: str, model_path: str, timeout_s: float, master_addr: str,
              master_port: int) -> dict[str, Any]:
        """Join the process group and build the rank's model (collective: call on every rank at once)."""
        import torch.distributed as dist

        from forkrl.trainer.learner.megatron_import import import_megatron_core

        import_megatron_core()  # first: every rank of every start pays for this import at once
        from forkrl.trainer.learner.learner import Learner
        from forkrl.trainer.objectives.config import parse_objective

        spec = LearnerSpec.model_validate_json(spec_json)
        device = cuda_device_index(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), MASTER_ADDR=master_addr,
                          MASTER_PORT=str(master_port), LOCAL_RANK=str(self.local_rank if device is None else device))
        chosen = export_socket_ifname(self.address)
        use_gpu = spec.uses_gpu()
        timeout = datetime.timedelta(seconds=timeout_s)
        store = self._store if self.rank == 0 else dist.TCPStore(master_addr, master_port, self.world_size,
                                                                 is_master=False, timeout=timeout)
        dist.init_process_group("nccl" if use_gpu else "gloo", store=store, rank=self.rank,
                                world_size=self.world_size, timeout=timeout)
        self.learner = Learner(spec, parse_objective(json.loads(objective_json)), model_path=model_path)
        return {**self.where(), "layout": self.learner.layout.describe(), "socket_ifname": chosen,
                "device": str(self.learner.device)}

    def compute_logprobs(self, batch: LearnerBatch, which: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        stats = self.learner.compute_logprobs(batch, which)
        return (stats.logp, stats.entropy) if self.rank == 0 else None

    def train_step(self, batch: LearnerBatch) -> LearnerStepMetrics | None:
        metrics = self.learner.train_step(batch)
        return metrics if self.rank == 0 else None

    # ------------------------------------------------------------------ weight sync (data plane)
    @property
    def is_weight_sender(self) -> bool:
        layout = self.learner.layout
        return layout.tp_rank == 0 and layout.dp_rank == 0

    def open_weight_sender(self, group_prefix: str, backend: str, timeout_s: float,
                           token: str | None = None) -> dict[str, Any] | None:
        """Stage senders: open this stage's sync store; returns its `SyncSource` (None on other ranks).
        `token`: the job's control token, proven to the replicas and required of them."""
        if not self.is_weight_sender:
            return None
        base = _env_port(WEIGHT_SYNC_PORT_ENV)
        stage = self.learner.layout.pp_rank
        self._sender = WeightSender(master_addr=self.address, master_port=base + stage if base else 0,
                                    backend=backend,  # type: ignore[arg-type]
                                    group_name=f"{group_prefix}/pp{stage}", timeout_s=timeout_s,
                                    device=self.learner.device if backend == "nccl" else "cpu", token=token)
        return self._sender.source().model_dump()

    def send_weights(self, version: int, world_size: int) -> dict[str, Any] | None:
        """Every rank takes part in the export's gathers; each stage sender broadcasts its stage's tensors.

        A failed send (a replica gone mid-sync) is returned as {"error": ...}, not raised: the learner
        itself is fine, and the export is drained to the end so the other ranks finish its collectives.
        """
        weights = self.learner.export_weights(gather_to_rank0=False)
        if self._sender is None:
            for _ in weights:
                pass
            return None
        try:
            stats = self._sender.send(weights, version, world_size)
        except Exception as exc:
            for _ in weights:
                pass
            return {"error": f"stage {self.learner.layout.pp_rank} sender: {type(exc).__name__}: {exc}"}
        finally:
            self.close_weight_sender()
        self.learner.weight_version = version
        return {"tensors": float(stats.num_tensors), "bytes": float(stats.num_bytes), "seconds": stats.seconds}

    def close_weight_sender(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def write_weights(self, path: str) -> str | None:
        """Export to a safetensors directory (checkpoint-directory weight sync and the final model)."""
        from forkrl.rollout.weight_checkpoint import write_checkpoint

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

        self.close_weight_sender()
        if dist.is_initialized():
            dist.destroy_process_group()


def _bundle_nodes(group: Any) -> dict[int, str]:
    """bundle index -> IP of the node Ray placed it on."""
    node_ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    table = placement_group_table(group)
    return {int(bundle): node_ips[node_id] for bundle, node_id in table["bundles_to_node_id"].items()}


class LearnerGroup:
    """`world_size` LearnerRank actors in a PACK placement group, ranks ordered by node."""

    def __init__(self, spec: LearnerSpec, objective: ObjectiveConfig, model_path: str, world_size: int,
                 cpus_per_rank: float = 1.0, gpus_per_rank: float = 0.0, threads: int | None = None,
                 timeout_s: float = 600.0, log: Callable[[str], None] = print, address: str | None = None) -> None:
        """address: what every rank advertises (its stores, its gloo transport); None = its Ray node IP.
        One-host runs pass the loopback address: Ray itself reports the machine's interface address even
        for a private local cluster, and nothing of a one-host run should listen beyond loopback."""
        self.world_size = world_size
        self.failed: str | None = None
        bundle = {"CPU": cpus_per_rank, "GPU": gpus_per_rank} if gpus_per_rank else {"CPU": cpus_per_rank}
        self.placement_group = placement_group([bundle] * world_size, strategy="PACK")
        try:
            ray.get(self.placement_group.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement_group)
            raise LearnerFailure(
                f"the Ray cluster could not place {world_size} learner ranks of {bundle} within {timeout_s:.0f}s "
                f"(cluster resources: {ray.cluster_resources()})"
            ) from None
        self.placements: list[RankPlacement] = order_ranks(_bundle_nodes(self.placement_group))
        tp = spec.parallel.tensor_parallel
        split = groups_split_across_nodes(self.placements, tp)
        if split:
            log(f"warning: tensor-parallel groups {split} span nodes (TP={tp}): give each node a multiple of "
                f"{tp} learner slots so TP traffic stays on one node")
        actor_cls = ray.remote(LearnerRank)
        self.ranks = [
            actor_cls.options(
                num_cpus=cpus_per_rank, num_gpus=gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, p.bundle),
            ).remote(p.rank, world_size, p.local_rank, threads, address)
            for p in self.placements
        ]
        master_addr, master_port = self._all("open_rendezvous", timeout_s, ranks=[0])
        self.ranks_info = self._gather("setup", spec.model_dump_json(), objective.model_dump_json(), model_path,
                                       timeout_s, master_addr, master_port)
        log("learner ranks: " + ", ".join(f"{i['rank']}@{i['address']}" for i in self.ranks_info)
            + f" (rendezvous {master_addr}:{master_port})")

    @property
    def device(self) -> str:
        """Where the learner's weights live ("cpu" or "cuda:N")."""
        return str(self.ranks_info[0]["device"])

    def _gather(self, method: str, *args: Any, ranks: list[int] | None = None) -> list[Any]:
        """Call `method` on the given ranks (default all, for collectives) and return every answer.

        Fails fast: the first rank to raise or die ends the wait, so survivors blocked in a collective
        with a dead peer do not hold the controller until their timeout.
        """
        if self.failed:
            raise LearnerFailure(f"the learner group has failed before: {self.failed}")
        chosen = list(range(self.world_size)) if ranks is None else ranks
        refs = [getattr(self.ranks[r], method).remote(*args) for r in chosen]
        index = {ref: r for ref, r in zip(refs, chosen, strict=True)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                # Survivors of a lost peer fail in their collective at once; the dead rank is only declared
                # dead once Ray notices its node is gone. Wait a little for that, to name the cause.
                settled: list = []
                if pending:
                    settled, _ = ray.wait(pending, num_returns=len(pending), timeout=FAILURE_SETTLE_S)
                self.failed = self._describe_failure(method, [ready[0], *settled], index)
                raise LearnerFailure(self.failed, during=method) from err
        return ray.get(refs)

    def _describe_failure(self, method: str, refs: list, index: dict) -> str:
        """One line per failed rank, ranks that died first (the cause), then ranks that raised."""
        died, raised = [], []
        for ref in refs:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError as err:
                rank = index[ref]
                died.append(f"learner rank {rank} on node {self.placements[rank].node_ip} died during {method}: "
                            f"{str(err).splitlines()[0]}")
            except ray.exceptions.RayTaskError as err:
                rank = index[ref]
                cause = err.cause if err.cause is not None else err
                lines = str(cause).strip().splitlines()
                raised.append(f"learner rank {rank} on node {self.placements[rank].node_ip} raised during {method}: "
                              f"{type(cause).__name__}: {lines[-1] if lines else ''}")
            except Exception:  # still running or otherwise fine: not part of the story
                continue
        return "; ".join(died + raised)

    def _all(self, method: str, *args: Any, ranks: list[int] | None = None) -> Any:
        """`_gather` and return the first chosen rank's answer (rank 0's for collectives)."""
        return self._gather(method, *args, ranks=ranks)[0]

    def compute_logprobs(self, batch: LearnerBatch, which: str = "policy") -> tuple[torch.Tensor, torch.Tensor]:
        """(logp, entropy), both [B, S] token-aligned like batch.input_ids."""
        return self._all("compute_logprobs", batch, which)

    def train_step(self, batch: LearnerBatch) -> LearnerStepMetrics:
        """One optimizer update on the global mini-batch (every rank); rank 0's exact metrics."""
        return self._all("train_step", batch)

    def open_weight_senders(self, group_prefix: str, backend: str, timeout_s: float,
                            token: str | None = None) -> list[dict[str, Any]]:
        """One `SyncSource` per pipeline stage (its sender's address, store port and group name)."""
        answers = self._gather("open_weight_sender", group_prefix, backend, timeout_s, token)
        return [a for a in answers if a is not None]

    def send_weights(self, version: int, world_size: int) -> list[dict[str, float]]:
        """Every stage sender broadcasts its tensors; returns one stats dict per sender."""
        return [a for a in self._gather("send_weights", version, world_size) if a is not None]

    def close_weight_senders(self) -> None:
        with contextlib.suppress(LearnerFailure):
            self._gather("close_weight_sender")

    def write_weights(self, path: str) -> str:
        return self._all("write_weights", path)

    def save(self, path: str, data_state: dict[str, Any]) -> None:
        self._all("save", path, data_state)

    def load(self, path: str) -> dict[str, Any]:
        return self._all("load", path)

    def metrics(self) -> dict[str, float]:
        return self._all("metrics")

    def shutdown(self) -> None:
        if self.failed is None:  # a broken group would only time out in destroy_process_group
            with contextlib.suppress(Exception):  # a dead rank must not block tearing the rest down
                ray.get([r.shutdown.remote() for r in self.ranks], timeout=30)
        for rank in self.ranks:
            with contextlib.suppress(Exception):
                ray.kill(rank)
        with contextlib.suppress(Exception):
            remove_placement_group(self.placement_group)
