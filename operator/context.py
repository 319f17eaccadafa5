"""What the child builders know about one RLVRJob, and the spec its controller runs with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forkrl.operator.cluster_spec import ClusterSpec
from forkrl.operator.names import JobNames
from forkrl.operator.resource import RLVRJobResourceSpec
from forkrl.trainer.spec import RLVRJobSpec


@dataclass(frozen=True)
class JobContext:
    """What the builders need to know about one RLVRJob."""

    names: JobNames
    uid: str
    spec: RLVRJobResourceSpec
    attempt: int = 0
    # spec.suspend of the live RayJob: with Kueue, Kueue owns it after creation and the operator keeps it.
    live_ray_job_suspend: bool | None = None
    # spec of the live checkpoint claim: a claim's spec is immutable, so an existing one (also a retained
    # claim adopted by a job created again under its name) keeps its size, access mode and class.
    live_claim_spec: dict[str, Any] | None = None
    # The rollout or verifier is not ready yet: a suspended RayJob stays suspended (the reconciler also
    # creates no new RayJob meanwhile), so the learner never holds its GPUs waiting for the services.
    hold_learner: bool = False

    @property
    def cluster(self) -> ClusterSpec:
        return self.spec.cluster

    @property
    def suspended(self) -> bool:
        return self.spec.suspend

    @property
    def has_verifier(self) -> bool:
        return self.spec.verifier.endpoint is None

    @property
    def ray_job_name(self) -> str:
        return self.names.ray_job(self.attempt)

    @property
    def control_secret(self) -> str:
        return self.names.control(self.uid)


def under_mount(path: str, mount: str) -> str:
    """A relative spec path placed on the job's volume; absolute paths and URIs are kept."""
    if path.startswith("/") or "://" in path:
        return path
    return f"{mount.rstrip('/')}/{path}"


def controller_spec(ctx: JobContext) -> RLVRJobSpec:
    """The spec `forkrl train` runs with on the cluster: services reached through their Services,
    outputs on the job's volume (or object store), a fixed metrics port, line-per-step progress."""
    spec = ctx.spec.job_spec(ctx.names.job)
    storage = ctx.cluster.storage
    rollout = spec.rollout.model_copy(
        update={
            "replicas": 0,
            "endpoints": [*spec.rollout.endpoints, ctx.names.service_url(ctx.names.rollout)],
        }
    )
    verifier = spec.verifier
    if ctx.has_verifier:
        verifier = verifier.model_copy(update={"endpoint": ctx.names.service_url(ctx.names.verifier)})
    if storage.uri is not None:
        checkpoint_dir = f"{storage.uri.rstrip('/')}/{{name}}/checkpoints"
    else:
        checkpoint_dir = under_mount(spec.checkpoint.dir, storage.mount_path)
    metrics_port = spec.observability.metrics_port
    if metrics_port == 0:  # "any free port" cannot be scraped: use the cluster's fixed port
        metrics_port = ctx.cluster.monitoring.controller_metrics_port
    observability = spec.observability.model_copy(
        update={
            "run_dir": under_mount(spec.observability.run_dir, storage.mount_path),
            "metrics_port": metrics_port,
            "progress": "lines",
        }
    )
    update = {
        "rollout": rollout,
        "verifier": verifier,
        "observability": observability,
        "checkpoint": spec.checkpoint.model_copy(update={"dir": checkpoint_dir}),
    }
    # Validate the assembled spec again: the overrides must keep it a valid experiment.
    return RLVRJobSpec.model_validate({**spec.model_dump(), **{k: v.model_dump() for k, v in update.items()}})


def rollout_model_dir(ctx: JobContext) -> str:
    """What the rollout replicas load: the checkpoint path, or the tiny model the controller writes."""
    if ctx.spec.model.path is not None:
        return ctx.spec.model.path
    run_dir = under_mount(ctx.spec.observability.run_dir, ctx.cluster.storage.mount_path)
    return f"{run_dir.replace('{name}', ctx.names.job)}/base_model"
