"""Request, result and batch types shared by the rollout engines, the rollout service and the trainer.

The trainer imports these (never the other way round). Requests are pydantic models, so the HTTP API,
the in-process engines and the Ray actor validate the same way and name the offending field.

Log-prob convention (both engines): `SampleResult.logprobs[t]` is the log-probability of generated
token t under the distribution it was actually drawn from, i.e. log-softmax of the raw logits divided by
the token's temperature (the request temperature, or T_high / T_low under dual-temperature decoding),
after top-k and top-p masking. For greedy requests (temperature 0) it is the log-softmax of the raw
logits (T = 1), matching vLLM's `processed_logprobs` mode.

The job spec (and so the operator) imports `SamplingParams` from here: torch is imported only where
`RolloutBatch` builds its tensors.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length", "abort"]
FINISH_REASONS: tuple[FinishReason, ...] = ("stop", "length", "abort")
GREEDY_TEMPERATURE_EPS = 1e-5
"""Temperatures below this mean greedy decoding (the same cut-off as vLLM)."""

TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class DualTemperatureParams(BaseModel):
    """Entropy-dependent temperature (80/20 paper, Eq. 5): T_t = t_high if H_t > tau_t else t_low.

    H_t is the entropy of the T = 1 next-token distribution. In `absolute` mode tau_t = `threshold`.
    In `running_quantile` mode every sample tracks its own tau with the Robbins-Monro quantile update
    tau <- tau + quantile_lr * (1[H_t > tau] - rho), started at `threshold`, so that in the long run a
    fraction `rho` of its tokens takes t_high. The state is per sample (not shared across the batch),
    which keeps results reproducible per seed and identical between the HF and vLLM engines.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    t_high: float = Field(1.0, gt=0, le=100, description="Temperature of tokens above the entropy threshold.")
    t_low: float = Field(
        1.0, gt=0, le=100, description="Temperature of tokens at or below the threshold; in an RLVR run the "
        "learner's temperature must equal it (learner.temperature), so those tokens are exactly on-policy."
    )
    threshold_mode: Literal["absolute", "running_quantile"] = Field(
        "absolute", description="Fixed entropy threshold, or a per-sample running top-rho quantile."
    )
    threshold: float = Field(
        0.672,
        ge=0,
        le=100,
        description="Entropy threshold in nats (absolute mode) or the initial estimate (running mode); "
        "0.672 is the 80th percentile of Qwen3-8B token entropies at T = 1 reported by the 80/20 paper.",
    )
    rho: float = Field(0.2, gt=0, le=1, description="Target fraction of high-temperature tokens (running mode).")
    quantile_lr: float = Field(
        0.05, gt=0, le=10, description="Step size of the running quantile update, in nats per token."
    )


class SamplingParams(BaseModel):
    """Per-request sampling values. `None` means the model's generation config (else vLLM's neutral value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(
        None, ge=0, le=100, description="Softmax temperature; 0 (below 1e-5) means greedy decoding."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus mass kept, in (0, 1]; 1 disables.")
    top_k: int | None = Field(None, ge=-1, description="Keep the k largest logits; 0 or -1 disables.")
    dual_temperature: DualTemperatureParams | None = Field(
        None, description="Entropy-dependent temperature; replaces `temperature` when set."
    )

    @model_validator(mode="after")
    def _dual_temperature_replaces_temperature(self) -> SamplingParams:
        if self.dual_temperature is not None and self.temperature is not None:
            raise ValueError(
                "temperature: must be left unset when dual_temperature is given "
                "(dual_temperature.t_high / t_low set the temperature of every token)"
            )
        return self


class GenerateRequest(BaseModel):
    """One prompt to sample `n` responses for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        min_length=1,
        max_length=256,
        description="Caller's id, echoed in the result.",
    )
    prompt_token_ids: list[TokenId] = Field(min_length=1, description="Prompt token ids.")
    n: int = Field(1, ge=1, le=4096, description="Number of samples for this prompt (a GRPO group).")
    max_new_tokens: int = Field(256, ge=1, le=1_000_000, description="Cap on generated tokens per sample.")
    stop_token_ids: list[TokenId] = Field(
        default_factory=list, description="Extra token ids that end a sample (kept in the response)."
    )
    ignore_eos: bool = Field(False, description="Do not stop at the model's end-of-sequence token(s).")
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Seed of this request; sample j uses stream (seed, j). Unset: drawn by the engine "
        "and reported in the result.",
    )
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling values.")
    model: str | None = Field(None, description="Served model name; a mismatch is rejected (404).")


class RequestValidationError(ValueError):
    """A request that is well-formed but cannot be served (e.g. too long for the context)."""

    def __init__(self, field: str, message: str, status_code: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status_code = status_code


@dataclass
class SampleResult:
    """One sampled response. Lengths: R = len(token_ids) = len(logprobs)."""

    token_ids: list[int]
    """[R] generated ids, including the stop token when finish_reason == "stop"."""
    logprobs: list[float]
    """[R] sampling log-prob of every generated token (see the module docstring for the distribution)."""
    finish_reason: FinishReason
    weight_version: int
    """Version of the weights that produced every token of this sample (never mixed)."""
    num_high_temperature_tokens: int = 0
    """Tokens sampled at t_high under dual-temperature decoding (0 otherwise)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_ids": self.token_ids,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
            "weight_version": self.weight_version,
            "num_high_temperature_tokens": self.num_high_temperature_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleResult:
        return cls(
            token_ids=[int(t) for t in data["token_ids"]],
            logprobs=[float(x) for x in data["logprobs"]],
            finish_reason=data["finish_reason"],
            weight_version=int(data["weight_version"]),
            num_high_temperature_tokens=int(data.get("num_high_temperature_tokens", 0)),
        )


@dataclass
class GenerateResult:
    """The `n` samples of one request, all from the same weight version."""

    request_id: str
    samples: list[SampleResult]
    seed: int
    """Effective seed (the request's, or the one the engine drew)."""
    prompt_length: int
    queue_seconds: float = 0.0
    generate_seconds: float = 0.0

    @property
    def weight_version(self) -> int:
        return self.samples[0].weight_version

    @property
    def high_temperature_fraction(self) -> float:
        """Fraction of generated tokens that took t_high (0 when no tokens or no dual temperature)."""
        total = sum(len(s.token_ids) for s in self.samples)
        return sum(s.num_high_temperature_tokens for s in self.samples) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "samples": [s.to_dict() for s in self.samples],
            "seed": self.seed,
            "prompt_length": self.prompt_length,
            "queue_seconds": self.queue_seconds,
            "generate_seconds": self.generate_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateResult:
        return cls(
            request_id=data["request_id"],
            samples=[SampleResult.from_dict(s) for s in data["samples"]],
            seed=int(data["seed"]),
            prompt_length=int(data["prompt_length"]),
            queue_seconds=float(data.get("queue_seconds", 0.0)),
            generate_seconds=float(data.get("generate_seconds", 0.0)),
        )


@dataclass
class RolloutBatch:
    """All samples of a set of requests as padded tensors; B = total samples, P / R = max lengths."""

    prompt_ids: torch.Tensor
    """[B, P] int64, right-padded with `pad_token_id`."""
    prompt_lengths: torch.Tensor
    """[B] int64."""
    response_ids: torch.Tensor
    """[B, R] int64, right-padded with `pad_token_id`."""
    response_mask: torch.Tensor
    """[B, R] bool, True on generated tokens."""
    sampling_logprobs: torch.Tensor
    """[B, R] float32, rollout log-probs of the generated tokens (0 on padding)."""
    weight_version: torch.Tensor
    """[B] int64."""
    group_id: torch.Tensor
    """[B] int64, index of the request (prompt) the sample belongs to."""
    finish_reasons: list[FinishReason] = field(default_factory=list)
    """[B]."""

    @property
    def num_samples(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def response_lengths(self) -> torch.Tensor:
        """[B] int64."""
        return self.response_mask.sum(dim=1)

    @classmethod
    def from_results(
        cls, requests: list[GenerateRequest], results: list[GenerateResult], pad_token_id: int = 0
    ) -> RolloutBatch:
        """Pairs `results[i]` with `requests[i]` (matched by request_id) and pads every sample."""
        import torch

        if len(requests) != len(results):
            raise ValueError(f"results: expected {len(requests)} results, got {len(results)}")
        rows: list[tuple[list[int], SampleResult, int]] = []
        for group, (request, result) in enumerate(zip(requests, results, strict=True)):
            if request.request_id != result.request_id:
                raise ValueError(f"results[{group}].request_id: {result.request_id!r} != {request.request_id!r}")
            rows.extend((list(request.prompt_token_ids), sample, group) for sample in result.samples)
        batch = len(rows)
        max_prompt = max((len(p) for p, _, _ in rows), default=0)
        max_response = max((len(s.token_ids) for _, s, _ in rows), default=0)
        prompt_ids = torch.full((batch, max_prompt), pad_token_id, dtype=torch.int64)
        response_ids = torch.full((batch, max_response), pad_token_id, dtype=torch.int64)
        response_mask = torch.zeros((batch, max_response), dtype=torch.bool)
        logprobs = torch.zeros((batch, max_response), dtype=torch.float32)
        for row, (prompt, sample, _) in enumerate(rows):
            prompt_ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.int64)
            length = len(sample.token_ids)
            response_ids[row, :length] = torch.tensor(sample.token_ids, dtype=torch.int64)
            response_mask[row, :length] = True
            logprobs[row, :length] = torch.tensor(sample.logprobs, dtype=torch.float32)
        return cls(
            prompt_ids=prompt_ids,
            prompt_lengths=torch.tensor([len(p) for p, _, _ in rows], dtype=torch.int64),
            response_ids=response_ids,
            response_mask=response_mask,
            sampling_logprobs=logprobs,
            weight_version=torch.tensor([s.weight_version for _, s, _ in rows], dtype=torch.int64),
            group_id=torch.tensor([g for _, _, g in rows], dtype=torch.int64),
            finish_reasons=[s.finish_reason for _, s, _ in rows],
        )
