"""Specs of a run's inputs and outputs: data sets, evaluation, cold start, checkpoints, observability."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forkrl.trainer.data.arithmetic import ArithmeticSpec
from forkrl.trainer.data.readers import Layout
from forkrl.trainer.data.templates import TemplateName


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Spec):
    """One data set: a JSONL/Parquet file, or the built-in arithmetic generator."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]*$",
                      description="Short name used in metrics and reports.")
    path: str | None = Field(None, description="JSONL or Parquet file (relative to the spec file or absolute).")
    layout: Layout = Field("auto", description="Row layout: forkrl, dapo_math_17k, aime, or auto-detect.")
    arithmetic: ArithmeticSpec | None = Field(None, description="Generate arithmetic problems instead of a file.")
    count: int | None = Field(None, ge=1, description="Rows to generate (arithmetic) or to keep (file; None = all).")
    seed: int = Field(0, ge=0, description="Seed of the generator / of the row order.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.path is None) == (self.arithmetic is None):
            raise ValueError(f"dataset {self.name!r}: set exactly one of `path` or `arithmetic`")
        if self.arithmetic is not None and self.count is None:
            raise ValueError(f"dataset {self.name!r}: `count` is required with `arithmetic`")
        return self


class DataSpec(_Spec):
    """Training prompts."""

    train: list[DatasetSpec] = Field(..., min_length=1, description="Training data sets (concatenated).")
    template: TemplateName = Field("boxed", description="Prompt template: boxed (80/20), dapo, chat or plain.")
    shuffle: bool = Field(True, description="Shuffle the prompts each epoch (seeded by the run seed).")


class EvalSpec(_Spec):
    """Held-out evaluation: avg@k and pass@k at a fixed temperature and top-p."""

    datasets: list[DatasetSpec] = Field(default_factory=list, description="Held-out data sets.")
    interval: int = Field(0, ge=0, description="Evaluate every this many RL steps (0 = only before and after).")
    samples_per_problem: int = Field(1, ge=1, le=1024, description="k of avg@k (samples per problem).")
    pass_k: list[int] = Field(default_factory=lambda: [1], description="k values reported for pass@k.")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(0.7, gt=0.0, le=1.0, description="Nucleus mass (80/20/DAPO evaluate at 0.7).")
    max_response_tokens: int | None = Field(None, ge=1, description="Generation cap; None = model's.")
    before_training: bool = Field(True, description="Also evaluate before the first RL step.")

    @model_validator(mode="after")
    def _k_fits(self) -> EvalSpec:
        bad = [k for k in self.pass_k if not 1 <= k <= self.samples_per_problem]
        if bad:
            raise ValueError(
                f"eval.pass_k values {bad} must lie in [1, samples_per_problem={self.samples_per_problem}]"
            )
        return self


class ColdStartSpec(_Spec):
    """Supervised warm-up on worked solutions so early rewards are not all zero (local arithmetic mode)."""

    enabled: bool = Field(False, description="Run the supervised cold start before RL.")
    dataset: DatasetSpec | None = Field(None, description="Rows whose metadata.solution is the target text.")
    steps: int = Field(200, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Examples per step.")
    lr: float = Field(3e-3, gt=0.0, le=1.0, description="Learning rate (Adam).")

    @model_validator(mode="after")
    def _needs_data(self) -> ColdStartSpec:
        if self.enabled and self.dataset is None:
            raise ValueError("cold_start.dataset is required when cold_start.enabled")
        return self


class CheckpointSpec(_Spec):
    """Where and how often the run is checkpointed; resume continues from the latest one."""

    dir: str = Field("runs/{name}/checkpoints", description="Directory; `{name}` expands to the run name.")
    interval: int = Field(5, ge=1, description="Checkpoint every this many RL steps (and at the end).")
    keep_last: int = Field(2, ge=1, le=1000, description="Older checkpoints are deleted.")
    export_interval: int | None = Field(
        None, ge=1, description="Also write a standalone Hugging Face model directory "
        "`<run_dir>/models/step_NNNNNNNN` every this many RL steps (never deleted; `forkrl analyze overlap` "
        "compares them over training). None: only `final_model` at the end.")


class ObservabilitySpec(_Spec):
    """Metrics endpoint, logs and the final report."""

    run_dir: str = Field("runs/{name}", description="Logs, TensorBoard events and the report go here.")
    metrics_port: int | None = Field(0, ge=0, le=65535, description="Prometheus port (0 = any free, None = off).")
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    report: bool = Field(True, description="Write report.html with PNG plots at the end.")
    progress: Literal["bar", "lines", "quiet"] = Field("bar", description="Live progress bar, one line per step, "
                                                                          "or nothing (CI).")
