"""Pydantic configuration of the Megatron learner (`LearnerSpec`), the single owner of its parallel dims.

`ParallelConfig` is the only place where TP / PP / VPP / DP are decided: the data-parallel size is
derived as world / (TP x PP) and validated against the model's shape before any process group is
built (see `ParallelConfig.validate_for`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParallelConfig(_Strict):
    """Tensor / pipeline / data parallel layout; data parallel = world / (TP x PP)."""

    tensor_parallel: int = Field(1, ge=1, le=64, description="Tensor-parallel size (TP).")
    pipeline_parallel: int = Field(1, ge=1, le=64, description="Pipeline-parallel size (PP).")
    virtual_pipeline: int | None = Field(
        None,
        ge=2,
        le=64,
        description="Model chunks per pipeline rank (interleaved 1F1B); None = plain 1F1B. Needs PP >= 2.",
    )
    sequence_parallel: bool = Field(
        False, description="Shard activations along the sequence inside TP regions (needs TP >= 2)."
    )
    data_parallel: int | None = Field(
        None, ge=1, description="Expected DP size; checked against world / (TP x PP) when set."
    )

    @model_validator(mode="after")
    def _check(self) -> ParallelConfig:
        if self.virtual_pipeline is not None and self.pipeline_parallel < 2:
            raise ValueError("virtual_pipeline needs pipeline_parallel >= 2")
        if self.sequence_parallel and self.tensor_parallel < 2:
            raise ValueError("sequence_parallel needs tensor_parallel >= 2")
        return self

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    def data_parallel_size(self, world_size: int) -> int:
        """DP = world / (TP x PP); raises naming the fields when it does not divide."""
        if world_size % self.model_parallel:
            raise ValueError(
                f"world_size={world_size} is not divisible by tensor_parallel x pipeline_parallel"
                f" = {self.tensor_parallel} x {self.pipeline_parallel}"
            )
        dp = world_size // self.model_parallel
        if self.data_parallel is not None and self.data_parallel != dp:
            raise ValueError(f"data_parallel={self.data_parallel} but world / (TP x PP) = {dp}")
        return dp

    def validate_for(self, num_layers: int, num_heads: int, num_kv_heads: int, vocab_size: int) -> None:
        """Check that the model splits evenly under this layout (field names in the errors)."""
        chunks = self.pipeline_parallel * (self.virtual_pipeline or 1)
        if num_layers % chunks:
            raise ValueError(
                f"num_hidden_layers={num_layers} not divisible by pipeline_parallel x virtual_pipeline = {chunks}"
            )
        for name, value in (
            ("num_attention_heads", num_heads),
            ("num_key_value_heads", num_kv_heads),
            ("vocab_size", vocab_size),
        ):
            if value % self.tensor_parallel:
                raise ValueError(f"{name}={value} not divisible by tensor_parallel={self.tensor_parallel}")


class OptimizerSpec(_Strict):
    """Adam with decoupled weight decay, global-norm clipping, warm-up then constant/cosine/linear LR."""

    lr: float = Field(1e-6, gt=0.0, le=1.0, description="Peak learning rate.")
    min_lr: float = Field(0.0, ge=0.0, le=1.0, description="Floor of the decayed learning rate.")
    weight_decay: float = Field(0.1, ge=0.0, le=1.0, description="Decoupled weight decay (not on norms/biases).")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam beta1.")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam beta2.")
    adam_eps: float = Field(1e-8, gt=0.0, le=1e-2, description="Adam epsilon.")
    clip_grad: float = Field(1.0, ge=0.0, description="Clip the global gradient L2 norm to this; 0 disables.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up optimizer steps.")
    decay_style: Literal["constant", "cosine", "linear"] = Field("constant", description="LR schedule after warm-up.")
    decay_steps: int | None = Field(
        None, ge=1, description="Steps from start to the end of decay (cosine/linear); required for those."
    )
    distributed: bool = Field(
        True, description="Use megatron's distributed optimizer (optimizer state sharded over DP)."
    )

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        if self.decay_style != "constant" and self.decay_steps is None:
            raise ValueError(f"decay_steps is required for decay_style={self.decay_style!r}")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"decay_steps={self.decay_steps} must exceed warmup_steps={self.warmup_steps}")
        return self


class ReferenceSpec(_Strict):
    """Frozen reference policy (initial weights) for KL terms."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="Build the reference model; 'auto' = when the objective needs reference log-probs."
    )
    offload_to_cpu: bool = Field(False, description="Keep reference weights in host memory between uses (GPU runs).")


class MicroBatchSpec(_Strict):
    """How a rank's share of a mini-batch is cut into micro-batches."""

    mode: Literal["padded", "packed"] = Field(
        "padded", description="padded: rows of right-padded sequences; packed: sequences concatenated per row."
    )
    micro_batch_size: int = Field(1, ge=1, description="Sequences per micro-batch (padded mode).")
    max_tokens: int | None = Field(
        None, ge=8, description="Token budget of one packed micro-batch row (packed mode; default: longest sequence)."
    )


class LearnerSpec(_Strict):
    """Everything a learner rank needs besides the model weights and the objective."""

    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Parallel layout.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer and LR schedule.")
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec, description="Frozen reference model.")
    micro_batch: MicroBatchSpec = Field(default_factory=MicroBatchSpec, description="Micro-batching.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the learner runs; auto = cuda when a GPU is visible (cpu uses the CPU shim)."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Parameter/compute dtype; auto = float32 on CPU, bfloat16 on GPU."
    )
    activation_recompute: Literal["none", "selective", "full"] = Field(
        "none", description="Activation recomputation granularity."
    )
    temperature: float = Field(
        1.0, gt=0.0, le=10.0, description="Temperature the logits are divided by before the old, new and "
        "reference log-probs and the entropies. In an RLVR run it must equal rollout.sampling.temperature, since "
        "a mismatch biases every importance ratio. Under dual-temperature decoding it must equal "
        "rollout.sampling.dual_temperature.t_low: the tokens at or below the entropy threshold (most of them) are "
        "then exactly on-policy, and only those sampled at t_high are off-policy exploration, which objective.tis_cap "
        "reweights with the rollout's log-probs."
    )
    logprob_chunk_size: int | None = Field(
        None, ge=1, description="Tokens per chunk in the vocab-parallel log-prob/entropy kernel (None = all); "
        "loss_head `logits` only."
    )
    attention: Literal["sdpa", "unfused"] = Field(
        "sdpa", description="Core attention: `sdpa` runs torch's scaled_dot_product_attention (flash / memory-"
        "efficient kernels: no [b, heads, s, s] scores stored); `unfused` is megatron's local DotProductAttention, "
        "which keeps the softmax output per layer."
    )
    loss_head: Literal["fused", "logits"] = Field(
        "fused", description="`fused`: log-probs and entropies straight from the final hidden states and the output "
        "weight, loss_head_chunk_tokens tokens at a time, recomputed in the backward: the [tokens, vocab/tp] logits "
        "never exist, and only response positions are projected. `logits`: the output layer builds the logits of "
        "every position, then the vocab-parallel kernel reads them."
    )
    loss_head_chunk_tokens: int = Field(
        1024, ge=1, le=1_048_576, description="Tokens per chunk of the fused loss head: its peak extra memory is one "
        "[chunk, vocab/tp] block and its fp32 workspace."
    )
    seed: int = Field(1234, ge=0, description="Base seed of megatron's RNG tracker.")
    grad_reduce_in_fp32: bool = Field(True, description="Accumulate and reduce gradients in fp32.")
    max_sequence_length: int | None = Field(
        None, ge=8, description="Rotary table length; default: the HF config's max_position_embeddings."
    )
    max_response_length: int | None = Field(
        None, ge=1, le=1_000_000, description="The run's maximum response length (an RLVR run fills in "
        "model.max_response_tokens): L of the seq-mean-token-sum-norm loss unless objective.token_sum_norm_length "
        "is set. Needed only by that aggregation."
    )

    def uses_gpu(self) -> bool:
        """Whether this learner runs on CUDA (resolves device='auto')."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is visible")
        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())

    def resolved_dtype(self, has_gpu: bool) -> Literal["float32", "bfloat16"]:
        if self.dtype == "auto":
            return "bfloat16" if has_gpu else "float32"
        return self.dtype
