"""Weight sync from the learner to rollout replicas without going through disk.

Each sending learner rank (the first TP rank of each pipeline stage; rank 0 of its group) and every
rollout receiver (ranks 1..W-1) form a process group of their own through a TCP store that the sender
hosts on its routable address (gloo on CPU, NCCL on GPU), independent of any default group either side
already has. A replica receives from every sender at once and installs the union. Tensors travel with
their Hugging Face names, packed into byte buckets:

    for each bucket:  broadcast int64[1] header length, uint8 header (JSON), uint8 payload
    header = {"version", "entries": [[name, dtype, shape, offset, nbytes], ...], "nbytes", "last", "count"}

Before the group forms, both sides prove the job's control token (weight_auth); a receiver or sender
that cannot is refused with PermissionError. The final header has `last = true` and the total tensor
count. Receivers stage everything and apply it only on commit, so a sync interrupted half-way leaves the
previous weights serving. The checkpoint
directory fallback reads/writes the same names as safetensors files.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from forkrl.rollout.network import source_address_towards
from forkrl.rollout.weight_auth import admit_receivers, announce, prove_to_sender
from forkrl.rollout.weight_group import SyncGroup, open_sync_group

_ALIGN = 64
_DTYPES = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
}
DEFAULT_BUCKET_BYTES = 64 * 2**20


class SyncSource(BaseModel):
    """One sender of a sync: a learner rank hosting the group's TCP store on its routable address."""

    model_config = ConfigDict(extra="forbid")

    master_addr: str = Field(min_length=1, description="Address of the sending rank (pod IP / Ray node IP).")
    master_port: int = Field(ge=1, le=65535, description="TCP store port opened by the sender.")
    group_name: str = Field(min_length=1, max_length=200, description="Rendezvous key prefix of this sender.")


class WeightSyncBegin(BaseModel):
    """Start receiving version `version` from every sender in `sources`.

    Each source forms its own group of the same membership (the sender at rank 0, then every receiver
    rank of every replica), so several senders (one per pipeline stage) send their own tensors at
    once; the union of what they send is the new version.
    """

    model_config = ConfigDict(extra="forbid")

    action: Literal["begin"] = "begin"
    version: int = Field(ge=0, description="Weight version the sync will install on commit.")
    sources: list[SyncSource] = Field(min_length=1, max_length=4096, description="Senders (one per stage).")
    world_size: int = Field(ge=2, description="Sender + every receiver rank of every replica (per source).")
    rank_offset: int = Field(ge=1, description="Group rank of this replica's first receiver.")
    backend: Literal["gloo", "nccl"] = Field("gloo", description="gloo (CPU tensors) or nccl (GPU).")
    timeout_s: float = Field(300.0, gt=0, le=86400, description="Rendezvous and per-collective timeout.")


class WeightSyncCommit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["commit"] = "commit"
    version: int = Field(ge=0, description="Must equal the version of the begun sync.")
    timeout_s: float = Field(300.0, gt=0, le=86400, description="How long to wait for the receive to end.")


class WeightSyncAbort(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["abort"] = "abort"


class WeightCheckpointLoad(BaseModel):
    """Fallback: install version `version` from a directory of safetensors files with HF names."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["load_checkpoint"] = "load_checkpoint"
    path: str = Field(min_length=1, description="Directory holding *.safetensors files.")
    version: int = Field(ge=0, description="Version the loaded weights get.")


WeightsAction = Annotated[
    WeightSyncBegin | WeightSyncCommit | WeightSyncAbort | WeightCheckpointLoad, Field(discriminator="action")
]


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"weights: dtype {name} cannot be synced")
    return name


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def iter_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Groups tensors lazily into buckets of about `bucket_bytes` (one tensor per bucket if <= 0)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += -(-nbytes // _ALIGN) * _ALIGN
    if bucket:
        yield bucket


def pack_bucket(bucket: list[tuple[str, torch.Tensor]], device: torch.device) -> tuple[list, torch.Tensor]:
    """Returns (entries, payload uint8 [nbytes] on `device`); offsets are 64-byte aligned."""
    entries, offset = [], 0
    for name, tensor in bucket:
        nbytes = tensor.numel() * tensor.element_size()
        entries.append([name, _dtype_name(tensor.dtype), list(tensor.shape), offset, nbytes])
        offset += -(-nbytes // _ALIGN) * _ALIGN
    payload = torch.zeros(offset, dtype=torch.uint8, device=device)
    for (_, tensor), (_, _, _, start, nbytes) in zip(bucket, entries, strict=True):
        payload[start : start + nbytes].copy_(_as_bytes(tensor))
    return entries, payload


def unpack_bucket(entries: list, payload: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Views into `payload` (no copy), one per entry, with the sent dtype and shape."""
    for name, dtype_name, shape, offset, nbytes in entries:
        if dtype_name not in _DTYPES:
            raise ValueError(f"weights: unknown dtype {dtype_name!r} for {name}")
        raw = payload[offset : offset + nbytes]
        yield name, raw.view(_DTYPES[dtype_name]).reshape(shape)


def _broadcast_header(group: SyncGroup, header: dict | None) -> dict:
    """Rank 0 sends `header`, the others receive and return it."""
    if header is not None:
        encoded = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        length = torch.tensor([encoded.numel()], dtype=torch.int64, device=group.device)
        group.broadcast(length)
        group.broadcast(encoded.to(group.device))
        return header
    length = torch.zeros(1, dtype=torch.int64, device=group.device)
    group.broadcast(length)
    encoded = torch.empty(int(length.item()), dtype=torch.uint8, device=group.device)
    group.broadcast(encoded)
    return json.loads(bytes(encoded.cpu().numpy()).decode())


@dataclass
class SendStats:
    num_tensors: int
    num_bytes: int
    seconds: float


class WeightSender:
    """One sending learner rank: hosts its group's TCP store, then broadcasts named tensors bucket by bucket.

    Create it first (the store binds `port`, a free one unless given), announce `source()` to every
    replica in its `begin` request, then call `send` with the world size (1 + every receiver rank).
    `master_addr` is the address the replicas reach this rank at: its pod IP or Ray node IP, never a
    loopback address unless every replica runs on this same host. `token`: the job's control token; every
    receiver must prove it before the group forms (see weight_auth), and they check that this sender can.
    """

    def __init__(
        self,
        *,
        master_addr: str,
        master_port: int = 0,
        backend: Literal["gloo", "nccl"] = "gloo",
        group_name: str = "forkrl-weights",
        timeout_s: float = 300.0,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        device: torch.device | str | None = None,
        token: str | None = None,
    ) -> None:
        self.backend = backend
        self.group_name = group_name
        self.timeout_s = timeout_s
        self.bucket_bytes = bucket_bytes
        self.device = torch.device(device or ("cuda" if backend == "nccl" else "cpu"))
        self.master_addr = master_addr
        self.store = dist.TCPStore(
            master_addr,
            master_port,
            is_master=True,
            timeout=datetime.timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )
        self._token = token
        self._nonce = announce(self.store, group_name, token)
        self._group: SyncGroup | None = None

    @property
    def port(self) -> int:
        return int(self.store.port)

    def source(self) -> SyncSource:
        return SyncSource(master_addr=self.master_addr, master_port=self.port, group_name=self.group_name)

    def begin_request(self, version: int, rank_offset: int, world_size: int) -> WeightSyncBegin:
        """The `begin` body for a replica whose receivers start at `rank_offset`, with this one sender."""
        return WeightSyncBegin(version=version, sources=[self.source()], world_size=world_size,
                               rank_offset=rank_offset, backend=self.backend, timeout_s=self.timeout_s)

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, world_size: int) -> SendStats:
        start = time.perf_counter()
        if self._group is None:
            prefix = admit_receivers(self.store, self.group_name, self._token, self._nonce, world_size)
            self._group = open_sync_group(self.store, 0, world_size, self.backend, prefix, self.timeout_s,
                                          self.device, self.master_addr)
        count = num_bytes = 0
        for bucket in iter_buckets(named_tensors, self.bucket_bytes):
            entries, payload = pack_bucket(bucket, self.device)
            count += len(entries)
            header = {"version": version, "entries": entries, "nbytes": payload.numel(), "last": False}
            _broadcast_header(self._group, header)
            if payload.numel():
                self._group.broadcast(payload)
            num_bytes += sum(e[4] for e in entries)
        _broadcast_header(self._group, {"version": version, "entries": [], "nbytes": 0, "last": True, "count": count})
        return SendStats(num_tensors=count, num_bytes=num_bytes, seconds=time.perf_counter() - start)

    def close(self) -> None:
        self._group = None
        self.store = None  # type: ignore[assignment]


SyncState = Literal["idle", "receiving", "received", "failed"]


class WeightReceiver:
    """One replica rank's side of one sync: a thread per sender receives into a staging dict each.

    `expected` (name -> ParamSpec) rejects unknown names and wrong shapes as they arrive; `required`
    names must all be present in the union at the end, and no name may come from two senders. Both
    are optional (vLLM checks names in `load_weights`). `token`: the job's control token, proven to each
    sender and required of it at the rendezvous (see weight_auth).
    """

    def __init__(
        self,
        begin: WeightSyncBegin,
        *,
        local_rank: int = 0,
        device: torch.device | str = "cpu",
        staging_device: torch.device | str = "cpu",
        expected: dict[str, ParamSpec] | None = None,
        required: set[str] | None = None,
        token: str | None = None,
    ) -> None:
        self.begin = begin
        self._token = token
        self.rank = begin.rank_offset + local_rank
        if self.rank >= begin.world_size:
            raise ValueError(f"rank_offset: rank {self.rank} outside world_size {begin.world_size}")
        self.device = torch.device(device)
        self.staging_device = torch.device(staging_device)
        self.expected = expected
        self.required = required or set()
        self.staged: dict[str, torch.Tensor] = {}
        self.state: SyncState = "idle"
        self.error: str = ""
        self.seconds = 0.0
        self._parts: list[dict[str, torch.Tensor]] = [{} for _ in begin.sources]
        self._errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._run_source, args=(i,), name=f"weight-receiver-{self.rank}-{i}", daemon=True)
            for i in range(len(begin.sources))
        ]
        self._supervisor = threading.Thread(target=self._finish, name=f"weight-receiver-{self.rank}", daemon=True)
        self._start = 0.0

    def start(self) -> WeightReceiver:
        self.state = "receiving"
        self._start = time.perf_counter()
        for thread in self._threads:
            thread.start()
        self._supervisor.start()
        return self

    def _run_source(self, index: int) -> None:
        source = self.begin.sources[index]
        try:
            store = dist.TCPStore(
                source.master_addr,
                source.master_port,
                is_master=False,
                timeout=datetime.timedelta(seconds=self.begin.timeout_s),
            )
            prefix = prove_to_sender(store, source.group_name, self._token, self.rank)
            local = source_address_towards(source.master_addr, source.master_port)
            group = open_sync_group(store, self.rank, self.begin.world_size, self.begin.backend, prefix,
                                    self.begin.timeout_s, self.device, local)
            self._receive(group, self._parts[index])
        except Exception as exc:  # a dead sender or a bad stream: keep serving the old weights
            self._parts[index].clear()
            where = f"{source.master_addr}:{source.master_port}"
            self._errors.append(f"from {where}: {type(exc).__name__}: {exc}")

    def _finish(self) -> None:
        for thread in self._threads:
            thread.join()
        try:
            if self._errors:
                raise RuntimeError("; ".join(self._errors))
            for part in self._parts:
                duplicated = set(part) & set(self.staged)
                if duplicated:
                    raise ValueError(f"tensors sent by two senders: {sorted(duplicated)[:8]}")
                self.staged.update(part)
            missing = self.required - set(self.staged)
            if missing:
                raise ValueError(f"weights missing from the sync: {sorted(missing)[:8]}")
            self.state = "received"
        except Exception as exc:
            self.staged.clear()
            self.error = str(exc) if self._errors else f"{type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            self._parts = []
            self.seconds = time.perf_counter() - self._start

    def _receive(self, group: SyncGroup, staged: dict[str, torch.Tensor]) -> None:
        while True:
            header = _broadcast_header(group, None)
            if header["version"] != self.begin.version:
                raise ValueError(f"version: sender sends {header['version']}, expected {self.begin.version}")
            if header["last"]:
                if header["count"] != len(staged):
                    raise ValueError(f"received {len(staged)} tensors, sender sent {header['count']}")
                return
            payload = torch.empty(header["nbytes"], dtype=torch.uint8, device=self.device)
            if payload.numel():
                group.broadcast(payload)
            for name, tensor in unpack_bucket(header["entries"], payload):
                self._check(name, tensor)
                staged[name] = tensor.to(self.staging_device, copy=True)

    def _check(self, name: str, tensor: torch.Tensor) -> None:
        if self.expected is None:
            return
        spec = self.expected.get(name)
        if spec is None:
            raise ValueError(f"unknown parameter name {name!r}")
        if tuple(tensor.shape) != spec.shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} != expected {spec.shape}")

    def join(self, timeout_s: float) -> dict[str, torch.Tensor]:
        """Waits for the receive to end; returns the staged tensors or raises with the failure."""
        self._supervisor.join(timeout_s)
        if self._supervisor.is_alive():
            raise TimeoutError(f"weight sync {self.begin.version} still receiving after {timeout_s}s")
        if self.state != "received":
            raise RuntimeError(f"weight sync {self.begin.version} failed: {self.error}")
        return self.staged
