"""Pure derivation of an RLVRJob's status from what its children report.

    derive(previous_status, observation) -> Decision(status, events, retry)

The phase follows every child, not only the first one that reports (a RayJob can be Running while the
rollout Deployment is still starting): Pending until the RayJob's job runs *and* the rollout and verifier
are available; Running from then on while the RayJob runs; Succeeded/Failed when the RayJob finishes;
Suspended while `spec.suspend`. Succeeded and Failed are sticky: a terminal job never goes back (and the
reconciler never recreates its children). A learner failure with retries left is not terminal: the
decision asks for a retry (a new RayJob attempt resuming from the last checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from forkrl.operator.resource import TERMINAL_PHASES

# KubeRay's terminal application states that are not success.
FAILED_JOB_STATUSES = frozenset({"FAILED", "STOPPED"})
FAILED_DEPLOYMENT_STATUSES = frozenset({"Failed", "ValidationFailed"})
CONDITION_TYPES = (
    "Ready",
    "LearnerReady",
    "RolloutReady",
    "VerifierReady",
    "ServicesReady",
    "Running",
    "Suspended",
    "Succeeded",
    "Failed",
    "SpecAccepted",
    "ProgressReported",
)


@dataclass(frozen=True)
class RayJobObservation:
    name: str
    job_deployment_status: str = ""
    job_status: str = ""
    reason: str = ""
    message: str = ""
    ray_cluster_name: str = ""
    suspend: bool = False

    @property
    def running(self) -> bool:
        return self.job_deployment_status == "Running" and self.job_status == "RUNNING"

    @property
    def succeeded(self) -> bool:
        return self.job_deployment_status == "Complete" and self.job_status == "SUCCEEDED"

    def failure(self) -> tuple[str, str] | None:
        """(reason, message) when the RayJob failed: its infrastructure or its Ray application."""
        if self.job_deployment_status in FAILED_DEPLOYMENT_STATUSES or self.job_status in FAILED_JOB_STATUSES:
            reason = self.reason or ("Stopped" if self.job_status == "STOPPED" else "RayJobFailed")
            detail = (
                self.message
                or f"RayJob {self.name}: jobDeploymentStatus={self.job_deployment_status}, jobStatus={self.job_status}"
            )
            return reason, detail
        return None


@dataclass(frozen=True)
class DeploymentObservation:
    desired: int
    ready: int = 0
    available: int = 0
    exists: bool = True
    problems: tuple[str, ...] = ()
    """Its failing pods, one line each (operator/pod_problems.py)."""

    @property
    def available_fully(self) -> bool:
        return self.exists and self.desired > 0 and self.available >= self.desired


@dataclass(frozen=True)
class Observation:
    """Everything derive() needs; built by the reconciler from the live children."""

    generation: int
    now: str
    suspend: bool = False
    ray_job_name: str = ""
    ray_job: RayJobObservation | None = None
    rollout: DeploymentObservation | None = None
    verifier: DeploymentObservation | None = None  # None: an external verifier endpoint
    rollout_external: bool = False  # spec.rollout.replicas == 0: only the user's rollout endpoints
    pod_failure: dict[str, Any] | None = None  # a failed learner pod of the current attempt
    progress: dict[str, Any] = field(default_factory=dict)
    progress_errors: tuple[str, ...] = ()
    progress_seen: bool = False
    spec_error: str | None = None
    refused_changes: tuple[str, ...] = ()
    max_retries: int = 0


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type Normal|Warning, reason, message)
    retry: bool = False


def parse_progress(data: dict[str, str] | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The controller's `<job>-status` ConfigMap data -> status fields (camelCase) and the bad keys."""
    if not data:
        return {}, ()
    converters = {
        "step": int,
        "weightVersion": int,
        "reward": float,
        "accuracy": float,
        "checkpoint": str,
        "updatedAt": str,
    }
    out: dict[str, Any] = {}
    errors = []
    for key, convert in converters.items():
        if key not in data:
            continue
        try:
            value = convert(data[key].strip())
        except (TypeError, ValueError, AttributeError):
            errors.append(f"{key}={data[key]!r}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{key}={data[key]!r}")
            continue
        if isinstance(value, int) and value < 0:
            errors.append(f"{key}={data[key]!r}")
            continue
        out["progressTime" if key == "updatedAt" else key] = value
    return out, tuple(errors)


def _condition(type_: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "Unknown" if ok is None else ("True" if ok else "False"),
        "reason": reason,
        "message": message,
    }


def _service_condition(type_: str, what: str, obs: DeploymentObservation | None, external: bool) -> dict[str, Any]:
    if external:
        return _condition(type_, True, "ExternalEndpoint", f"{what} is an external endpoint")
    if obs is None or not obs.exists:
        return _condition(type_, False, "Missing", f"{what} Deployment does not exist")
    if obs.desired == 0:
        return _condition(type_, False, "ScaledToZero", f"{what} Deployment has 0 replicas")
    ok = obs.available >= obs.desired
    message = f"{what}: {obs.available}/{obs.desired} replicas available"
    if not ok and obs.problems:
        return _condition(type_, False, "ContainersFailing", "; ".join([message, *obs.problems]))
    return _condition(type_, ok, "Available" if ok else "Unavailable", message)


def services_condition(obs: Observation) -> dict[str, Any]:
    """ServicesReady: whether the rollout and the verifier are available, which the learner waits for (the
    reconciler creates an attempt's RayJob, or resumes a suspended one, only once this is True)."""
    rollout = _service_condition("RolloutReady", "rollout", obs.rollout, external=obs.rollout_external)
    verifier = _service_condition("VerifierReady", "verifier", obs.verifier, external=obs.verifier is None)
    waiting = [c for c in (rollout, verifier) if c["status"] != "True"]
    if not waiting:
        return _condition("ServicesReady", True, "ServicesReady", "rollout and verifier are available")
    if len(waiting) == 2:
        reason = "WaitingForServices"
    else:
        reason = "WaitingForRollout" if rollout in waiting else "WaitingForVerifier"
    detail = "; ".join(c["message"] for c in waiting)
    return _condition("ServicesReady", False, reason, f"the learner starts once they are ready: {detail}")


def services_ready(obs: Observation) -> bool:
    return services_condition(obs)["status"] == "True"


def _learner_condition(obs: Observation, services: dict[str, Any]) -> dict[str, Any]:
    ray = obs.ray_job
    if ray is None and services["status"] != "True":
        return _condition("LearnerReady", False, services["reason"], services["message"])
    if ray is None:
        return _condition("LearnerReady", False, "RayJobMissing", f"RayJob {obs.ray_job_name} does not exist")
    if ray.running:
        return _condition("LearnerReady", True, "RayJobRunning", f"RayJob {ray.name} is running")
    state = ray.job_deployment_status or "New"
    # Deployed but the Ray application not running yet: KubeRay is submitting it.
    reason = "RayJobStarting" if state == "Running" else f"RayJob{state}"
    return _condition(
        "LearnerReady",
        False,
        reason,
        f"RayJob {ray.name}: jobDeploymentStatus={state}, jobStatus={ray.job_status or '-'}",
    )


def _learner_failure(obs: Observation) -> tuple[str, str] | None:
    if obs.ray_job is not None and (failure := obs.ray_job.failure()) is not None:
        return failure
    if obs.pod_failure is not None:
        return "PodFailed", str(obs.pod_failure.get("message", "a learner pod failed"))
    return None


def _phase(prev: dict[str, Any], obs: Observation, services: dict[str, Any]) -> tuple[str, str, str, bool]:
    """(phase, reason, message, retry)."""
    previous = prev.get("phase")
    if previous in TERMINAL_PHASES:
        return previous, prev.get("reason") or previous, prev.get("message") or "", False
    if obs.spec_error is not None:
        return "Failed", "InvalidSpec", obs.spec_error, False
    if obs.suspend:
        # Before failures: suspending stops the Ray job and deletes its pods, whose containers may then
        # exit with an error. That is the suspension, not the learner failing; resuming continues from
        # the last checkpoint either way.
        ray_down = obs.ray_job is None or obs.ray_job.job_deployment_status in ("Suspended", "")
        pods_down = all(d is None or d.ready == 0 for d in (obs.rollout, obs.verifier))
        done = ray_down and pods_down
        return (
            "Suspended",
            "Suspended" if done else "Suspending",
            "suspended: no learner, rollout or verifier pods" if done else "scaling the children down",
            False,
        )
    failure = _learner_failure(obs)
    if failure is not None:
        reason, message = failure
        retries = int(prev.get("retries") or 0)
        if retries < obs.max_retries:
            return "Pending", "Retrying", f"attempt {retries + 2}/{obs.max_retries + 1} after {reason}: {message}", True
        return "Failed", reason, message, False
    ray = obs.ray_job
    services_ready = services["status"] == "True"
    if ray is not None and ray.succeeded:
        return "Succeeded", "Succeeded", f"RayJob {ray.name} finished", False
    if ray is not None and ray.running and (previous == "Running" or services_ready):
        return "Running", "Running", "learner, rollout and verifier are running", False
    if not services_ready and (ray is None or ray.suspend):
        # The learner is held back (its RayJob not created, or kept suspended) until the services are ready.
        return "Pending", "WaitingForServices", services["message"], False
    if ray is None or not ray.running:
        state = ray.job_deployment_status if ray is not None and ray.job_deployment_status else "New"
        return "Pending", "WaitingForLearner", f"RayJob {obs.ray_job_name} is {state}", False
    return "Pending", "WaitingForServices", "the learner runs; waiting for rollout and verifier replicas", False


def derive(prev: dict[str, Any], obs: Observation) -> Decision:
    """The new status (complete; unchanged fields keep their values) and the events of its transitions."""
    prev = prev or {}
    external_verifier = obs.verifier is None
    rollout_c = _service_condition("RolloutReady", "rollout", obs.rollout, external=obs.rollout_external)
    verifier_c = _service_condition("VerifierReady", "verifier", obs.verifier, external=external_verifier)
    services_c = services_condition(obs)
    learner_c = _learner_condition(obs, services_c)
    services_ready = services_c["status"] == "True"
    phase, reason, message, retry = _phase(prev, obs, services_c)

    ready = phase == "Running" and learner_c["status"] == "True" and services_ready
    not_ready = next((c for c in (learner_c, rollout_c, verifier_c) if c["status"] != "True"), None)
    conditions = [
        _condition(
            "Ready",
            ready,
            "AllComponentsReady" if ready else (not_ready or {}).get("reason", phase),
            "learner, rollout and verifier are ready" if ready else (not_ready or {}).get("message", message),
        ),
        learner_c,
        rollout_c,
        verifier_c,
        services_c,
        _condition("Running", phase == "Running", phase, message),
        _condition(
            "Suspended",
            phase == "Suspended",
            reason if phase == "Suspended" else "NotSuspended",
            message if phase == "Suspended" else "",
        ),
        _condition(
            "Succeeded",
            phase == "Succeeded",
            reason if phase == "Succeeded" else phase,
            message if phase == "Succeeded" else "",
        ),
        _condition(
            "Failed", phase == "Failed", reason if phase == "Failed" else phase, message if phase == "Failed" else ""
        ),
        _condition(
            "SpecAccepted",
            not obs.refused_changes,
            "ImmutableFieldChanged" if obs.refused_changes else "Accepted",
            ("cannot change a running job: " + "; ".join(obs.refused_changes) + " (kept the accepted spec)")
            if obs.refused_changes
            else "the current spec is running",
        ),
        _condition(
            "ProgressReported",
            (not obs.progress_errors) if obs.progress_seen else None,
            "MalformedProgress" if obs.progress_errors else ("Reported" if obs.progress_seen else "NoProgress"),
            ("unreadable keys in the status ConfigMap: " + ", ".join(obs.progress_errors))
            if obs.progress_errors
            else "",
        ),
    ]
    previous = {c["type"]: c for c in prev.get("conditions") or []}
    events: list[tuple[str, str, str]] = []
    for condition in conditions:
        old = previous.get(condition["type"])
        unchanged = old is not None and old.get("status") == condition["status"]
        condition["lastTransitionTime"] = old["lastTransitionTime"] if unchanged else obs.now
        condition["observedGeneration"] = obs.generation
        phase_condition = condition["type"] in ("Running", "Succeeded", "Failed", "Suspended")
        if not unchanged and not phase_condition and (old is not None or condition["status"] == "True"):
            expected = phase in ("Succeeded", "Suspended")  # components wind down on purpose
            kind = "Normal" if condition["status"] == "True" or expected else "Warning"
            events.append((kind, f"{condition['type']}{condition['status']}", condition["message"]))

    status: dict[str, Any] = {key: value for key, value in prev.items() if key not in ("conditions",)}
    status.update(
        {
            "phase": phase,
            "reason": reason,
            "message": message,
            "observedGeneration": obs.generation,
            "conditions": conditions,
        }
    )
    status.update(obs.progress)
    if obs.ray_job is not None:
        ray = obs.ray_job
        status["rayJob"] = {
            key: value
            for key, value in {
                "name": ray.name,
                "jobDeploymentStatus": ray.job_deployment_status,
                "jobStatus": ray.job_status,
                "reason": ray.reason,
                "message": ray.message,
                "rayClusterName": ray.ray_cluster_name,
            }.items()
            if value
        }
    for key, deployment in (("rollout", obs.rollout), ("verifier", obs.verifier)):
        if deployment is not None:
            status[key] = {
                "replicas": deployment.desired,
                "readyReplicas": deployment.ready,
                "availableReplicas": deployment.available,
            }
    status.setdefault("retries", 0)
    failure = _learner_failure(obs)
    if failure is not None and prev.get("phase") not in TERMINAL_PHASES:
        record = {"reason": failure[0], "message": failure[1], "rayJob": obs.ray_job_name}
        old = prev.get("lastFailure") or {}
        if {k: old.get(k) for k in record} != record:
            record["time"] = obs.now
            status["lastFailure"] = record
    if retry:
        status["retries"] = int(prev.get("retries") or 0) + 1
        events.append(("Warning", "Retrying", message))
    if phase == "Running" and not prev.get("startTime"):
        status["startTime"] = obs.now
    if phase in TERMINAL_PHASES and not prev.get("completionTime"):
        status["completionTime"] = obs.now
    if not retry and (phase != prev.get("phase") or reason != prev.get("reason")):
        kind = "Warning" if phase == "Failed" else "Normal"
        events.append((kind, phase if phase != "Pending" else reason, message))
    return Decision(status=status, events=events, retry=retry)
