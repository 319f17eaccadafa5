"""Dual-temperature decoding as a logits processor of vLLM's V2 model runner (imports vllm).

The V2 runner (`vllm/v1/worker/gpu/model_runner.py`, what vLLM 0.33 builds by default on CUDA) loads
custom processors with its own loader
(`vllm.v1.worker.gpu.sample.logits_processor.loader`), which accepts only subclasses of
`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`. That interface:
- `__init__(vllm_config, req_states)`: `req_states` is a `LogitsProcRequestState`, read-only views of the
  runner's per-slot buffers (`prompt_len`, `prefill_len`, ... with `.gpu` device tensors);
- `validate_params(sampling_params)` (class method): runs in the frontend at admission;
- `add_request(slot, sampling_params) -> bool`: a request takes a slot (slots are recycled; there is no
  removal call), returning whether this processor changes its logits;
- `apply_staged_writes()`: once per step before the forward pass;
- `apply(logits, ctx)`: the whole batch, after bias/penalties/bad words and before vLLM's temperature,
  min-p and top-k/top-p; `ctx` maps each logits row to its slot and gives its position.

A request opts in as with the V1 processor (`SamplingParams.extra_args`, temperature 1.0, so vLLM's own
temperature step is a no-op and the processed log-probs are those of the distribution sampled from).
The per-sample state and the exact count live in `DualTemperatureState` (see its docstring for why rows
are keyed by sample and counts read for an emitted length). Positions make the counting exact here even
with chunked prefill on: a row whose position is before the end of its request's prefill samples
nothing (vLLM discards it), so it is stepped on the identity row and leaves the sample's state alone.
Speculative decoding (several logits rows per request) is not supported and raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcessor, LogitsProcRequestState

from forkrl.rollout.dual_temperature_state import IDENTITY_ROW, DualTemperatureState
from forkrl.rollout.vllm_dual_temperature_args import (
    dual_temperature_params_of,
    sample_key_of,
    validate_dual_temperature_params,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig


class DualTemperatureLogitsProcessorV2(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_dual_temperature_params(sampling_params)

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        self.req_states = req_states
        self.device = torch.device(req_states.device)
        self.state = DualTemperatureState(self.device, initial_rows=2 * req_states.max_num_reqs)
        # Slot -> state row, on the host (source of truth) and on the device (read by `apply`).
        self.row_of_slot = np.full(req_states.max_num_reqs, IDENTITY_ROW, dtype=np.int64)
        self._row_of_slot_device = torch.full((req_states.max_num_reqs,), IDENTITY_ROW, device=self.device)
        self._slots_changed = False

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        # The slot's previous occupant (finished or preempted: V2 does not say which) stops using its row.
        self.state.detach(int(self.row_of_slot[req_idx]))
        dual = dual_temperature_params_of(sampling_params)
        row = IDENTITY_ROW
        if dual is not None:
            row, _ = self.state.admit(sample_key_of(sampling_params), dual)
            self.state.attach(row)
        self.row_of_slot[req_idx] = row
        self._slots_changed = True
        return dual is not None

    def apply_staged_writes(self) -> None:
        self.state.flush()
        if self._slots_changed:
            pinned = self.device.type == "cuda"
            host = torch.from_numpy(self.row_of_slot.copy())
            self._row_of_slot_device.copy_(host.pin_memory() if pinned else host, non_blocking=pinned)
            self._slots_changed = False

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """logits: [rows, vocab] float32 before vLLM's temperature and top-k/top-p."""
        if not (self.row_of_slot[ctx.idx_mapping_np] != IDENTITY_ROW).any():
            return logits  # no request of this step uses dual temperature
        if logits.shape[0] != ctx.idx_mapping_np.shape[0]:
            raise NotImplementedError("dual temperature: speculative decoding (several rows per request)")
        slots = ctx.expanded_idx_mapping.to(torch.int64)
        sampled_position = ctx.pos.to(torch.int64) + 1  # the sampled token's position in its sequence
        prompt_len = self.req_states.prompt_len.gpu[slots].to(torch.int64)
        prefill_len = self.req_states.prefill_len.gpu[slots].to(torch.int64)
        return self.state.step(
            logits,
            rows=self._row_of_slot_device[slots],
            out_index=sampled_position - prompt_len,
            kept=sampled_position >= prefill_len,
        )
