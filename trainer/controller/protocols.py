"""What the controller needs of the learners, the rollout replicas, the verifier and the tokenizer. The
real ones are `LearnerGroup`, `ReplicaPool`, `VerifierClient` and a Hugging Face tokenizer; tests pass
in-process learners and scripted replicas that have the same shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from forkrl.rollout.client import RolloutClient
from forkrl.rollout.types import GenerateRequest, GenerateResult
from forkrl.rollout.verifier.schemas import CodeItem, MathItem, VerifyResult
from forkrl.trainer.learner.batch import LearnerBatch
from forkrl.trainer.metrics.records import LearnerStepMetrics


class Learners(Protocol):
    """The learner ranks as one: every call runs on all of them and returns rank 0's answer."""

    def compute_logprobs(self, batch: LearnerBatch, which: str = "policy") -> tuple[torch.Tensor, torch.Tensor]:
        """(logp, entropy): [B, S] token-aligned like batch.input_ids, of the policy or the reference."""
        ...

    def train_step(self, batch: LearnerBatch) -> LearnerStepMetrics:
        """One optimizer update on the global mini-batch."""
        ...

    def save(self, path: str, data_state: dict[str, Any]) -> None: ...

    def load(self, path: str) -> dict[str, Any]: ...

    def write_weights(self, path: str) -> str:
        """Write the policy as a Hugging Face checkpoint directory; returns its path."""
        ...


class Replicas(Protocol):
    """The rollout replicas the controller generates on and pushes weights to."""

    clients: Mapping[str, RolloutClient]
    down: Mapping[str, str]
    failures_total: int

    @property
    def serving(self) -> list[str]: ...

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]: ...

    def refresh(self) -> list[str]: ...

    def mark_down(self, url: str, reason: str) -> None: ...

    async def unreachable(self, urls: Sequence[str]) -> list[str]: ...

    async def probe_down(self) -> list[str]: ...

    async def wait_for_serving(self, timeout_s: float) -> None: ...

    async def versions(self) -> dict[str, int | None]: ...


class Verifier(Protocol):
    async def verify(self, items: Sequence[MathItem | CodeItem]) -> list[VerifyResult]: ...


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the controller uses."""

    pad_token_id: int

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Mapping[str, list[int]]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...
