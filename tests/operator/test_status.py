"""Phase and conditions derived from the children (operator/status.py), scenario by scenario."""

from __future__ import annotations

from typing import Any

from forkrl.operator.status import (
    Decision,
    DeploymentObservation,
    Observation,
    RayJobObservation,
    derive,
    parse_progress,
)

READY = DeploymentObservation(desired=2, ready=2, available=2)
STARTING = DeploymentObservation(desired=2, ready=1, available=1)
RUNNING = RayJobObservation("exp", "Running", "RUNNING", ray_cluster_name="exp-x1")


def observe(t: int = 0, **fields: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 1,
        "now": f"2026-01-01T00:00:{t:02d}Z",
        "ray_job_name": "exp",
        "ray_job": RayJobObservation("exp", "Initializing"),
        "rollout": READY,
        "verifier": READY,
    }
    base.update(fields)
    return Observation(**base)


def conditions(decision: Decision) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in decision.status["conditions"]}


def run(*observations: Observation) -> list[Decision]:
    """Feed observations in order, each derive() seeing the previous status."""
    status: dict[str, Any] = {}
    decisions = []
    for observation in observations:
        decision = derive(status, observation)
        decisions.append(decision)
        status = decision.status
    return decisions


def test_pending_until_the_learner_runs_and_the_services_are_available() -> None:
    waiting, serving, running = run(
        observe(0, rollout=STARTING),
        observe(1, ray_job=RUNNING, rollout=STARTING),
        observe(2, ray_job=RUNNING),
    )
    assert (waiting.status["phase"], waiting.status["reason"]) == ("Pending", "WaitingForLearner")
    assert conditions(waiting)["RolloutReady"] == ("False", "Unavailable")
    assert (serving.status["phase"], serving.status["reason"]) == ("Pending", "WaitingForServices")
    assert running.status["phase"] == "Running"
    assert conditions(running)["Ready"] == ("True", "AllComponentsReady")
    assert running.status["startTime"] == "2026-01-01T00:00:02Z"
    assert ("Normal", "Running", "learner, rollout and verifier are running") in running.events


def test_without_its_ray_job_the_learner_waits_for_the_services_with_a_condition() -> None:
    waiting, both_missing, ready = run(
        observe(0, ray_job=None, rollout=STARTING),
        observe(1, ray_job=None, rollout=DeploymentObservation(0, exists=False), verifier=STARTING),
        observe(2, ray_job=None),
    )
    assert (waiting.status["phase"], waiting.status["reason"]) == ("Pending", "WaitingForServices")
    services = next(c for c in waiting.status["conditions"] if c["type"] == "ServicesReady")
    assert (services["status"], services["reason"]) == ("False", "WaitingForRollout")
    assert services["message"] == "the learner starts once they are ready: rollout: 1/2 replicas available"
    assert waiting.status["message"] == services["message"]
    assert conditions(waiting)["LearnerReady"] == ("False", "WaitingForRollout")
    assert conditions(both_missing)["ServicesReady"] == ("False", "WaitingForServices")
    # Services ready: the reconciler creates the RayJob now; until it reports, the learner is what is missing.
    assert conditions(ready)["ServicesReady"] == ("True", "ServicesReady")
    assert (ready.status["phase"], ready.status["reason"]) == ("Pending", "WaitingForLearner")
    assert ("Normal", "ServicesReadyTrue", "rollout and verifier are available") in ready.events


def test_a_resumed_ray_job_waits_suspended_for_the_services() -> None:
    (held,) = run(observe(0, ray_job=RayJobObservation("exp", "Suspended", suspend=True), verifier=STARTING))
    assert (held.status["phase"], held.status["reason"]) == ("Pending", "WaitingForServices")
    assert conditions(held)["ServicesReady"] == ("False", "WaitingForVerifier")


def test_a_rollout_of_only_external_endpoints_does_not_hold_the_learner_back() -> None:
    (external,) = run(observe(0, ray_job=None, rollout=DeploymentObservation(0), rollout_external=True))
    assert conditions(external)["RolloutReady"] == ("True", "ExternalEndpoint")
    assert conditions(external)["ServicesReady"] == ("True", "ServicesReady")


def test_a_running_job_stays_running_when_a_service_degrades() -> None:
    *_, degraded = run(observe(0, ray_job=RUNNING), observe(1, ray_job=RUNNING, rollout=STARTING))
    assert degraded.status["phase"] == "Running"
    assert conditions(degraded)["Ready"] == ("False", "Unavailable")
    assert ("Warning", "RolloutReadyFalse", "rollout: 1/2 replicas available") in degraded.events


def test_success_is_sticky_and_never_reverts() -> None:
    _, done, later = run(
        observe(0, ray_job=RUNNING),
        observe(1, ray_job=RayJobObservation("exp", "Complete", "SUCCEEDED")),
        observe(2, ray_job=None, rollout=DeploymentObservation(0, exists=False)),
    )
    assert done.status["phase"] == "Succeeded" and done.status["completionTime"] == "2026-01-01T00:00:01Z"
    assert later.status["phase"] == "Succeeded" and later.status["completionTime"] == "2026-01-01T00:00:01Z"
    assert conditions(later)["Succeeded"] == ("True", "Succeeded")


def test_a_failed_ray_job_fails_the_job_with_its_reason_and_message() -> None:
    failed = RayJobObservation("exp", "Failed", "FAILED", reason="AppFailed", message="Job entrypoint command failed")
    _, decision = run(observe(0, ray_job=RUNNING), observe(1, ray_job=failed))
    status = decision.status
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed",
        "AppFailed",
        "Job entrypoint command failed",
    )
    assert conditions(decision)["Failed"] == ("True", "AppFailed")
    assert status["lastFailure"] == {
        "reason": "AppFailed",
        "message": "Job entrypoint command failed",
        "rayJob": "exp",
        "time": "2026-01-01T00:00:01Z",
    }
    assert ("Warning", "Failed", "Job entrypoint command failed") in decision.events
    deadline = RayJobObservation("exp", "Failed", "", reason="DeadlineExceeded", message="deadline")
    assert derive({}, observe(ray_job=deadline)).status["reason"] == "DeadlineExceeded"
    stopped = RayJobObservation("exp", "Complete", "STOPPED")
    assert derive({}, observe(ray_job=stopped)).status["reason"] == "Stopped"


def test_a_failure_with_retries_left_asks_for_a_retry_and_counts_it() -> None:
    failed = RayJobObservation("exp", "Failed", "FAILED", reason="AppFailed", message="boom")
    decision = derive({"phase": "Running", "retries": 0}, observe(ray_job=failed, max_retries=2))
    assert decision.retry is True
    assert decision.status["retries"] == 1
    assert (decision.status["phase"], decision.status["reason"]) == ("Pending", "Retrying")
    assert decision.status["message"] == "attempt 2/3 after AppFailed: boom"
    assert decision.events.count(("Warning", "Retrying", "attempt 2/3 after AppFailed: boom")) == 1
    exhausted = derive({"phase": "Running", "retries": 2}, observe(ray_job=failed, max_retries=2))
    assert exhausted.retry is False and exhausted.status["phase"] == "Failed" and exhausted.status["retries"] == 2


def test_a_failed_learner_pod_fails_the_attempt() -> None:
    pod = {"reason": "PodFailed", "message": "pod exp-worker-0 failed; reason OOMKilled", "rayJob": "exp"}
    decision = derive({"phase": "Running"}, observe(ray_job=RUNNING, pod_failure=pod))
    assert (decision.status["phase"], decision.status["reason"]) == ("Failed", "PodFailed")
    assert decision.status["message"] == "pod exp-worker-0 failed; reason OOMKilled"


def test_suspend_reports_suspending_until_the_children_are_down() -> None:
    suspending, suspended = run(
        observe(0, suspend=True, ray_job=RayJobObservation("exp", "Suspending", "RUNNING", suspend=True)),
        observe(
            1,
            suspend=True,
            ray_job=RayJobObservation("exp", "Suspended", "", suspend=True),
            rollout=DeploymentObservation(0),
            verifier=DeploymentObservation(0),
        ),
    )
    assert (suspending.status["phase"], suspending.status["reason"]) == ("Suspended", "Suspending")
    assert (suspended.status["phase"], suspended.status["reason"]) == ("Suspended", "Suspended")
    assert conditions(suspended)["Suspended"] == ("True", "Suspended")
    assert conditions(suspended)["RolloutReady"] == ("False", "ScaledToZero")


def test_pods_failing_while_the_job_suspends_do_not_fail_it_and_it_resumes() -> None:
    pod = {"reason": "PodFailed", "message": "pod exp-worker-0 failed; container ray-worker: Error", "rayJob": "exp"}
    stopped = RayJobObservation("exp", "Suspending", "STOPPED", suspend=True)
    suspending, suspended, resumed = run(
        observe(0, suspend=True, ray_job=stopped, pod_failure=pod),
        observe(1, suspend=True, ray_job=RayJobObservation("exp", "Suspended", "", suspend=True),
                rollout=DeploymentObservation(0), verifier=DeploymentObservation(0)),
        observe(2, ray_job=RUNNING),
    )
    assert (suspending.status["phase"], suspended.status["phase"]) == ("Suspended", "Suspended")
    assert not suspending.retry and suspending.status["retries"] == 0
    assert resumed.status["phase"] == "Running"


def test_an_invalid_spec_fails_and_refused_changes_are_reported() -> None:
    invalid = derive({}, observe(spec_error="spec: invalid (learner.reference.enabled: ...)"))
    assert (invalid.status["phase"], invalid.status["reason"]) == ("Failed", "InvalidSpec")
    refused = derive({}, observe(refused_changes=("learner.parallel.tensor_parallel (2 -> 4)",)))
    assert conditions(refused)["SpecAccepted"] == ("False", "ImmutableFieldChanged")
    message = next(c["message"] for c in refused.status["conditions"] if c["type"] == "SpecAccepted")
    assert "learner.parallel.tensor_parallel (2 -> 4)" in message


def test_derive_is_idempotent_and_keeps_transition_times() -> None:
    first = derive({}, observe(0, ray_job=RUNNING))
    again = derive(first.status, observe(5, ray_job=RUNNING))
    assert again.status == first.status  # same inputs (later clock): nothing to write
    assert again.events == []
    changed = derive(first.status, observe(9, ray_job=RUNNING, rollout=STARTING, generation=2))
    times = {c["type"]: c["lastTransitionTime"] for c in changed.status["conditions"]}
    assert times["RolloutReady"] == "2026-01-01T00:00:09Z"  # changed
    assert times["LearnerReady"] == "2026-01-01T00:00:00Z"  # unchanged
    assert {c["observedGeneration"] for c in changed.status["conditions"]} == {2}


def test_progress_from_the_status_config_map() -> None:
    good = {
        "step": "12",
        "reward": "0.375",
        "accuracy": "0.5",
        "weightVersion": "12",
        "checkpoint": "/ckpt/step_10",
        "updatedAt": "2026-01-01T00:00:00Z",
    }
    assert parse_progress(good) == (
        {
            "step": 12,
            "reward": 0.375,
            "accuracy": 0.5,
            "weightVersion": 12,
            "checkpoint": "/ckpt/step_10",
            "progressTime": "2026-01-01T00:00:00Z",
        },
        (),
    )
    values, errors = parse_progress({"step": "-1", "reward": "nan", "accuracy": "high", "weightVersion": "3"})
    assert values == {"weightVersion": 3}
    assert errors == ("step='-1'", "reward='nan'", "accuracy='high'")
    decision = derive({}, observe(progress=values, progress_errors=errors, progress_seen=True))
    assert conditions(decision)["ProgressReported"] == ("False", "MalformedProgress")
    assert decision.status["weightVersion"] == 3
    assert conditions(derive({}, observe()))["ProgressReported"] == ("Unknown", "NoProgress")


def test_external_verifier_counts_as_ready() -> None:
    decision = derive({}, observe(ray_job=RUNNING, verifier=None))
    assert decision.status["phase"] == "Running"
    assert conditions(decision)["VerifierReady"] == ("True", "ExternalEndpoint")
    assert "verifier" not in decision.status
