"""Dual-temperature decoding as a logits processor of vLLM's V1 model runner (imports vllm).

vLLM 0.33 still ships the V1 runner (`vllm/v1/worker/gpu_model_runner.py`) and falls back to it where the
V2 runner lacks a feature (or with VLLM_USE_V2_MODEL_RUNNER=0); its loader accepts only subclasses of
`vllm.v1.sample.logits_processor.LogitsProcessor`, so this class serves that runner and
`vllm_logits_processor_v2.py` the V2 one. `VLLMEngine` registers the one its vLLM config builds.

The V1 interface addresses rows by persistent-batch index and reports adds, removals and moves in a
`BatchUpdate` before each step; it gives no positions, so the output index of a row's token is counted
here (`DualTemperatureState.next_index`), starting from the request's committed output length when it is
added (non-zero for a preempted request coming back). A processed row always keeps its token only with
chunked prefill off (a partially prefilled row's sample is discarded by vLLM and would advance the
state), so `VLLMEngine` turns chunked prefill off for this runner. The processor is argmax-invariant,
so V1 applies it after its own temperature (a no-op at the required T = 1) and before top-k / top-p.
Per-sample state and exact counts: `DualTemperatureState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from forkrl.rollout.dual_temperature_state import IDENTITY_ROW, DualTemperatureState
from forkrl.rollout.vllm_dual_temperature_args import (
    dual_temperature_params_of,
    sample_key_of,
    validate_dual_temperature_params,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig


class DualTemperatureLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_dual_temperature_params(sampling_params)

    def __init__(self, vllm_config: VllmConfig | None, device: torch.device, is_pin_memory: bool) -> None:
        capacity = vllm_config.scheduler_config.max_num_seqs if vllm_config is not None else 1024
        self.device = torch.device(device)
        self.state = DualTemperatureState(self.device, initial_rows=2 * capacity)
        # Persistent-batch index -> state row, on the host (source of truth) and on the device.
        self.row_of_index = np.full(capacity, IDENTITY_ROW, dtype=np.int64)
        self._row_of_index_device = torch.full((capacity,), IDENTITY_ROW, device=self.device)

    def is_argmax_invariant(self) -> bool:
        return True

    def _point(self, index: int, row: int) -> None:
        self.state.detach(int(self.row_of_index[index]))
        self.state.attach(row)
        self.row_of_index[index] = row

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            self._point(index, IDENTITY_ROW)
        for index, params, _, output_tok_ids in batch_update.added:
            dual = dual_temperature_params_of(params)
            row = IDENTITY_ROW
            if dual is not None:
                row, _ = self.state.admit(sample_key_of(params), dual)
                self.state.set_next_index(row, len(output_tok_ids))
            self._point(index, row)
        for source, target, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                self.row_of_index[[source, target]] = self.row_of_index[[target, source]]
            else:  # the request at `source` moves to `target`, which it replaces
                self.state.detach(int(self.row_of_index[target]))
                self.row_of_index[target] = self.row_of_index[source]
                self.row_of_index[source] = IDENTITY_ROW
        self.state.flush()
        pinned = self.device.type == "cuda"
        host = torch.from_numpy(self.row_of_index.copy())
        self._row_of_index_device.copy_(host.pin_memory() if pinned else host, non_blocking=pinned)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [batch, vocab] float32 (after vLLM's temperature, before top-k/top-p)."""
        batch = logits.shape[0]
        if not (self.row_of_index[:batch] != IDENTITY_ROW).any():
            return logits
        rows = self._row_of_index_device[:batch]
        kept = torch.ones(batch, dtype=torch.bool, device=logits.device)
        return self.state.step(logits, rows, self.state.next_index[rows], kept)
