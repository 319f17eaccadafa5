"""The RLVRJob custom resource: its names, the model of its `spec` and the model of its `status`.

`spec` = every field of `RLVRJobSpec` (the experiment; `name` may be omitted and then is the object's
name) + `suspend` + `cluster` (`ClusterSpec`). `status` is written by the operator only; its keys are
camelCase like every Kubernetes status.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from forkrl.operator.cluster_spec import ClusterSpec
from forkrl.trainer.spec import RLVRJobSpec

GROUP = "forkrl.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLVRJob"
PLURAL = "rlvrjobs"
SINGULAR = "rlvrjob"
SHORT_NAMES = ("rlvr",)
CRD_NAME = f"{PLURAL}.{GROUP}"
# The longest RLVRJob name: its RayJob (`<name>-r<attempt>`) must stay within KubeRay's 47 characters.
MAX_NAME_LENGTH = 40

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
PHASES: tuple[str, ...] = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class RLVRJobResourceSpec(RLVRJobSpec):
    """The RLVRJob's `spec`: the experiment plus how it runs on the cluster."""

    name: str | None = Field(  # type: ignore[assignment]
        None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[a-z]([a-z0-9-]*[a-z0-9])?$",
        description="Run name; must equal metadata.name when set (default: metadata.name).",
    )
    suspend: bool = Field(
        False,
        description="Scale the services to zero and suspend the RayJob; false again resumes from the last checkpoint.",
    )
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Images, pod sizes, placement, storage.")

    @model_validator(mode="after")
    def _cluster_rules(self) -> RLVRJobResourceSpec:
        ranks, per_pod = self.resources.learner_ranks, self.cluster.learner.ranks_per_pod
        if ranks > per_pod and ranks % per_pod:
            raise ValueError(
                f"resources.learner_ranks={ranks} must be at most or a multiple of cluster.learner.ranks_per_pod="
                f"{per_pod} (every learner pod holds the same number of ranks)"
            )
        if self.model.tiny is not None and not self.cluster.has_shared_storage:
            raise ValueError(
                "model.tiny on a cluster needs cluster.storage.claim_name or create_claim: the controller writes the "
                "tiny model there and the rollout replicas load it"
            )
        return self

    def job_spec(self, name: str) -> RLVRJobSpec:
        """The experiment alone (what `forkrl train` reads), named `name`."""
        data = self.model_dump(exclude={"suspend", "cluster"})
        data["name"] = name
        return RLVRJobSpec.model_validate(data)


def parse_resource_spec(data: dict[str, Any]) -> RLVRJobResourceSpec:
    return RLVRJobResourceSpec.model_validate(data)


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Condition(_Status):
    """A standard `metav1.Condition`."""

    type: str = Field(
        ...,
        max_length=316,
        description="Ready, LearnerReady, RolloutReady, VerifierReady, Running, "
        "Suspended, Succeeded, Failed or SpecAccepted.",
    )
    status: Literal["True", "False", "Unknown"] = Field(..., description="Status of the condition.")
    reason: str = Field(..., max_length=1024, description="CamelCase reason of the last transition.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(
        ..., description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the condition was set for.")


class RayJobState(_Status):
    """The child RayJob as KubeRay reports it."""

    name: str | None = Field(None, description="Name of the current attempt's RayJob.")
    job_deployment_status: str | None = Field(None, description="KubeRay jobDeploymentStatus (infrastructure).")
    job_status: str | None = Field(None, description="KubeRay jobStatus (the Ray application).")
    reason: str | None = Field(None, description="KubeRay's reason, copied verbatim.")
    message: str | None = Field(None, description="KubeRay's message, copied verbatim.")
    ray_cluster_name: str | None = Field(None, description="The RayCluster KubeRay created.")


class ServiceState(_Status):
    """A rollout or verifier Deployment's replicas."""

    replicas: int = Field(0, ge=0, description="Desired replicas.")
    ready_replicas: int = Field(0, ge=0, description="Ready replicas.")
    available_replicas: int = Field(0, ge=0, description="Available replicas.")


class Failure(_Status):
    """The last learner failure (what a retry or the Failed phase refers to)."""

    reason: str = Field(..., description="RayJob reason (AppFailed, DeadlineExceeded, ...) or PodFailed.")
    message: str = Field("", description="Details, copied from the child.")
    ray_job: str | None = Field(None, description="The RayJob attempt that failed.")
    time: str | None = Field(
        None, description="When it was observed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class RLVRJobStatus(_Status):
    """Written by the operator; the controller's progress comes from the `<job>-status` ConfigMap."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    reason: str | None = Field(None, description="Reason of the current phase.")
    message: str | None = Field(None, description="Details of the current phase.")
    observed_generation: int | None = Field(None, ge=0, description="Last metadata.generation reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Standard conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    step: int | None = Field(None, ge=0, description="Last RL step the controller finished.")
    reward: float | None = Field(None, description="Mean reward of that step.")
    accuracy: float | None = Field(None, description="Accuracy of that step.")
    weight_version: int | None = Field(None, ge=0, description="Policy weight version of the rollout replicas.")
    checkpoint: str | None = Field(None, description="Latest checkpoint the controller wrote.")
    progress_time: str | None = Field(
        None, description="When the controller last reported progress.", json_schema_extra={"format": "date-time"}
    )
    retries: int = Field(0, ge=0, description="Learner retries forkrl made (new RayJob attempts).")
    last_failure: Failure | None = Field(None, description="Last learner failure.")
    ray_job: RayJobState | None = Field(None, description="Current RayJob attempt.")
    rollout: ServiceState | None = Field(None, description="Rollout Deployment.")
    verifier: ServiceState | None = Field(None, description="Verifier Deployment.")
    start_time: str | None = Field(
        None, description="When the job first ran.", json_schema_extra={"format": "date-time"}
    )
    completion_time: str | None = Field(
        None, description="When it reached Succeeded or Failed.", json_schema_extra={"format": "date-time"}
    )
    accepted_spec: str | None = Field(
        None,
        description="The spec the running children were built from (JSON); spec changes that cannot roll "
        "are refused and this stays as it was (see the SpecAccepted condition).",
    )
