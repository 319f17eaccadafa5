"""The `RolloutEngine` protocol: what the rollout service, the Ray actor and the tests drive.

An engine generates synchronously (the service runs it on a worker thread, one batch at a time) and owns
its weights. Weight installs go through `update_weights` (in-process tensors), `load_checkpoint`
(directory fallback) or the staged sync `begin_weight_sync` / `commit_weight_sync`; the caller
guarantees that none of them overlaps a `generate` call, which is what makes a version bump atomic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch

from forkrl.rollout.types import GenerateRequest, GenerateResult, RequestValidationError
from forkrl.rollout.weight_sync import SyncState, WeightSyncBegin


class EngineUnavailableError(RuntimeError):
    """The engine cannot generate right now (sleeping, or no weights); the service answers 503."""


class WeightSyncConflictError(RuntimeError):
    """A weight-sync call that does not fit the current sync state; the service answers 409."""


@dataclass
class EngineHealth:
    engine: str
    """"hf" or "vllm"."""
    model: str
    """Served model name (the path it was loaded from)."""
    weight_version: int | None
    """None: no usable weights (fresh replica with dummy weights, or slept at level 2)."""
    sleeping: bool
    max_context: int
    """Prompt + generated tokens per sample."""
    vocab_size: int
    weight_receivers: int
    """Ranks this replica contributes to a weight-sync group (its tensor-parallel size)."""
    kv_cache_usage: float
    """Fraction of the KV-cache budget in use right now, in [0, 1]."""
    weight_sync: SyncState
    weight_sync_error: str = ""
    device: str = "cpu"
    """Where received weights land: "cpu" or "cuda" (decides whether NCCL can carry the sync)."""

    def to_dict(self) -> dict:
        return asdict(self)


def check_request_fits(request: GenerateRequest, model_name: str, vocab_size: int, max_context: int) -> None:
    """The checks every engine makes before accepting a request (4xx naming the field on failure)."""
    if request.model is not None and request.model != model_name:
        raise RequestValidationError("model", f"unknown model {request.model!r}", status_code=404)
    for name, ids in (("prompt_token_ids", request.prompt_token_ids), ("stop_token_ids", request.stop_token_ids)):
        bad = [i for i in ids if i >= vocab_size]
        if bad:
            raise RequestValidationError(name, f"token id {bad[0]} >= vocab size {vocab_size}")
    prompt = len(request.prompt_token_ids)
    if prompt >= max_context:
        raise RequestValidationError("prompt_token_ids", f"prompt has {prompt} tokens; the context holds {max_context}")
    if prompt + request.max_new_tokens > max_context:
        raise RequestValidationError(
            "max_new_tokens",
            f"{prompt} prompt + {request.max_new_tokens} new tokens exceed the context of {max_context}",
        )


ResultCallback = Callable[[int, GenerateResult], None]
"""(index of the request in the `generate` call, its result)."""


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(
        self,
        requests: Sequence[GenerateRequest],
        *,
        on_result: ResultCallback | None = None,
        abort: threading.Event | None = None,
        on_phase: Callable[[str, float], None] | None = None,
    ) -> list[GenerateResult]:
        """Samples every request; `on_result` fires as each request completes (before return).

        When `abort` is set, unfinished samples stop at the next decoding step with finish "abort".
        `on_phase(name, seconds)` reports engine phases (prefill/decode or generate). Results are in
        request order. Weight installs must not overlap a call (the service serialises them).
        """
        ...

    @property
    def weight_version(self) -> int | None: ...

    def validate_request(self, request: GenerateRequest) -> None:
        """Raises `RequestValidationError` naming the field if the request cannot be served."""
        ...

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Installs (HF name, tensor) pairs as `version`; all-or-nothing."""
        ...

    def load_checkpoint(self, path: str, version: int) -> None:
        """Installs the safetensors files of `path` as `version`; all-or-nothing."""
        ...

    def begin_weight_sync(self, begin: WeightSyncBegin, token: str | None = None) -> None:
        """Starts receiving a sync in the background; serving continues on the current weights. `token`:
        the job's control token, proven to the senders and required of them at the rendezvous."""
        ...

    def commit_weight_sync(self, version: int, timeout_s: float) -> None:
        """Waits for the begun sync, then installs it as `version`; raises (old weights kept) on failure."""
        ...

    def abort_weight_sync(self) -> None: ...

    def sleep(self, level: int = 1) -> None:
        """Frees KV memory (level 1) and also the weights (level 2: version becomes None)."""
        ...

    def wake(self) -> None: ...

    def health(self) -> EngineHealth: ...

    def close(self) -> None: ...
