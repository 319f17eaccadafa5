"""Specs of the RL algorithm around the objective: reward shaping, advantages, dynamic sampling, schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OverlongSpec(_Spec):
    """DAPO soft overlong punishment; L_max is model.max_response_tokens."""

    enabled: bool = Field(True, description="Add the length penalty to the correctness reward.")
    cache_tokens: int | None = Field(
        None, ge=1, description="L_cache: the buffer before L_max where the penalty ramps; None = L_max // 5 "
        "(DAPO: 4096 of 20480)."
    )

    def cache_for(self, max_response_tokens: int) -> int:
        """L_cache for a given L_max."""
        return self.cache_tokens if self.cache_tokens is not None else max(1, max_response_tokens // 5)
    factor: float = Field(1.0, ge=0.0, le=100.0, description="Penalty scale (-factor at L_max).")


class AdvantageSpec(_Spec):
    """GRPO group advantage."""

    std_eps: float = Field(1e-6, gt=0.0, le=1.0, description="Added to the group std (verl: 1e-6).")
    norm_by_std: bool = Field(True, description="Divide by the group std (False = Dr.GRPO).")
    unbiased_std: bool = Field(True, description="N-1 std as torch.std (verl); False = population std.")


class DynamicSamplingSpec(_Spec):
    """DAPO dynamic sampling: drop groups whose accuracy is all 0 or all 1 and refill."""

    enabled: bool = Field(True, description="Filter constant groups (DAPO). Off = train on every group.")
    mode: Literal["refill", "filter_only"] = Field(
        "refill", description="`refill` generates more prompts until the batch is full; `filter_only` (Archer) "
        "drops groups and lets the batch shrink."
    )
    gen_batch_multiplier: float = Field(
        1.0, ge=1.0, le=100.0, description="Prompts generated per round = multiplier x train_batch_size."
    )
    max_gen_batches: int = Field(10, ge=0, description="Rounds before a clear error (0 = unlimited).")


class ScheduleSpec(_Spec):
    """How many prompts, samples and updates per step, and how rollout overlaps training."""

    steps: int = Field(10, ge=1, le=10_000_000, description="RL steps (one rollout batch each).")
    train_batch_size: int = Field(8, ge=1, description="Prompts per RL step (after dynamic sampling).")
    samples_per_prompt: int = Field(8, ge=1, le=4096, description="n: responses per prompt (the GRPO group).")
    mini_batch_size: int = Field(8, ge=1, description="Prompts per optimizer step; train_batch_size/mini = updates.")
    epochs: int = Field(1, ge=1, le=100, description="Passes over each rollout batch (Archer: 3).")
    mode: Literal["sync", "one_step_off_policy"] = Field(
        "sync", description="`sync`: on-policy; `one_step_off_policy`: rollout of step t+1 overlaps update t."
    )
    max_staleness: int = Field(1, ge=0, le=16, description="Largest weight-version lag accepted for a sample.")

    @model_validator(mode="after")
    def _mini_batches_divide(self) -> ScheduleSpec:
        if self.mode == "one_step_off_policy" and self.max_staleness < 1:
            raise ValueError("schedule.max_staleness must be >= 1 with mode one_step_off_policy (samples lag one "
                             "weight version)")
        if self.train_batch_size % self.mini_batch_size:
            raise ValueError(
                f"schedule.mini_batch_size={self.mini_batch_size} must divide "
                f"schedule.train_batch_size={self.train_batch_size}"
            )
        return self
