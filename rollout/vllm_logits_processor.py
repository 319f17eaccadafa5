"""Dual-temperature decoding as a vLLM v1 logits processor (imports vllm; load only with the `gpu` extra).

A request opts in through `SamplingParams.extra_args`:
    {"forkrl_dual_temperature": DualTemperatureParams.model_dump(), "forkrl_sample_key": "<id>/<j>"}
with `temperature = 1.0`. The processor is argmax-invariant (it only rescales rows by a positive
temperature), so vLLM applies it after its own temperature division (a no-op at T = 1) and before
top-k / top-p; with `logprobs_mode="processed_logprobs"` the returned log-probs are those of the
distribution actually sampled from, as in `HFEngine`. The math is `dual_temperature_step`, shared with
`HFEngine`. State (thresholds, counts) lives in device tensors indexed by persistent-batch row, so a
decoding step costs no host synchronisation. Per-sample counts of high-temperature tokens are kept by
sample key when a request leaves the batch and read back with `drain_stats` (through the worker
extension's collective RPC).

Assumes every processed row's token is kept: VLLMEngine turns chunked prefill off when the processor is
registered (a partially prefilled row's sample is discarded by vLLM and would otherwise advance the
running-quantile state). A preempted request resumes with its saved state (looked up by sample key).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from forkrl.rollout.dual_temperature import (
    EXTRA_ARGS_KEY,
    SAMPLE_KEY,
    DualTemperatureRows,
    dual_temperature_step,
)
from forkrl.rollout.types import DualTemperatureParams

if TYPE_CHECKING:
    from vllm.config import VllmConfig

_MAX_KEPT = 200_000

# sample key -> (high-temperature tokens, tokens, tau) of samples that left the batch.
_FINISHED: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_FINISHED_LOCK = threading.Lock()


def drain_stats(keys: list[str]) -> dict[str, tuple[int, int]]:
    """(high-temperature tokens, tokens) of each finished sample key, removed from the registry."""
    with _FINISHED_LOCK:
        found = {key: _FINISHED.pop(key) for key in keys if key in _FINISHED}
    return {key: (int(high), int(total)) for key, (high, total, _) in found.items()}


def dual_temperature_params_of(params: SamplingParams) -> DualTemperatureParams | None:
    args = (params.extra_args or {}).get(EXTRA_ARGS_KEY)
    return None if args is None else DualTemperatureParams.model_validate(args)


class DualTemperatureLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            params = dual_temperature_params_of(sampling_params)
        except ValidationError as exc:
            raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}: {exc}") from exc
        if params is not None and abs(sampling_params.temperature - 1.0) > 1e-6:
            raise ValueError("temperature: must be 1.0 with dual temperature (set per token by the processor)")

    def __init__(self, vllm_config: VllmConfig | None, device: torch.device, is_pin_memory: bool) -> None:
        capacity = vllm_config.scheduler_config.max_num_seqs if vllm_config is not None else 1024
        self.device = torch.device(device)

        def column(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(capacity, dtype=dtype, device=self.device)

        self.t_high, self.t_low, self.tau = column(torch.float32), column(torch.float32), column(torch.float32)
        self.rho, self.quantile_lr = column(torch.float32), column(torch.float32)
        self.running = column(torch.bool)
        self.high_count, self.token_count = column(torch.int64), column(torch.int64)
        self._columns = (
            self.t_high, self.t_low, self.tau, self.rho, self.quantile_lr,
            self.running, self.high_count, self.token_count,
        )  # fmt: skip
        self.keys: dict[int, str] = {}
        self._index: torch.Tensor | None = None

    def is_argmax_invariant(self) -> bool:
        return True

    def _finish(self, index: int) -> bool:
        key = self.keys.pop(index, None)
        if key is None:
            return False
        with _FINISHED_LOCK:
            _FINISHED[key] = (
                self.high_count[index].clone(),
                self.token_count[index].clone(),
                self.tau[index].clone(),
            )
            while len(_FINISHED) > _MAX_KEPT:  # samples nobody drained (e.g. aborted callers)
                _FINISHED.pop(next(iter(_FINISHED)))
        return True

    def _add(self, index: int, params: SamplingParams) -> bool:
        dual = dual_temperature_params_of(params)
        if dual is None:
            return False
        key = (params.extra_args or {}).get(SAMPLE_KEY) or f"anonymous-{id(params)}"
        with _FINISHED_LOCK:
            resumed = _FINISHED.pop(key, None)  # a preempted request coming back
        self.t_high[index] = dual.t_high
        self.t_low[index] = dual.t_low
        self.rho[index] = dual.rho
        self.quantile_lr[index] = dual.quantile_lr
        self.running[index] = dual.threshold_mode == "running_quantile"
        if resumed is None:
            self.tau[index] = dual.threshold
            self.high_count[index] = 0
            self.token_count[index] = 0
        else:
            self.high_count[index], self.token_count[index], self.tau[index] = resumed
        self.keys[index] = key
        return True

    def _move(self, source: int, target: int, direction: MoveDirectionality) -> None:
        if direction == MoveDirectionality.SWAP:
            order = torch.tensor([target, source], device=self.device)
            for column in self._columns:
                column[[source, target]] = column[order]
            a, b = self.keys.pop(source, None), self.keys.pop(target, None)
            if a is not None:
                self.keys[target] = a
            if b is not None:
                self.keys[source] = b
        else:
            for column in self._columns:
                column[target] = column[source]
            self.keys.pop(target, None)
            key = self.keys.pop(source, None)
            if key is not None:
                self.keys[target] = key

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            self._finish(index)
        for index, params, _, _ in batch_update.added:
            self._finish(index)  # an added request may replace the row's previous one
            self._add(index, params)
        for source, target, direction in batch_update.moved:
            self._move(source, target, direction)
        rows = sorted(self.keys)
        self._index = torch.tensor(rows, dtype=torch.int64, device=self.device) if rows else None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [batch, vocab] float32 (after vLLM's temperature, before top-k/top-p)."""
        index = self._index
        if index is None:
            return logits
        rows = DualTemperatureRows(
            t_high=self.t_high[index],
            t_low=self.t_low[index],
            tau=self.tau[index],
            running=self.running[index],
            rho=self.rho[index],
            quantile_lr=self.quantile_lr[index],
        )
        tempered, high, next_tau = dual_temperature_step(logits[index], rows)
        logits[index] = tempered
        self.tau[index] = next_tau
        self.high_count[index] += high.to(torch.int64)
        self.token_count[index] += 1
        return logits
