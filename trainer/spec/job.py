"""`RLVRJobSpec`: the whole experiment in one validated model.

The same model is a YAML file locally (`forkrl train examples/<name>.yaml`), the `spec` of the RLVRJob
custom resource (its CRD schema is generated from it) and the Helm values schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.objectives import ForkingConfig, ObjectiveConfig
from forkrl.trainer.spec.algorithm import AdvantageSpec, DynamicSamplingSpec, OverlongSpec, ScheduleSpec
from forkrl.trainer.spec.components import ModelSpec, RolloutSpec, VerifierSpec
from forkrl.trainer.spec.run import CheckpointSpec, ColdStartSpec, DataSpec, EvalSpec, ObservabilitySpec


class ResourcesSpec(BaseModel):
    """Processes of a local (Ray) run; on Kubernetes the operator maps these to pods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learner_ranks: int = Field(1, ge=1, le=100_000, description="Learner processes (GPUs); TP x PP must divide it.")
    cpus_per_learner: float = Field(1.0, gt=0, le=1024, description="CPUs reserved per learner rank (Ray).")
    gpus_per_learner: float = Field(0.0, ge=0, le=8, description="GPUs per learner rank (0 on CPU).")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch intra-op threads of each learner rank (unset: 1); the rollout "
        "replicas have their own (rollout.torch_threads)."
    )


class RLVRJobSpec(BaseModel):
    """One RLVR experiment: model, data, services, learner, objective, schedule, evaluation, outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, max_length=52, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
                      description="Run name (a DNS label: it names Kubernetes objects and the run directory).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of data order, sampling and initialisation.")
    model: ModelSpec = Field(..., description="The policy model.")
    data: DataSpec = Field(..., description="Training prompts.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout replicas.")
    verifier: VerifierSpec = Field(default_factory=VerifierSpec, description="Reward verifier.")
    learner: LearnerSpec = Field(default_factory=LearnerSpec, description="Megatron learner.")
    objective: ObjectiveConfig = Field(default_factory=ForkingConfig, description="Policy objective (by `name`).")
    overlong: OverlongSpec = Field(default_factory=OverlongSpec, description="Overlong reward shaping.")
    advantage: AdvantageSpec = Field(default_factory=AdvantageSpec, description="GRPO advantage.")
    dynamic_sampling: DynamicSamplingSpec = Field(default_factory=DynamicSamplingSpec,
                                                  description="DAPO dynamic sampling.")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="Steps, batch sizes, schedule.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Held-out evaluation.")
    cold_start: ColdStartSpec = Field(default_factory=ColdStartSpec, description="Supervised cold start.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    observability: ObservabilitySpec = Field(default_factory=ObservabilitySpec, description="Metrics and reports.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Processes and their resources.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RLVRJobSpec:
        parallel = self.learner.parallel
        model_parallel = parallel.tensor_parallel * parallel.pipeline_parallel
        if self.resources.learner_ranks % model_parallel:
            raise ValueError(
                f"resources.learner_ranks={self.resources.learner_ranks} must be a multiple of "
                f"learner.parallel.tensor_parallel x pipeline_parallel = {model_parallel}"
            )
        cache = self.overlong.cache_tokens
        if self.overlong.enabled and cache is not None and cache > self.model.max_response_tokens:
            raise ValueError(
                f"overlong.cache_tokens={self.overlong.cache_tokens} exceeds model.max_response_tokens="
                f"{self.model.max_response_tokens}"
            )
        if self.objective.needs_reference and self.learner.reference.enabled is False:
            raise ValueError(f"objective {self.objective.name!r} has a KL term: learner.reference.enabled "
                             "must not be false")
        rollout_field, rollout_temperature = self.rollout_temperature()
        if rollout_temperature is None:
            raise ValueError(
                f"rollout.sampling.temperature must be set (or rollout.sampling.dual_temperature): learner.temperature="
                f"{self.learner.temperature} must equal the temperature the rollout samples at, which would otherwise "
                "come from the model's generation config"
            )
        if self.learner.temperature != rollout_temperature:
            raise ValueError(
                f"learner.temperature={self.learner.temperature} must equal {rollout_field}={rollout_temperature}: "
                "the learner's old and new log-probs must use the temperature the rollout sampled at, or every "
                "importance ratio is biased"
            )
        dp = self.resources.learner_ranks // model_parallel
        sequences = self.schedule.mini_batch_size * self.schedule.samples_per_prompt
        if sequences % dp:
            raise ValueError(
                f"schedule.mini_batch_size x samples_per_prompt = {sequences} sequences must divide evenly over "
                f"{dp} data-parallel learner ranks"
            )
        return self

    def rollout_temperature(self) -> tuple[str, float | None]:
        """(field, value) of the rollout temperature the learner must use: `rollout.sampling.temperature`, or
        under dual-temperature decoding `t_low`, so that the low-entropy bulk of the tokens is exactly
        on-policy and only those sampled at t_high are off-policy (see LearnerSpec.temperature)."""
        sampling = self.rollout.sampling
        if sampling.dual_temperature is not None:
            return "rollout.sampling.dual_temperature.t_low", sampling.dual_temperature.t_low
        return "rollout.sampling.temperature", sampling.temperature

    def run_dir(self) -> Path:
        return Path(self.observability.run_dir.replace("{name}", self.name))

    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir.replace("{name}", self.name))


class SpecError(ValueError):
    """A spec that failed validation; the message lists every bad field by its dotted path."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid RLVRJob spec ({err.error_count()} problem(s)):"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(root)"
        value = item.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        lines.append(f"  - {path}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any], source: str = "spec") -> RLVRJobSpec:
    """Validate a dict into an RLVRJobSpec, raising SpecError that names every bad field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RLVRJobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def load_spec(path: str | Path) -> RLVRJobSpec:
    """Read a YAML spec file; relative data paths are resolved against the file's directory."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such spec file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    spec = parse_spec(data, str(path))
    return _resolve_paths(spec, path.parent)


def _resolve_paths(spec: RLVRJobSpec, base: Path) -> RLVRJobSpec:
    def fix(dataset):
        if dataset is None or dataset.path is None or Path(dataset.path).is_absolute():
            return dataset
        return dataset.model_copy(update={"path": str((base / dataset.path).resolve())})

    data = spec.data.model_copy(update={"train": [fix(d) for d in spec.data.train]})
    evaluation = spec.eval.model_copy(update={"datasets": [fix(d) for d in spec.eval.datasets]})
    cold = spec.cold_start.model_copy(update={"dataset": fix(spec.cold_start.dataset)})
    return spec.model_copy(update={"data": data, "eval": evaluation, "cold_start": cold})


def spec_json_schema() -> dict[str, Any]:
    """JSON schema of RLVRJobSpec (`forkrl config schema`)."""
    return RLVRJobSpec.model_json_schema()
