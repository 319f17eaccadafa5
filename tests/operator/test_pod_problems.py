"""A rollout or verifier pod that cannot start is named in the job's conditions with its reason, restarts and
the tail of its log (operator/pod_problems.py), from container statuses as the kubelet writes them."""

from __future__ import annotations

from typing import Any

from forkrl.operator.names import COMPONENT_LABEL, JOB_LABEL, JobNames
from forkrl.operator.observe import observe
from forkrl.operator.pod_problems import component_problems, container_problem
from forkrl.operator.status import derive

TRACEBACK = ("Traceback (most recent call last):\n  File \"/work/main/rollout/__main__.py\", line 117\n"
             "    main()\nFileNotFoundError: No such file or directory: /models/m/model.safetensors\n")


def pod(name: str, component: str, waiting: dict[str, Any] | None = None, last: dict[str, Any] | None = None,
        restarts: int = 0, job: str = "exp") -> dict[str, Any]:
    state = {"waiting": waiting} if waiting else {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    status = {"name": component, "state": state, "restartCount": restarts,
              "lastState": {"terminated": last} if last else {}}
    return {"kind": "Pod", "metadata": {"name": name, "labels": {JOB_LABEL: job, COMPONENT_LABEL: component}},
            "status": {"phase": "Running", "containerStatuses": [status]}}


def test_a_crash_loop_is_described_by_its_last_termination() -> None:
    crashing = pod("exp-rollout-a", "rollout", {"reason": "CrashLoopBackOff", "message": "back-off 40s"},
                   {"exitCode": 1, "reason": "Error", "message": TRACEBACK}, restarts=3)
    text = container_problem(crashing)
    assert text is not None and text.startswith("pod exp-rollout-a: CrashLoopBackOff (3 restarts): last exit 1: ")
    assert text.endswith("FileNotFoundError: No such file or directory: /models/m/model.safetensors")
    pulling = pod("exp-verifier-b", "verifier", {"reason": "ImagePullBackOff", "message": "pull access denied"})
    assert container_problem(pulling) == "pod exp-verifier-b: ImagePullBackOff (0 restarts): pull access denied"
    # Starting, running or merely restarting (not backing off) is not a problem.
    assert container_problem(pod("ok", "rollout")) is None
    assert container_problem(pod("c", "rollout", {"reason": "ContainerCreating"})) is None
    long = pod("x", "rollout", {"reason": "CrashLoopBackOff"}, {"exitCode": 137, "message": "y" * 1000})
    assert len(container_problem(long) or "") < 400


def test_the_condition_names_the_failing_pods_of_each_component() -> None:
    names = JobNames("exp", "team")
    failing = [pod("exp-rollout-b", "rollout", {"reason": "CrashLoopBackOff"}, {"exitCode": 1, "message": TRACEBACK},
                   restarts=2),
               pod("exp-rollout-a", "rollout"),
               pod("exp-verifier-a", "verifier", {"reason": "CreateContainerConfigError",
                                                  "message": 'secret "creds" not found'})]
    assert component_problems(failing, "rollout") == (container_problem(failing[0]),)
    deployments = {
        name: {"kind": "Deployment", "metadata": {"name": name, "labels": {JOB_LABEL: "exp"}},
               "spec": {"replicas": 2}, "status": {"readyReplicas": 1, "availableReplicas": 1}}
        for name in (names.rollout, names.verifier)}
    children = {"Deployment": deployments, "Pod": {p["metadata"]["name"]: p for p in failing}}
    observation = observe(names, {"generation": 1}, None, {}, children, 0, (), None)
    status = derive({}, observation).status
    by_type = {c["type"]: c for c in status["conditions"]}
    rollout = by_type["RolloutReady"]
    assert (rollout["status"], rollout["reason"]) == ("False", "ContainersFailing")
    assert rollout["message"].startswith("rollout: 1/2 replicas available; pod exp-rollout-b: CrashLoopBackOff")
    assert "FileNotFoundError" in rollout["message"] and "exp-rollout-a" not in rollout["message"]
    verifier = by_type["VerifierReady"]
    assert verifier["reason"] == "ContainersFailing" and 'secret "creds" not found' in verifier["message"]
    # The failing pods reach the summary condition a user sees first.
    assert "CrashLoopBackOff" in by_type["ServicesReady"]["message"]
