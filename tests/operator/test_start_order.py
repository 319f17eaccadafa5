"""The learner starts only after the rollout and verifier are Ready, on the real control plane: kwok runs
the Deployments' pods on its nodes and marks them Ready, so a rollout whose node selector matches no node
stays unavailable until the (rollable) selector is fixed. KubeRay does not run here (see test_kuberay.py)."""

from __future__ import annotations

import time
from typing import Any

from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import OperatorProcess, children, condition, get_job, patch_ray_job_status, rlvrjob
from tests.operator.test_reconcile import apply, deployment_ready, expected, patch_spec, wait_children

NOWHERE = {"cluster": {"rollout": {"node_selector": {"kubernetes.io/hostname": "no-such-node"}}}}
GPU_NODE = {"cluster": {"rollout": {"node_selector": {"kubernetes.io/hostname": "kwok-gpu-1"}}}}


def services(cluster: ControlPlane, namespace: str) -> dict[str, Any]:
    return condition(get_job(cluster, namespace, "exp"), "ServicesReady")


def test_the_ray_job_is_created_only_once_the_rollout_and_verifier_are_ready(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns, NOWHERE))
    waiting = expected("exp") - {("RayJob", "exp")}
    wait_children(cluster, ns, "exp", waiting)
    cluster.wait_for(lambda: deployment_ready(cluster, ns, "exp-verifier", 1), "the verifier to be available", 60)
    cluster.wait_for(lambda: services(cluster, ns)["reason"] == "WaitingForRollout", "ServicesReady=False", 30)
    time.sleep(5)  # two resyncs and the verifier's readiness later, still no learner
    assert set(children(cluster, ns, "exp")) == waiting
    job = get_job(cluster, ns, "exp")
    assert (job["status"]["phase"], job["status"]["reason"]) == ("Pending", "WaitingForServices")
    held = condition(job, "ServicesReady")
    assert held["status"] == "False"
    assert held["message"] == "the learner starts once they are ready: rollout: 0/2 replicas available"
    assert condition(job, "LearnerReady")["reason"] == "WaitingForRollout"

    patch_spec(cluster, ns, "exp", GPU_NODE)  # a rollable change: the rollout pods get scheduled
    wait_children(cluster, ns, "exp", expected("exp"))
    ready = services(cluster, ns)
    assert ready["status"] == "True"
    ray_job = cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)
    assert ray_job["metadata"]["creationTimestamp"] >= ready["lastTransitionTime"]
    assert deployment_ready(cluster, ns, "exp-rollout", 2) and deployment_ready(cluster, ns, "exp-verifier", 1)
    job = get_job(cluster, ns, "exp")
    assert (job["status"]["phase"], job["status"]["reason"]) == ("Pending", "WaitingForLearner")


def test_a_resumed_job_keeps_its_ray_job_suspended_until_the_services_are_ready(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns))
    wait_children(cluster, ns, "exp", expected("exp"))
    patch_spec(cluster, ns, "exp", {"suspend": True})

    def ray_job_suspended() -> bool:
        return cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)["spec"]["suspend"] is True

    cluster.wait_for(ray_job_suspended, "the RayJob to be suspended", 30)
    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Suspended", jobStatus="")
    # Resume with a rollout that cannot be scheduled: the Deployments scale up, the learner stays suspended.
    patch_spec(cluster, ns, "exp", {"suspend": False, **NOWHERE})
    cluster.wait_for(
        lambda: cluster.kubectl_json("get", "deployment", "exp-rollout", "-n", ns)["spec"]["replicas"] == 2,
        "the rollout to scale up again",
        30,
    )
    cluster.wait_for(lambda: services(cluster, ns)["reason"] == "WaitingForRollout", "ServicesReady=False", 30)
    time.sleep(5)
    assert ray_job_suspended()
    assert get_job(cluster, ns, "exp")["status"]["reason"] == "WaitingForServices"

    patch_spec(cluster, ns, "exp", GPU_NODE)
    cluster.wait_for(lambda: not ray_job_suspended(), "the RayJob to resume once the services are ready", 60)
    assert services(cluster, ns)["status"] == "True"
