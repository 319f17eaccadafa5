"""With the real KubeRay operator (v1.5): the RLVRJob's RayJob becomes a RayCluster and pods, the
scheduler binds them to kwok nodes that advertise GPUs and kwok runs them. No Ray dashboard can answer
here, so the Ray application's state is moved by patching the RayJob's status (as KubeRay's own tests
do with a fake dashboard client); KubeRay still reacts to it (it deletes the RayCluster when the job is
complete, and when the RLVRJob suspends the failed attempt)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import KWOK_NODES
from tests.operator.harness import OperatorProcess, condition, get_job, patch_ray_job_status, rlvrjob, wait_phase

GPU_NODES = {name for name, gpus in KWOK_NODES if gpus}


def ray_pods(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "forkrl.dev/job=exp,ray.io/node-type")["items"]


def running(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def ray_clusters(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", "rayclusters", "-n", namespace)["items"]


def start_job(cluster: ControlPlane, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply the job and wait for KubeRay's head and learner pods to run; returns (head, worker)."""
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(rlvrjob("exp", namespace)))
    cluster.wait_for(
        lambda: len(ray_pods(cluster, namespace)) == 2 and all(map(running, ray_pods(cluster, namespace))),
        "KubeRay's head and learner pods to run",
        120,
    )
    pods = {pod["metadata"]["labels"]["ray.io/node-type"]: pod for pod in ray_pods(cluster, namespace)}
    return pods["head"], pods["worker"]


def test_kuberay_runs_the_learner_on_gpu_nodes_and_the_job_succeeds(
    kuberay_operator: ControlPlane, forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    head, worker = start_job(cluster, ns)
    (ray_cluster,) = ray_clusters(cluster, ns)
    assert ray_cluster["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    assert worker["spec"]["nodeName"] in GPU_NODES
    assert worker["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert worker["metadata"]["labels"]["forkrl.dev/ray-job"] == "exp"
    assert head["spec"]["serviceAccountName"] == "exp-controller"
    # KubeRay reports the cluster deployed; the Ray application has not started (no dashboard).
    cluster.wait_for(
        lambda: (
            cluster.kubectl_json("get", "rayjob", "exp", "-n", ns).get("status", {}).get("jobDeploymentStatus")
            == "Running"
        ),
        "KubeRay to deploy the RayJob",
        90,
    )
    job = wait_phase(cluster, ns, "exp", "Pending", reason="WaitingForLearner")
    # The phase and reason are the same while KubeRay initializes: wait for the operator to have seen Running.
    cluster.wait_for(lambda: condition(get_job(cluster, ns, "exp"), "LearnerReady")["reason"] == "RayJobStarting",
                     "the LearnerReady condition to follow the RayJob to RayJobStarting", 60)
    job = get_job(cluster, ns, "exp")
    assert job["status"]["rayJob"]["rayClusterName"] == ray_cluster["metadata"]["name"]

    patch_ray_job_status(cluster, ns, "exp", jobStatus="RUNNING")
    job = wait_phase(cluster, ns, "exp", "Running")
    assert condition(job, "Ready")["status"] == "True"

    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    wait_phase(cluster, ns, "exp", "Succeeded")
    # shutdownAfterJobFinishes: KubeRay deletes the RayCluster and with it the learner pods.
    cluster.wait_for(
        lambda: not ray_clusters(cluster, ns) and not ray_pods(cluster, ns),
        "KubeRay to delete the finished job's RayCluster and pods",
        90,
    )


def test_a_failed_learner_pod_fails_the_job_and_frees_its_gpus(
    kuberay_operator: ControlPlane, forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    _, worker = start_job(cluster, ns)
    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(cluster, ns, "exp", "Running")
    name = worker["metadata"]["name"]
    failed = {
        "status": {
            "phase": "Failed",
            "reason": "OOMKilled",
            "message": "learner rank ran out of memory",
            "containerStatuses": [
                {
                    "name": "ray-worker",
                    "image": "registry.test/forkrl:t1",
                    "ready": False,
                    "restartCount": 0,
                    "imageID": "",
                    "containerID": "",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        }
    }
    cluster.kubectl("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(failed))
    job = wait_phase(cluster, ns, "exp", "Failed", reason="PodFailed")
    message = job["status"]["message"]
    assert f"pod {name} failed" in message and "OOMKilled" in message and "exit code 137" in message
    assert job["status"]["lastFailure"]["rayJob"] == "exp"
    # Terminal: the attempt is suspended, so KubeRay tears the RayCluster down; nothing is recreated.
    cluster.wait_for(
        lambda: cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)["spec"]["suspend"] is True,
        "the failed attempt to be suspended",
        30,
    )
    cluster.wait_for(lambda: not ray_clusters(cluster, ns), "KubeRay to delete the RayCluster", 90)
    assert get_job(cluster, ns, "exp")["status"]["phase"] == "Failed"
