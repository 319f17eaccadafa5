"""The operator (a real subprocess, authenticated as the chart's ServiceAccount) against the real control
plane: children, idempotency, status following the children, retries, suspend/resume, spec changes,
recreation of deleted children and clean deletion. KubeRay is not running here: the tests move the
RayJob's status the way KubeRay would (see test_kuberay.py for the real KubeRay)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import (
    OperatorProcess,
    children,
    condition,
    get_job,
    patch_ray_job_status,
    rlvrjob,
    wait_phase,
)

EXPECTED = {
    ("ServiceAccount", "{j}-controller"),
    ("ServiceAccount", "{j}-workload"),
    ("Role", "{j}-controller"),
    ("RoleBinding", "{j}-controller"),
    ("ConfigMap", "{j}-config"),
    ("ConfigMap", "{j}-status"),
    ("Service", "{j}-rollout"),
    ("Deployment", "{j}-rollout"),
    ("Service", "{j}-verifier"),
    ("Deployment", "{j}-verifier"),
    ("RayJob", "{j}"),
    ("NetworkPolicy", "{j}"),
}


def expected(job: str) -> set[tuple[str, str]]:
    return {(kind, name.format(j=job)) for kind, name in EXPECTED}


def control_secret(cluster: ControlPlane, namespace: str, job: str, uid: str) -> tuple[dict[str, Any], str]:
    """The job's control-token Secret and the token in it."""
    secret = cluster.kubectl_json("get", "secret", f"{job}-control-{uid[:8]}", "-n", namespace, "--show-managed-fields")
    return secret, base64.b64decode(secret["data"]["token"]).decode()


def apply(cluster: ControlPlane, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def patch_spec(cluster: ControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "rlvr", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def wait_children(
    cluster: ControlPlane, namespace: str, job: str, want: set[tuple[str, str]], timeout: float = 60
) -> dict[tuple[str, str], dict[str, Any]]:
    cluster.wait_for(lambda: set(children(cluster, namespace, job)) == want, f"children of {job}", timeout)
    return children(cluster, namespace, job)


def deployment_ready(cluster: ControlPlane, namespace: str, name: str, replicas: int) -> bool:
    status = cluster.kubectl_json("get", "deployment", name, "-n", namespace).get("status", {})
    return status.get("availableReplicas", 0) == replicas and status.get("replicas", 0) == replicas


def events(cluster: ControlPlane, namespace: str, job: str) -> list[tuple[str, str]]:
    items = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.kind=RLVRJob,involvedObject.name={job}"
    )["items"]
    return [(item["type"], item["reason"]) for item in items]


def test_a_job_gets_exactly_its_children_and_reconciling_again_changes_nothing(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns, {"cluster": {"env": {"HF_HUB_OFFLINE": "1"}}}))
    uid = get_job(cluster, ns, "exp")["metadata"]["uid"]
    objects = wait_children(cluster, ns, "exp", expected("exp"))
    for (kind, name), obj in objects.items():
        refs = obj["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == [("RLVRJob", "exp", uid, True)]
        labels = obj["metadata"]["labels"]
        assert labels["forkrl.dev/job"] == "exp" and labels["app.kubernetes.io/part-of"] == "forkrl", (kind, name)
        managers = {m["manager"] for m in obj["metadata"]["managedFields"] if m["operation"] == "Apply"}
        assert managers == {"forkrl-operator"}, (kind, name)  # server-side apply with our field manager
    rollout = objects[("Deployment", "exp-rollout")]["spec"]["template"]["spec"]["containers"][0]
    assert rollout["image"] == "registry.test/forkrl:t1"
    assert rollout["resources"]["limits"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in rollout["env"]
    head = objects[("RayJob", "exp")]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == "exp-controller"
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert env["FORKRL_STATUS_CONFIGMAP"] == "exp-status" and env["HF_HUB_OFFLINE"] == "1"
    # The control token: a Secret of its own, created (not applied) once, read by the rollout and the head.
    secret, token = control_secret(cluster, ns, "exp", uid)
    assert len(token) >= 43 and token.isascii()
    assert [(r["name"], r["uid"]) for r in secret["metadata"]["ownerReferences"]] == [("exp", uid)]
    assert {m["operation"] for m in secret["metadata"]["managedFields"]} == {"Update"}  # POST, not apply
    token_ref = {"name": "FORKRL_CONTROL_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}}}
    assert token_ref in rollout["env"] and token_ref in head["containers"][0]["env"]
    worker = objects[("RayJob", "exp")]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "FORKRL_CONTROL_TOKEN" not in {e["name"] for e in worker["containers"][0]["env"]}
    verifier = objects[("Deployment", "exp-verifier")]["spec"]["template"]["spec"]["containers"][0]
    assert "FORKRL_CONTROL_TOKEN" not in {e["name"] for e in verifier["env"]}
    spec_yaml = yaml.safe_load(objects[("ConfigMap", "exp-config")]["data"]["spec.yaml"])
    assert spec_yaml["rollout"]["endpoints"] == [f"http://exp-rollout.{ns}.svc:8000"]
    assert spec_yaml["verifier"]["endpoint"] == f"http://exp-verifier.{ns}.svc:8000"
    # The controller's ServiceAccount may touch its status ConfigMap and nothing else.
    subject = f"--as=system:serviceaccount:{ns}:exp-controller"
    can = [
        cluster.kubectl("auth", "can-i", verb, target, "-n", ns, subject, check=False).stdout.strip()
        for verb, target in (
            ("patch", "configmap/exp-status"),
            ("patch", "configmap/exp-config"),
            ("delete", "configmap/exp-status"),
            ("list", "pods"),
        )
    ]
    assert can == ["yes", "no", "no", "no"]
    wait_phase(cluster, ns, "exp", "Pending", reason="WaitingForLearner")

    # Converged: further reconciles (the resync runs every 2 s) write nothing.
    cluster.wait_for(
        lambda: deployment_ready(cluster, ns, "exp-rollout", 2) and deployment_ready(cluster, ns, "exp-verifier", 1),
        "the Deployments to be available",
        60,
    )
    time.sleep(3)
    versions = {key: obj["metadata"]["resourceVersion"] for key, obj in children(cluster, ns, "exp").items()}
    job_version = get_job(cluster, ns, "exp")["metadata"]["resourceVersion"]
    applies, reconciles = (
        module_operator.counter("forkrl_operator_child_applies_total"),
        module_operator.counter("forkrl_operator_reconciles_total"),
    )
    time.sleep(7)
    assert {key: obj["metadata"]["resourceVersion"] for key, obj in children(cluster, ns, "exp").items()} == versions
    assert get_job(cluster, ns, "exp")["metadata"]["resourceVersion"] == job_version
    assert module_operator.counter("forkrl_operator_child_applies_total") == applies
    assert module_operator.counter("forkrl_operator_reconciles_total") >= reconciles + 3
    assert control_secret(cluster, ns, "exp", uid) == (secret, token)  # never rotated under running pods
    assert ("Normal", "Created") in events(cluster, ns, "exp")


def test_status_follows_the_children_to_success_and_a_finished_job_keeps_its_children_down(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns))
    wait_children(cluster, ns, "exp", expected("exp"))
    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Initializing")
    wait_phase(cluster, ns, "exp", "Pending", reason="WaitingForLearner")
    patch_ray_job_status(
        cluster, ns, "exp", jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="exp-abcde"
    )
    job = wait_phase(cluster, ns, "exp", "Running")
    assert condition(job, "Ready")["status"] == "True"
    assert job["status"]["rayJob"] == {
        "name": "exp",
        "jobDeploymentStatus": "Running",
        "jobStatus": "RUNNING",
        "rayClusterName": "exp-abcde",
    }
    assert job["status"]["rollout"] == {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}

    # The controller reports progress through its status ConfigMap.
    progress = {
        "step": "7",
        "reward": "0.625",
        "accuracy": "0.75",
        "weightVersion": "7",
        "checkpoint": "/var/lib/forkrl/runs/exp/checkpoints/step_5",
    }
    cluster.kubectl("patch", "configmap", "exp-status", "-n", ns, "--type=merge", "-p", json.dumps({"data": progress}))
    cluster.wait_for(lambda: get_job(cluster, ns, "exp")["status"].get("step") == 7, "step 7 in the status", 30)
    status = get_job(cluster, ns, "exp")["status"]
    assert (status["reward"], status["accuracy"], status["weightVersion"]) == (0.625, 0.75, 7)
    assert status["checkpoint"] == progress["checkpoint"]
    row = cluster.kubectl("get", "rlvr", "exp", "-n", ns, "--no-headers").stdout.split()
    assert row[1:5] == ["Running", "7", "0.625", "0.75"]

    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    job = wait_phase(cluster, ns, "exp", "Succeeded")
    assert job["status"]["completionTime"] >= job["status"]["startTime"]
    cluster.wait_for(
        lambda: all(
            cluster.kubectl_json("get", "deployment", name, "-n", ns)["spec"]["replicas"] == 0
            for name in ("exp-rollout", "exp-verifier")
        ),
        "the finished job's Deployments to scale to 0",
        30,
    )
    # A terminal job never recreates its children.
    cluster.kubectl("delete", "deployment", "exp-rollout", "-n", ns)
    time.sleep(5)
    assert ("Deployment", "exp-rollout") not in children(cluster, ns, "exp")
    assert get_job(cluster, ns, "exp")["status"]["phase"] == "Succeeded"
    reasons = [reason for _, reason in events(cluster, ns, "exp")]
    assert {"Running", "Succeeded", "ReadyTrue"} <= set(reasons)


def test_a_failed_ray_job_is_retried_then_fails_with_its_reason(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns, {"cluster": {"max_retries": 1}}))
    first_uid = wait_children(cluster, ns, "exp", expected("exp"))[("RayJob", "exp")]["metadata"]["uid"]
    patch_ray_job_status(
        cluster,
        ns,
        "exp",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1",
    )
    retried = expected("exp") - {("RayJob", "exp")} | {("RayJob", "exp-r1")}
    objects = wait_children(cluster, ns, "exp", retried)
    assert objects[("RayJob", "exp-r1")]["metadata"]["uid"] != first_uid
    job = get_job(cluster, ns, "exp")
    assert job["status"]["retries"] == 1 and job["status"]["phase"] == "Pending"
    assert job["status"]["lastFailure"]["reason"] == "AppFailed"
    assert job["status"]["lastFailure"]["rayJob"] == "exp"
    assert ("Warning", "Retrying") in events(cluster, ns, "exp")

    patch_ray_job_status(
        cluster,
        ns,
        "exp-r1",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="second failure",
    )
    job = wait_phase(cluster, ns, "exp", "Failed")
    assert (job["status"]["reason"], job["status"]["message"]) == ("AppFailed", "second failure")
    assert condition(job, "Failed") | {"lastTransitionTime": None} == {
        "type": "Failed",
        "status": "True",
        "reason": "AppFailed",
        "message": "second failure",
        "observedGeneration": 1,
        "lastTransitionTime": None,
    }
    time.sleep(4)  # terminal: no third attempt
    assert {name for kind, name in children(cluster, ns, "exp") if kind == "RayJob"} == {"exp-r1"}


def test_deleted_children_are_recreated(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns))
    before = wait_children(cluster, ns, "exp", expected("exp"))
    gone = [
        ("deployment", "exp-rollout"),
        ("deployment", "exp-verifier"),
        ("service", "exp-verifier"),
        ("configmap", "exp-config"),
        ("role", "exp-controller"),
    ]
    for kind, name in gone:
        cluster.kubectl("delete", kind, name, "-n", ns)
    after = wait_children(cluster, ns, "exp", expected("exp"), timeout=30)
    for kind, name in (
        ("Deployment", "exp-rollout"),
        ("Deployment", "exp-verifier"),
        ("Service", "exp-verifier"),
        ("ConfigMap", "exp-config"),
        ("Role", "exp-controller"),
    ):
        assert after[(kind, name)]["metadata"]["uid"] != before[(kind, name)]["metadata"]["uid"]
    assert after[("RayJob", "exp")]["metadata"]["uid"] == before[("RayJob", "exp")]["metadata"]["uid"]
    # A hand edit of a field the operator owns is reverted too.
    cluster.kubectl("scale", "deployment", "exp-rollout", "-n", ns, "--replicas=5")
    cluster.wait_for(
        lambda: cluster.kubectl_json("get", "deployment", "exp-rollout", "-n", ns)["spec"]["replicas"] == 2,
        "the rollout replicas to be reverted to 2",
        30,
    )


def test_suspend_scales_down_and_resume_brings_the_same_job_back(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns))
    wait_children(cluster, ns, "exp", expected("exp"))
    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(cluster, ns, "exp", "Running")
    patch_spec(cluster, ns, "exp", {"suspend": True})
    wait_phase(cluster, ns, "exp", "Suspended")

    def scaled(replicas: tuple[int, int], suspend: bool) -> bool:
        rollout = cluster.kubectl_json("get", "deployment", "exp-rollout", "-n", ns)["spec"]["replicas"]
        verifier = cluster.kubectl_json("get", "deployment", "exp-verifier", "-n", ns)["spec"]["replicas"]
        ray_job = cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)["spec"]["suspend"]
        return (rollout, verifier) == replicas and ray_job is suspend

    cluster.wait_for(lambda: scaled((0, 0), True), "services at 0 and the RayJob suspended", 30)
    # What KubeRay does for a suspended RayJob: the RayCluster goes, the job is Suspended.
    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Suspended", jobStatus="")
    wait_phase(cluster, ns, "exp", "Suspended", reason="Suspended")
    ray_job_uid = cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)["metadata"]["uid"]
    patch_spec(cluster, ns, "exp", {"suspend": False})
    cluster.wait_for(lambda: scaled((2, 1), False), "services back and the RayJob resumed", 30)
    # The same RayJob resumes (its entrypoint continues from the last checkpoint: `--resume`).
    ray_job = cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)
    assert ray_job["metadata"]["uid"] == ray_job_uid and "--resume" in ray_job["spec"]["entrypoint"]
    patch_ray_job_status(cluster, ns, "exp", jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(cluster, ns, "exp", "Running")


def test_rollable_changes_roll_and_the_others_are_refused(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns))
    objects = wait_children(cluster, ns, "exp", expected("exp"))
    ray_job_version = objects[("RayJob", "exp")]["metadata"]["resourceVersion"]
    patch_spec(cluster, ns, "exp", {"rollout": {"replicas": 1}, "cluster": {"verifier": {"replicas": 3}}})
    cluster.wait_for(
        lambda: deployment_ready(cluster, ns, "exp-rollout", 1) and deployment_ready(cluster, ns, "exp-verifier", 3),
        "the replica changes to roll",
        60,
    )
    assert condition(get_job(cluster, ns, "exp"), "SpecAccepted")["status"] == "True"

    patch_spec(cluster, ns, "exp", {"learner": {"parallel": {"tensor_parallel": 4, "pipeline_parallel": 1}}})
    cluster.wait_for(
        lambda: condition(get_job(cluster, ns, "exp"), "SpecAccepted")["status"] == "False",
        "the parallelism change to be refused",
        30,
    )
    job = get_job(cluster, ns, "exp")
    refused = condition(job, "SpecAccepted")
    assert refused["reason"] == "ImmutableFieldChanged" and refused["observedGeneration"] == 3
    assert "learner.parallel.tensor_parallel (2 -> 4)" in refused["message"]
    assert "learner.parallel.pipeline_parallel (2 -> 1)" in refused["message"]
    assert json.loads(job["status"]["acceptedSpec"])["learner"]["parallel"]["tensor_parallel"] == 2
    assert cluster.kubectl_json("get", "rayjob", "exp", "-n", ns)["metadata"]["resourceVersion"] == ray_job_version
    assert ("Warning", "SpecAcceptedFalse") in events(cluster, ns, "exp")
    patch_spec(cluster, ns, "exp", {"learner": {"parallel": {"tensor_parallel": 2, "pipeline_parallel": 2}}})
    cluster.wait_for(
        lambda: condition(get_job(cluster, ns, "exp"), "SpecAccepted")["status"] == "True",
        "the reverted spec to be accepted again",
        30,
    )


def test_a_spec_the_api_server_cannot_check_fails_with_invalid_spec(
    forkrl_cluster: ControlPlane, k8s_namespace: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    job = rlvrjob("kl", ns, {"learner": {"reference": {"enabled": False}}})
    job["spec"]["objective"] = {"name": "archer"}
    apply(cluster, job)
    failed = wait_phase(cluster, ns, "kl", "Failed", reason="InvalidSpec")
    assert "learner.reference.enabled must not be false" in failed["status"]["message"]
    time.sleep(3)
    assert children(cluster, ns, "kl") == {}


def test_deleting_the_job_leaves_no_child_behind(
    forkrl_cluster: ControlPlane, k8s_namespace: str, checkpoint_volume: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    # An owned claim (retain: false) goes too; test_lifecycle.py keeps a retained one.
    monitored = {"storage": {"create_claim": {"size": "1Gi", "retain": False}}, "monitoring": {"pod_monitor": True}}
    apply(cluster, rlvrjob("exp", ns, {"cluster": monitored}))
    want = expected("exp") | {("PersistentVolumeClaim", "exp-checkpoints"), ("PodMonitor", "exp")}

    def all_children() -> set[tuple[str, str]]:
        items = cluster.kubectl_json(
            "get",
            "rayjob,deployment,replicaset,pod,service,configmap,secret,serviceaccount,role,rolebinding,"
            "persistentvolumeclaim,podmonitor,networkpolicy",
            "-n",
            ns,
        )["items"]
        return {
            (i["kind"], i["metadata"]["name"])
            for i in items
            if i["metadata"]["name"] not in ("kube-root-ca.crt", "default")
        }

    uid = get_job(cluster, ns, "exp")["metadata"]["uid"]
    cluster.wait_for(lambda: want | {("Secret", f"exp-control-{uid[:8]}")} <= all_children(), "every child", 60)
    assert get_job(cluster, ns, "exp")["metadata"]["finalizers"] == ["forkrl.dev/finalizer"]
    cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=true", "--timeout=60s")
    cluster.wait_for(lambda: not all_children(), "no child (pods and ReplicaSets included) to be left", 60)
