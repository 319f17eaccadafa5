"""`Learner`: one rank of the Megatron policy learner (TP x PP x DP), driven by the RLVR controller.

Every public method is collective: call it on all ranks with the same global mini-batch (each rank
takes its data-parallel share). Per rank the object holds its model chunks, optimizer, scheduler and
an optional frozen reference model; the only process-wide state is megatron's `parallel_state`.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func

from forkrl.trainer.learner import checkpoint as ckpt
from forkrl.trainer.learner.arch import ModelArch
from forkrl.trainer.learner.batch import (
    LearnerBatch,
    MicroBatch,
    dp_bounds,
    dp_shard,
    packed_micro_batches,
    padded_micro_batches,
)
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.learner.loss import TokenStatsConfig, stats_forward_step, token_sum_norm_length, train_forward_step
from forkrl.trainer.learner.model import build_model_chunks, transformer_config
from forkrl.trainer.learner.optimizer import build_optimizer, wrap_ddp
from forkrl.trainer.learner.parallel import ParallelLayout, destroy_parallel, initialize_parallel
from forkrl.trainer.learner.step_metrics import summarize_losses
from forkrl.trainer.learner.weights import export_hf_weights, import_hf_weights
from forkrl.trainer.metrics.records import LearnerStepMetrics, LossMetrics
from forkrl.trainer.objectives import ForkingConfig, LossContext, ObjectiveConfig, mini_batch_context
from forkrl.trainer.objectives.normalizers import needs_token_split, token_split


@dataclasses.dataclass
class TokenStats:
    """Per-token results for the whole global batch: logp, entropy [B, S] (0 off the response tokens)."""

    logp: torch.Tensor
    entropy: torch.Tensor


def _main_grad(param: torch.nn.Parameter) -> torch.Tensor:
    return param.main_grad.to(param.dtype)


class Learner:
    """One learner rank. See the module docstring; shapes in `LearnerBatch`."""

    def __init__(
        self,
        spec: LearnerSpec,
        objective: ObjectiveConfig,
        model_path: str | Path | None = None,
        hf_config: Any = None,
    ) -> None:
        """model_path: a Hugging Face checkpoint dir (config.json + safetensors) whose weights are imported;
        hf_config: the architecture when there is no checkpoint (megatron's random init), or an override."""
        if model_path is None and hf_config is None:
            raise ValueError("Learner needs model_path (HF checkpoint) or hf_config (architecture)")
        self.spec = spec
        self.objective = objective
        self.norm_length = token_sum_norm_length(objective, spec)  # fails fast, before any model is built
        self.use_gpu = spec.uses_gpu()
        self.layout: ParallelLayout = initialize_parallel(spec.parallel, spec.seed, self.use_gpu)
        self.arch = ModelArch.from_hf(hf_config if hf_config is not None else model_path)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")
        self.config = transformer_config(self.arch, spec, self.use_gpu)
        self.dtype = self.config.params_dtype
        max_len = spec.max_sequence_length or self.arch.max_position_embeddings
        self.chunks = build_model_chunks(self.arch, self.config, max_len, perform_init=model_path is None,
                                         hidden_states_head=spec.loss_head == "fused", attention=spec.attention)
        for chunk in self.chunks:
            chunk.to(self.device)
        if model_path is not None:
            import_hf_weights(self.chunks, self.arch, model_path, self.layout)
        self.reference = self._build_reference(max_len)
        self.model = wrap_ddp(self.chunks, self.config, spec)
        self.optimizer, self.scheduler = build_optimizer(self.model, spec, self.dtype)
        self.weight_version = 0
        self.consumed_sequences = 0

    # ----------------------------------------------------------------------------------- setup
    def _build_reference(self, max_len: int) -> list[torch.nn.Module] | None:
        wanted = self.spec.reference.enabled
        if wanted == "auto":
            wanted = self.objective.needs_reference
        if not wanted:
            return None
        config = dataclasses.replace(self.config, no_sync_func=None, finalize_model_grads_func=None)
        chunks = build_model_chunks(self.arch, config, max_len, perform_init=False,
                                    hidden_states_head=self.spec.loss_head == "fused", attention=self.spec.attention)
        for ref, policy in zip(chunks, self.chunks, strict=True):
            ref.load_state_dict(policy.state_dict(), strict=True)
            ref.requires_grad_(False)
            ref.eval()
            if self.spec.reference.offload_to_cpu:
                ref.to("cpu")
            else:
                ref.to(self.device)
        return chunks

    @property
    def _dp_group(self) -> dist.ProcessGroup:
        # Always the real (possibly size-1) DP group: the objective library reads group=None as the
        # world group in some helpers and as "no communication" in others.
        return self.layout.dp_group

    def _stats_config(self, entropy_grad: bool = False) -> TokenStatsConfig:
        return TokenStatsConfig(
            tp_group=self.layout.tp_group if self.layout.tp > 1 else None,
            temperature=self.spec.temperature,
            chunk_size=self.spec.logprob_chunk_size,
            entropy_requires_grad=entropy_grad,
            head_chunk_tokens=self.spec.loss_head_chunk_tokens,
        )

    def _micro_batches(self, batch: LearnerBatch) -> list[MicroBatch]:
        shard = dp_shard(batch, self.layout.dp_rank, self.layout.dp)
        multiple = self.layout.tp if self.spec.parallel.sequence_parallel else 1
        mb_spec = self.spec.micro_batch
        if mb_spec.mode == "packed":
            mbs = packed_micro_batches(shard, mb_spec.max_tokens, multiple)
        else:
            mbs = padded_micro_batches(shard, mb_spec.micro_batch_size, multiple)
        # The model inputs reach the device one micro-batch at a time (`_schedule`); the rest is small.
        return [mb.to(self.device, inputs=False) for mb in mbs]

    def _schedule(
        self, model: list[torch.nn.Module], forward_step: Any, mbs: list[MicroBatch], forward_only: bool
    ) -> list[Any]:
        """Run megatron's schedule (no pipelining / 1F1B / interleaved) over the micro-batches; each one's
        model inputs are moved to the device when the schedule takes it, so only the micro-batches in flight
        hold device copies of them."""

        def streamed() -> Iterator[MicroBatch]:
            return (mb.inputs_to(self.device) for mb in mbs)

        data: Any = streamed()
        if len(model) > 1:
            data = [streamed() for _ in model]
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=data,
            model=model,
            num_microbatches=len(mbs),
            seq_length=mbs[0].tokens.shape[1],
            micro_batch_size=mbs[0].tokens.shape[0],
            forward_only=forward_only,
            collect_non_loss_data=forward_only,
        )

    # --------------------------------------------------------------------------- log-probs
    @torch.no_grad()
    def compute_logprobs(self, batch: LearnerBatch, model: Literal["policy", "reference"] = "policy") -> TokenStats:
        """Forward only: log-probs and entropies of `batch` (whole global batch returned on every rank)."""
        mbs = self._micro_batches(batch)
        per_mb = self._forward_stats(mbs, model)
        # Shards may differ by a row (`dp_bounds`); all_gather needs one shape, so every rank sends the
        # largest shard's size and the rows beyond each rank's own count are dropped after the gather.
        bounds = [dp_bounds(batch.num_sequences, r, self.layout.dp) for r in range(self.layout.dp)]
        rows = max(max(end - start for start, end in bounds), 1)
        width = batch.input_ids.shape[1]
        stats = torch.zeros(2, rows, width, dtype=torch.float32, device=self.device)
        if self.layout.is_last_stage:
            for mb, result in zip(mbs, per_mb, strict=True):
                stats[0, mb.seq_index] = result["logp"].float()
                stats[1, mb.seq_index] = result["entropy"].float()
        if self.layout.pp > 1:
            dist.broadcast(stats, src=self.layout.pp_last_global_rank, group=self.layout.pp_group)
        parts = [stats]
        if self.layout.dp > 1:
            parts = [torch.empty_like(stats) for _ in range(self.layout.dp)]
            dist.all_gather(parts, stats, group=self.layout.dp_group)
        stats = torch.cat([part[:, : end - start] for part, (start, end) in zip(parts, bounds, strict=True)], dim=1)
        return TokenStats(logp=stats[0].cpu(), entropy=stats[1].cpu())

    def _forward_stats(self, mbs: list[MicroBatch], which: Literal["policy", "reference"]) -> list[dict]:
        if which == "reference":
            if self.reference is None:
                raise ValueError("no reference model: set reference.enabled or use an objective that needs one")
            model = self.reference
            if self.spec.reference.offload_to_cpu:
                for chunk in model:
                    chunk.to(self.device)
        else:
            model = self.model
        for chunk in model:
            chunk.eval()
        try:
            return self._schedule(model, stats_forward_step(self._stats_config()), mbs, forward_only=True)
        finally:
            if which == "reference" and self.spec.reference.offload_to_cpu:
                for chunk in model:
                    chunk.to("cpu")

    # -------------------------------------------------------------------------------- train
    def _select_tokens(self, mbs: list[MicroBatch]) -> tuple[list[torch.Tensor] | None, list[float]]:
        """The objective's token split computed before the loss (see objectives.normalizers.needs_token_split),
        set on the micro-batches of the last stage so that the normaliser and the loss count the same tokens.
        Returns (masks or None, the forking thresholds that made them)."""
        cfg = self.objective
        if not needs_token_split(cfg):
            return None, []
        if isinstance(cfg, ForkingConfig) and cfg.entropy_source == "old":
            if any("old_entropy" not in mb.fields for mb in mbs):
                raise ValueError("forking entropy_source='old' needs LearnerBatch.old_entropy")
            entropies = [mb.fields["old_entropy"] for mb in mbs]
        else:
            results = self._forward_stats(mbs, "policy")
            entropies = [r["entropy"] for r in results] if self.layout.is_last_stage else []
        if not self.layout.is_last_stage:
            return None, []
        masks, thresholds = token_split(cfg, entropies, [mb.response_mask for mb in mbs], group=self._dp_group)
        for mb, mask in zip(mbs, masks, strict=True):
            mb.selection_mask = mask
        return masks, thresholds

    def train_step(self, batch: LearnerBatch) -> LearnerStepMetrics:
        """One optimizer step on the global mini-batch `batch` (forward + backward + Adam)."""
        start = time.perf_counter()
        losses = self.forward_backward(batch)
        lr = float(self.optimizer.param_groups[0]["lr"])
        grad_norm = self.optimizer_step()
        seconds = time.perf_counter() - start
        fields = {f.name: getattr(losses, f.name) for f in dataclasses.fields(losses)}
        return LearnerStepMetrics(**fields, grad_norm=grad_norm, lr=lr, weight_version=self.weight_version,
                                  seconds=seconds, tokens_per_second=float(batch.seq_lens.sum()) / seconds,
                                  peak_memory_mib=self.peak_memory_mib())

    def forward_backward(self, batch: LearnerBatch) -> LossMetrics:
        """Gradients of the mini-batch loss, reduced over DP, without an optimizer step.

        The loss of every micro-batch is already normalised by global counts, so the reduced
        gradient is exactly that of the whole mini-batch's loss (`LossMetrics.loss`).
        """
        if self.objective.needs_reference and batch.ref_logp is None:
            batch = dataclasses.replace(batch, ref_logp=self.compute_logprobs(batch, "reference").logp)
        mbs = self._micro_batches(batch)
        selection, thresholds = self._select_tokens(mbs)
        ctx = LossContext()
        if self.layout.is_last_stage:
            ctx = mini_batch_context(
                self.objective,
                [mb.response_mask for mb in mbs],
                selection,
                group=self._dp_group,
                max_response_len=self.norm_length,
            )
        for chunk in self.model:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        forward_step = train_forward_step(self.objective, ctx, self._stats_config(self.objective.entropy_coef > 0))
        reports = self._schedule(self.model, forward_step, mbs, forward_only=False)
        self.consumed_sequences += batch.num_sequences
        summary = summarize_losses(reports, self._dp_group, thresholds) if self.layout.is_last_stage else None
        if self.layout.pp > 1:  # every stage returns the last stage's summary
            box = [summary]
            dist.broadcast_object_list(box, src=self.layout.pp_last_global_rank, group=self.layout.pp_group)
            summary = box[0]
        assert summary is not None
        return summary

    def optimizer_step(self) -> float:
        """Clip, step Adam and the LR schedule on the accumulated gradients; returns the gradient norm
        before clipping (nan when the step was skipped)."""
        updated, grad_norm, _ = self.optimizer.step()
        if updated:
            self.scheduler.step(increment=1)
            self.weight_version += 1
        return float(grad_norm) if grad_norm is not None else float("nan")

    def peak_memory_mib(self) -> float:
        """This rank's peak memory: CUDA allocated on GPU, the process's peak resident set on CPU."""
        if self.use_gpu:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # ------------------------------------------------------------------------ weights & state
    def export_weights(
        self, dtype: torch.dtype | None = None, gather_to_rank0: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Hugging Face (name, tensor) pairs, streamed one tensor at a time (collective; see weights.py)."""
        return export_hf_weights(self.chunks, self.arch, self.layout, gather_to_rank0, dtype)

    def export_grads(self, gather_to_rank0: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The reduced gradients of `forward_backward` under Hugging Face names (non-distributed optimizer
        only: the distributed one keeps just this rank's reduce-scattered slice)."""
        if self.spec.optimizer.distributed and self.layout.dp > 1:
            raise ValueError("export_grads needs optimizer.distributed=False when data_parallel > 1")
        return export_hf_weights(self.chunks, self.arch, self.layout, gather_to_rank0, values=_main_grad)

    def save(self, path: str | Path, data_state: Mapping[str, Any] | None = None) -> None:
        """Checkpoint model, optimizer, scheduler, RNG and the data cursor (collective)."""
        ckpt.save(self, Path(path), dict(data_state or {}))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint saved under any TP/PP layout; returns the saved data cursor (collective)."""
        return ckpt.load(self, Path(path))

    def close(self) -> None:
        """Release megatron's process groups so another layout can be initialised in this process."""
        destroy_parallel()

    def metrics(self) -> dict[str, float]:
        """Counters and this rank's peak memory."""
        return {
            "weight_version": float(self.weight_version),
            "consumed_sequences": float(self.consumed_sequences),
            "peak_memory_mib": self.peak_memory_mib(),
        }
