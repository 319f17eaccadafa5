"""An RLVRJob end to end on real pods: the operator chart's operator pod reconciles it, KubeRay starts the
Ray head (the controller is the RayJob's driver) and a worker pod per learner rank on different nodes,
the HF rollout Deployment serves from two nodes, checkpoints land on a PersistentVolume; and the job
survives losing a rollout pod, a drained node and a suspension on the way."""

from __future__ import annotations

import datetime
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkrl.trainer.controller.recorder import read_step_records
from tests.cluster.real_cluster import RealCluster
from tests.cluster.real_deploy import (
    CHECKPOINT_CLASS,
    JOB_CHART,
    OPERATOR_NAMESPACE,
    checkpoint_volume,
    host_directories,
    host_path_claims,
    install_operator,
    job_env,
)
from tests.cluster.real_fixtures import report
from tests.multihost.conftest import SHORT_COLD_START, build_cold_start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

STEPS = 12


@pytest.fixture(scope="module")
def forkrl_on_nodes(real_cluster: RealCluster) -> RealCluster:
    real_cluster.cp.start_kuberay()
    install_operator(real_cluster)
    return real_cluster


def rlvrjob(name: str, namespace: str, image: str, model_path: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The main job on its cold-start policy: TP=2 over two learner pods, two rollout replicas, STEPS steps."""
    spec = {
        "seed": 7,
        "model": {"path": model_path, "max_prompt_tokens": 24, "max_response_tokens": 64},
        "data": {"template": "plain", "train": [
            {"name": "arith-train", "arithmetic": {"min_ops": 2, "max_ops": 3, "max_operand": 9}, "count": 2000,
             "seed": 2}]},
        "objective": {"name": "forking", "rho": 0.2},
        "learner": {
            "parallel": {"tensor_parallel": 2},
            "optimizer": {"lr": 0.0002, "weight_decay": 0.0, "clip_grad": 1.0, "warmup_steps": 2},
            "micro_batch": {"micro_batch_size": 32},
        },
        "resources": {"learner_ranks": 2, "torch_threads": 1, "cpus_per_learner": 0.5},
        "rollout": {"engine": "hf", "replicas": 2, "max_batch_size": 256,
                    "sampling": {"temperature": 1.0, "top_p": 1.0}},
        "verifier": {"workers": 1},
        "overlong": {"cache_tokens": 16},
        "schedule": {"steps": STEPS, "train_batch_size": 16, "samples_per_prompt": 8, "mini_batch_size": 8},
        "checkpoint": {"interval": 1},
        "cluster": {
            "image": image,
            "image_pull_policy": "Never",
            "env": job_env(),
            # Two 2-CPU nodes that are one 2-core machine: throttling each pod to its small request
            # would only slow everything down.
            "cpu_limits": False,
            "mounts": mounts,
            # Each node offers the machine's 2 CPUs; a learner pod requests a whole one (ranks x
            # cpus_per_learner, rounded up), so everything else fits in what is left next to it.
            "controller": {"cpu": "400m", "memory": "3Gi"},
            "learner": {"ranks_per_pod": 1, "memory_per_rank": "3Gi", "shared_memory": "512Mi"},
            "rollout": {"gpus": 0, "cpu": "300m", "memory": "2Gi"},
            "verifier": {"replicas": 1, "cpu": "200m", "memory": "1Gi"},
            "storage": {"create_claim": {"size": "1Gi", "storage_class_name": CHECKPOINT_CLASS,
                                         "access_mode": "ReadWriteMany"}},
        },
    }
    return {"apiVersion": "forkrl.dev/v1alpha1", "kind": "RLVRJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pod_nodes(cluster: RealCluster, namespace: str, component: str) -> list[str]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}")
    return sorted(p["spec"].get("nodeName") for p in pods["items"] if p["status"].get("phase") == "Running")


def ready_pods(cluster: RealCluster, namespace: str, component: str) -> list[str]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}")
    return [p["metadata"]["name"] for p in pods["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


def pod_startup(cluster: RealCluster, namespace: str, since: float) -> str:
    """Per pod, seconds after `since` (wall clock) at which it was created, its containers started and it
    became Ready: where a job's start-up time goes."""
    def at(stamp: str | None) -> str:
        if not stamp:
            return "-"
        return f"{datetime.datetime.fromisoformat(stamp.replace('Z', '+00:00')).timestamp() - since:.0f}"

    parts = []
    for pod in cluster.kubectl_json("get", "pods", "-n", namespace)["items"]:
        conditions = {c["type"]: c.get("lastTransitionTime") for c in pod["status"].get("conditions", [])}
        started = [c["state"]["running"]["startedAt"] for c in pod["status"].get("containerStatuses", [])
                   if "running" in c.get("state", {})]
        component = pod["metadata"].get("labels", {}).get("app.kubernetes.io/component", pod["metadata"]["name"])
        parts.append(f"{component} created {at(pod['metadata']['creationTimestamp'])} running "
                     f"{at(min(started) if started else None)} ready {at(conditions.get('Ready'))}")
    return "; ".join(sorted(parts))


def test_an_rlvrjob_from_the_job_chart_trains_on_real_pods_through_faults_and_keeps_its_checkpoints(
    forkrl_on_nodes: RealCluster, real_namespace: str, pytestconfig: pytest.Config
) -> None:
    """One run (every run costs minutes here), installed with the rlvrjob chart into a namespace enforcing
    the restricted Pod Security Standard, with three faults: a rollout pod deleted (the Deployment replaces
    it; the controller pushes it the current weights before it serves), then node-2 drained (its learner
    worker is evicted, the attempt fails, forkrl creates a retry RayJob) and, as soon as the retry exists
    (waiting for room or already starting, as the scheduler decides), the job suspended (every pod goes) and
    resumed with the node back (the retry trains on from the last checkpoint). Then `helm uninstall` keeps
    the checkpoints."""
    cluster, ns = forkrl_on_nodes, real_namespace
    model = build_cold_start(SHORT_COLD_START)
    mounts = host_path_claims(cluster, ns, host_directories({"model": Path(model)}))
    assert cluster.workdir is not None
    checkpoints = cluster.workdir / "volumes" / ns
    checkpoint_volume(cluster, f"{ns}-checkpoints", checkpoints)
    job = rlvrjob("arith", ns, cluster.base_image, model, mounts)
    job["spec"]["cluster"]["max_retries"] = 1
    values = checkpoints.parent / f"{ns}-values.yaml"
    values.write_text(yaml.safe_dump(job["spec"]))
    start, started_at = time.monotonic(), time.time()
    timeline: list[str] = []

    def mark(event: str) -> None:
        timeline.append(f"{event} {time.monotonic() - start:.0f} s")

    def status() -> dict[str, Any]:
        current = cluster.kubectl_json("get", "rlvrjob", "arith", "-n", ns).get("status", {})
        if current.get("phase") == "Failed":
            raise AssertionError(f"the job failed: {current}")
        return current

    def step() -> int:
        return int(status().get("step") or 0)

    def at_step(target: int, what: str) -> None:
        cluster.cp.wait_for(lambda: step() >= target, f"step {target} ({what})", timeout=900)
        mark(f"step {target}")

    # Through the rlvrjob chart, as a user installs one experiment (values = the spec).
    cluster.cp.helm("install", "arith", str(JOB_CHART), "--namespace", ns, "-f", str(values))
    try:
        at_step(1, "first step")
        report(pytestconfig, "pods (s after helm install): " + pod_startup(cluster, ns, started_at))
        learner_nodes, rollout_nodes = pod_nodes(cluster, ns, "learner"), pod_nodes(cluster, ns, "rollout")
        # `ray start` itself is PID 1 of the Ray pods (not KubeRay's bash wrapper, which ignores SIGTERM), so
        # the suspension and the drain below stop them at once rather than after their grace period.
        for component in ("controller", "learner"):
            pod = ready_pods(cluster, ns, component)[0]
            argv = cluster.kubectl("exec", "-n", ns, pod, "--", "cat", "/proc/1/cmdline").stdout.split("\0")
            assert argv[1].endswith("/ray") and argv[2] == "start", (component, argv)
        # Restricted pods run under the runtime's default seccomp profile, which denies unshare(2): the
        # verifier's sandbox runs without namespaces and says so (docs/kubernetes.md, "Pod security").
        info = json.loads(cluster.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{ns}/services/http:arith-verifier:http/proxy/v1/info").stdout)
        isolation = info["workers"][0]["isolation"]
        assert isolation["network_namespace"] is False, isolation
        assert any("unshare: Operation not permitted" in note for note in isolation["notes"]), isolation
        # The weight syncs so far proved the job's control token across pods; a caller without it is refused
        # (through the API server's pod proxy, so from outside the job) and the replica keeps serving.
        replica = ready_pods(cluster, ns, "rollout")[0]
        proxy = f"/api/v1/namespaces/{ns}/pods/{replica}:8000/proxy"
        refused = cluster.kubectl("create", "--raw", f"{proxy}/v1/sleep", "-f", "-", input='{"level": 2}', check=False)
        # kubectl words a proxied 401 as its own: "the server has asked for the client to provide credentials".
        assert refused.returncode != 0 and "provide credentials" in refused.stderr, refused.stderr
        metrics = cluster.kubectl("get", "--raw", f"{proxy}/metrics").stdout
        assert any(line.startswith("forkrl_rollout_unauthorized_requests_total{") and 'endpoint="/v1/sleep"' in line
                   and float(line.rsplit(" ", 1)[1]) >= 1 for line in metrics.splitlines()), metrics[-2000:]
        assert json.loads(cluster.kubectl("get", "--raw", f"{proxy}/v1/health").stdout)["sleeping"] is False
        # The Ray cluster runs with token authentication (authOptions): KubeRay submitted the job with the token
        # (it is training), while a caller without it is refused by the dashboard's job API.
        head = ready_pods(cluster, ns, "controller")[0]
        jobs = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{head}:8265/proxy/api/jobs/", check=False)
        assert jobs.returncode != 0 and ("provide credentials" in jobs.stderr or "Forbidden" in jobs.stderr), (
            jobs.stdout[-500:], jobs.stderr)
        head_env = cluster.kubectl_json("get", "pod", "-n", ns, head)["spec"]["containers"][0]["env"]
        assert {e["name"]: e.get("value") for e in head_env}.get("RAY_AUTH_MODE") == "token", head_env

        victim = ready_pods(cluster, ns, "rollout")[0]
        cluster.kubectl("delete", "pod", "-n", ns, victim, "--wait=false")
        mark(f"deleted {victim}")
        cluster.cp.wait_for(lambda: len(ready := ready_pods(cluster, ns, "rollout")) == 2 and victim not in ready,
                            "a ready replacement rollout pod", timeout=300)
        # A step that starts after the replacement is ready finds it on the base weights and re-pushes: the second
        # step from now (the next may have started before). The job must still be running when the drain evicts
        # its learner worker: a step takes 7-12 s, and the replacement pod ~35 s; the drain came at step 8 (of 9, too
        # few), 5 and 6 in three runs on 2026-12-02, so 12 steps keep a margin of 3 over the latest.
        at_step(step() + 2, "after the replacement rollout pod")
        assert step() < STEPS - 1, f"step {step()} of {STEPS}: too few steps left for the drain to interrupt"

        cluster.kubectl("drain", "node-2", "--ignore-daemonsets", "--delete-emptydir-data", "--force",
                        "--timeout=120s", timeout=180)
        mark("drained node-2")
        def retried() -> bool:
            current = status()
            if current.get("phase") == "Succeeded":
                raise AssertionError(f"the job finished at step {current.get('step')} before the drain interrupted it")
            return int(current.get("retries") or 0) == 1

        cluster.cp.wait_for(retried, "the retry after the drain", timeout=600)
        mark("retrying")
        # Suspended as soon as the retry exists (node-2 still cordoned: its pods pending, or packed onto
        # node-1): every pod goes, pending ones too, and the resumed retry continues from the checkpoint.
        # (Mostly one start-up for both faults: each costs minutes on this machine.)
        cluster.kubectl("patch", "rlvrjob", "arith", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        cluster.cp.wait_for(lambda: status().get("reason") == "Suspended", "Suspended", timeout=300)
        cluster.cp.wait_for(lambda: not cluster.kubectl_json("get", "pods", "-n", ns)["items"],
                            "every job pod gone while suspended", timeout=300)
        mark(f"suspended at step {step()}")
        cluster.kubectl("uncordon", "node-2")
        cluster.kubectl("patch", "rlvrjob", "arith", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        mark("uncordoned node-2, resumed")
        cluster.cp.wait_for(lambda: status().get("phase") == "Succeeded", "Succeeded after the resume", timeout=900)
        mark("Succeeded")
    finally:
        report(pytestconfig, "job timeline (s after helm install): " + "; ".join(timeline))
    final = status()
    assert final["step"] == STEPS and final["retries"] == 1 and 0.0 <= final["reward"] <= 1.0
    assert learner_nodes == ["node-1", "node-2"], "the two learner ranks run on pods of different nodes"
    assert rollout_nodes == ["node-1", "node-2"], "the rollout replicas run on different nodes"
    assert "Succeeded" in cluster.kubectl("get", "rlvr", "arith", "-n", ns).stdout
    saved = sorted(p.name for p in checkpoints.rglob("step_*") if p.is_dir())
    assert saved, f"no checkpoint on the volume {checkpoints}"
    # Written by the pods' non-root user (cluster.security.run_as_user), never as root.
    assert {p.stat().st_uid for p in checkpoints.rglob("*") if p.is_file()} == {1000}
    # The run's records, written by the controller in the head pod onto the same volume. Every step ran
    # once and in order across the three learner attempts (each resumed from the last checkpoint, none
    # started over), each step's weights went over the pod network to the rollout pods, and the
    # replacement rollout pod was found stale and re-pushed.
    (metrics,) = checkpoints.rglob("metrics.jsonl")
    records = read_step_records(metrics)
    assert [r.step for r in records] == list(range(1, STEPS + 1))
    assert all(r.sync.bytes > 0 for r in records)
    assert max(r.replicas.repushed_total for r in records) >= 1
    versions = [r.weight_version for r in records]
    assert versions[0] >= 1 and all(a < b for a, b in itertools.pairwise(versions)), versions

    # Uninstalling the experiment deletes the job, never its checkpoints (the created claim is retained).
    claims = cluster.kubectl_json("get", "pvc", "-n", ns, "-l", "forkrl.dev/job=arith")["items"]
    assert len(claims) == 1 and claims[0]["status"]["phase"] == "Bound"
    cluster.cp.helm("uninstall", "arith", "--namespace", ns, "--wait")
    cluster.cp.wait_for(lambda: cluster.kubectl("get", "rlvrjob", "arith", "-n", ns, check=False).returncode != 0,
                        "the RLVRJob deleted", timeout=120)
    kept = cluster.kubectl_json("get", "pvc", "-n", ns, "-l", "forkrl.dev/job=arith")["items"]
    assert [c["metadata"]["name"] for c in kept] == [claims[0]["metadata"]["name"]]
    assert saved == sorted(p.name for p in checkpoints.rglob("step_*") if p.is_dir())
    operator_pods = cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE)["items"]
    assert [p["status"]["phase"] for p in operator_pods] == ["Running"]


def test_two_operator_pods_with_peering_one_works_and_the_other_waits(
    forkrl_on_nodes: RealCluster, real_namespace: str
) -> None:
    """`helm upgrade` to two operator replicas with kopf peering: both pods run, a (suspended) job is
    reconciled into its children, by the pod of the higher peering priority only."""
    cluster, ns = forkrl_on_nodes, real_namespace
    install_operator(cluster, replicas=2)
    try:
        def operator_pods() -> list[dict[str, Any]]:
            return cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE)["items"]

        def both_ready() -> bool:
            pods = operator_pods()
            return len(pods) == 2 and all(any(c["type"] == "Ready" and c["status"] == "True"
                                              for c in p["status"].get("conditions", [])) for p in pods)

        cluster.cp.wait_for(both_ready, "two ready operator pods", timeout=180)

        # Which pod works is kopf's peering decision: the highest priority in the peering object, where each
        # pod is listed by name (POD_ID). Counted from the moment both are there: the pod kept from the
        # one-replica install may have reconciled earlier jobs, whichever priority it drew.
        # (Log lines cannot tell: a pod that starts paused and stays so never logs a pause.)
        def live_peers() -> dict[str, int]:
            status = cluster.kubectl_json("get", "clusterkopfpeering", "forkrl").get("status") or {}
            names = {p["metadata"]["name"] for p in operator_pods()}
            return {peer: int(info["priority"]) for peer, info in status.items() if peer in names}

        def reconciles(pod: str) -> float:
            text = cluster.kubectl("get", "--raw",
                                   f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod}:8081/proxy/metrics").stdout
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("forkrl_operator_reconciles_total{"))

        cluster.cp.wait_for(lambda: len(live_peers()) == 2, "both operator pods in the peering object", timeout=120)
        peers = live_peers()
        assert len(set(peers.values())) == 2, f"equal priorities pause both: {peers}"
        worker, standby = sorted(peers, key=peers.__getitem__, reverse=True)
        before = {pod: reconciles(pod) for pod in (worker, standby)}

        mounts = host_path_claims(cluster, ns, host_directories())
        job = rlvrjob("peered", ns, cluster.base_image, "/models/none", mounts)
        job["spec"]["suspend"] = True
        cluster.cp.apply(job)
        cluster.cp.wait_for(
            lambda: cluster.kubectl("get", "deployment", "peered-rollout", "-n", ns, check=False).returncode == 0
            and cluster.kubectl_json("get", "rlvrjob", "peered", "-n", ns).get("status", {}).get("phase")
            == "Suspended",
            "the suspended job reconciled into its children", timeout=120,
        )
        assert cluster.kubectl_json("get", "deployment", "peered-rollout", "-n", ns)["spec"]["replicas"] == 0
        assert reconciles(worker) > before[worker], f"{worker} (highest priority) did not reconcile the job"
        assert reconciles(standby) == before[standby], f"{standby} reconciled while {worker} works"
    finally:
        install_operator(cluster, replicas=1)
