"""What one RLVRJob's children say, as the pure status derivation (status.derive) reads it.

`children_of` reads a job's children from the kopf indices (see handlers); `observe` turns them, with the
job's metadata, spec and previous status, into an `Observation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from forkrl.operator.names import JOB_LABEL, JobNames
from forkrl.operator.pod_problems import component_problems
from forkrl.operator.resource import RLVRJobResourceSpec
from forkrl.operator.status import DeploymentObservation, Observation, RayJobObservation, parse_progress

Children = Mapping[str, Mapping[str, dict[str, Any]]]  # kind -> name -> summary


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_pod_failure(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    parts = [f"pod {pod['metadata']['name']} failed"]
    if status.get("reason"):
        parts.append(f"reason {status['reason']}")
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            parts.append(
                f"container {container.get('name')}: {terminated.get('reason', 'terminated')} "
                f"(exit code {terminated.get('exitCode')})"
            )
    if status.get("message"):
        parts.append(status["message"])
    return "; ".join(parts)


def observe(
    names: JobNames,
    meta: dict[str, Any],
    spec: RLVRJobResourceSpec | None,
    status: dict[str, Any],
    children: Children,
    attempt: int,
    refused: Iterable[str],
    spec_error: str | None,
) -> Observation:
    """The Observation of one job from its children (see status.derive)."""
    ray_job_name = names.ray_job(attempt)
    ray_job = None
    if (live := children.get("RayJob", {}).get(ray_job_name)) is not None:
        state = live.get("status") or {}
        ray_job = RayJobObservation(
            name=ray_job_name,
            job_deployment_status=state.get("jobDeploymentStatus", ""),
            job_status=state.get("jobStatus", ""),
            reason=state.get("reason", ""),
            message=state.get("message", ""),
            ray_cluster_name=state.get("rayClusterName", ""),
            suspend=bool((live.get("spec") or {}).get("suspend")),
        )

    def deployment(name: str, component: str) -> DeploymentObservation:
        live = children.get("Deployment", {}).get(name)
        if live is None:
            return DeploymentObservation(desired=0, exists=False)
        state = live.get("status") or {}
        return DeploymentObservation(
            desired=int((live.get("spec") or {}).get("replicas", 0)),
            ready=int(state.get("readyReplicas", 0)),
            available=int(state.get("availableReplicas", 0)),
            problems=component_problems(children.get("Pod", {}).values(), component),
        )

    external_verifier = spec is not None and spec.verifier.endpoint is not None
    progress_data = (children.get("ConfigMap", {}).get(names.status) or {}).get("data")
    progress, errors = parse_progress(progress_data)
    failure = status.get("lastFailure") or {}
    pod_failure = failure if failure.get("reason") == "PodFailed" and failure.get("rayJob") == ray_job_name else None
    return Observation(
        generation=int(meta.get("generation", 1)),
        now=now(),
        suspend=bool(spec and spec.suspend),
        ray_job_name=ray_job_name,
        ray_job=ray_job,
        rollout=deployment(names.rollout, "rollout"),
        verifier=None if external_verifier else deployment(names.verifier, "verifier"),
        rollout_external=spec is not None and spec.rollout.replicas == 0,
        pod_failure=pod_failure,
        progress=progress,
        progress_errors=errors,
        progress_seen=bool(progress_data),
        spec_error=spec_error,
        refused_changes=tuple(refused),
        max_retries=spec.cluster.max_retries if spec is not None else 0,
    )


def children_of(indices: Mapping[str, Any], namespace: str, job: str) -> Children:
    """kind -> name -> summary for one job, from the kopf indices `children_<kind>` (see handlers)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for index_id, index in indices.items():
        if not index_id.startswith("children_"):
            continue
        for summary in index.get((namespace, job), ()):
            if summary.get("metadata", {}).get("labels", {}).get(JOB_LABEL) != job:
                continue
            out.setdefault(summary["kind"], {})[summary["metadata"]["name"]] = summary
    return out
