"""Worker-side half of `VLLMEngine`: mixed into vLLM's GPU worker through `worker_extension_cls`.

Each tensor-parallel worker joins the learner's weight-sync group as rank `rank_offset + self.rank`,
receives every bucket into a staging dict (CPU by default, so the old weights keep serving untouched),
and on commit loads the HF-named tensors with the model's own `load_weights` (which shards them for
tensor parallelism) inside vLLM's layer-wise reload lifecycle, as vLLM's own NCCL weight transfer does.
Methods are called through `collective_rpc("forkrl_...")`, so their names carry a `forkrl_` prefix to
stay clear of the worker's attributes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from forkrl.rollout.weight_checkpoint import iter_checkpoint_tensors
from forkrl.rollout.weight_sync import WeightReceiver, WeightSyncBegin


class ForkrlWorkerExtension:
    _forkrl_receiver: WeightReceiver | None = None

    def forkrl_begin_weight_sync(self, begin: dict, staging_device: str = "cpu", token: str | None = None) -> None:
        previous = self._forkrl_receiver
        if previous is not None and previous.state == "receiving":
            raise RuntimeError(f"version: sync of version {previous.begin.version} is still receiving")
        parsed = WeightSyncBegin.model_validate(begin)
        self._forkrl_receiver = WeightReceiver(
            parsed,
            local_rank=self.rank,  # type: ignore[attr-defined]
            device=self.device if parsed.backend == "nccl" else "cpu",  # type: ignore[attr-defined]
            staging_device=staging_device,
            token=token,
        ).start()

    def forkrl_weight_sync_state(self) -> tuple[str, str]:
        receiver = self._forkrl_receiver
        return ("idle", "") if receiver is None else (receiver.state, receiver.error)

    def forkrl_commit_weight_sync(self, version: int, timeout_s: float) -> int:
        receiver = self._forkrl_receiver
        if receiver is None or receiver.begin.version != version:
            raise RuntimeError(f"version: no begun sync of version {version}")
        staged = receiver.join(timeout_s)
        self._forkrl_load(staged.items())
        self._forkrl_receiver = None
        return len(staged)

    def forkrl_abort_weight_sync(self) -> None:
        self._forkrl_receiver = None

    def forkrl_load_checkpoint(self, path: str) -> None:
        self._forkrl_load(iter_checkpoint_tensors(path))

    def forkrl_load_tensors(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self._forkrl_load(weights)

    def forkrl_high_temperature_counts(self, emitted: dict[str, int]) -> dict[str, int]:
        """Exact high-temperature token counts of finished samples (sample key -> emitted tokens).

        Every rank drains its own processors (all ranks of the last pipeline stage hold the same
        counts; the others hold none), so no rank keeps rows of samples that are done."""
        from forkrl.rollout.dual_temperature_state import drain_high_temperature_counts

        return drain_high_temperature_counts(emitted)

    def _forkrl_load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        model = self.model_runner.model  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(model)
            model.load_weights(weights=weights)
            finalize_layerwise_reload(model, self.model_config)  # type: ignore[attr-defined]
