"""Crash in the middle of a reconcile, two replicas with kopf peering: the cluster converges to the same
children, and two operators never reconcile at the same time."""

from __future__ import annotations

import time
from collections.abc import Callable

import yaml

from forkrl.operator.children import build_children
from forkrl.operator.context import JobContext
from forkrl.operator.names import HASH_ANNOTATION, JobNames
from forkrl.operator.reconcile import CRASH_ENV
from forkrl.operator.resource import RLVRJobResourceSpec
from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import OperatorProcess, children, get_job, rlvrjob, wait_phase
from tests.operator.test_reconcile import control_secret, expected, wait_children


def wanted_hashes(cluster: ControlPlane, namespace: str, name: str) -> dict[tuple[str, str], str]:
    """What the builders want for the job as it is stored (its uid, its defaulted spec)."""
    job = get_job(cluster, namespace, name)
    spec = RLVRJobResourceSpec.model_validate({**job["spec"], "name": name})
    ctx = JobContext(JobNames(name, namespace), job["metadata"]["uid"], spec)
    return {
        (m["kind"], m["metadata"]["name"]): m["metadata"]["annotations"][HASH_ANNOTATION] for m in build_children(ctx)
    }


def live_hashes(cluster: ControlPlane, namespace: str, name: str) -> dict[tuple[str, str], str]:
    return {
        key: obj["metadata"]["annotations"][HASH_ANNOTATION] for key, obj in children(cluster, namespace, name).items()
    }


def test_an_operator_killed_mid_reconcile_is_resumed_by_the_next_one(
    forkrl_cluster: ControlPlane, k8s_namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    crashing = start_operator("--standalone", "--resync-seconds=2", env={CRASH_ENV: "4"})
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(rlvrjob("exp", ns)))
    cluster.wait_for(lambda: not crashing.process.running(), "the operator to exit after 4 applies", 60)
    assert crashing.process._proc.returncode == 137  # type: ignore[union-attr]
    partial = set(children(cluster, ns, "exp"))
    assert len(partial) == 4 and partial < expected("exp")
    # The intent was recorded before the first child: the next operator builds from the same accepted spec.
    job = get_job(cluster, ns, "exp")
    assert job["status"]["acceptedSpec"]
    secret = control_secret(cluster, ns, "exp", job["metadata"]["uid"])

    start_operator("--standalone", "--resync-seconds=2")
    wait_children(cluster, ns, "exp", expected("exp"))
    # The next operator finds the control token (a 409 on create) and keeps it: it cannot read Secrets.
    assert control_secret(cluster, ns, "exp", job["metadata"]["uid"]) == secret
    assert live_hashes(cluster, ns, "exp") == wanted_hashes(cluster, ns, "exp")
    wait_phase(cluster, ns, "exp", "Pending", reason="WaitingForLearner")


def reconciles(operator: OperatorProcess) -> float:
    return operator.counter("forkrl_operator_reconciles_total")


def test_two_replicas_with_distinct_priorities_take_turns(
    forkrl_cluster: ControlPlane, k8s_namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    peering = ("--peering=forkrl", "--peering-lifetime=8", "--resync-seconds=2")
    leader = start_operator(*peering, "--priority=200")
    standby = start_operator(*peering, "--priority=100")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(rlvrjob("exp", ns)))
    wait_children(cluster, ns, "exp", expected("exp"))
    time.sleep(3)
    assert reconciles(leader) > 0
    assert reconciles(standby) == 0  # paused in favour of the higher priority
    peers = cluster.kubectl_json("get", "clusterkopfpeering", "forkrl").get("status", {})
    assert sorted(peer["priority"] for peer in peers.values() if peer["priority"] in (100, 200)) == [100, 200]

    leader.kill()
    cluster.kubectl("delete", "deployment", "exp-rollout", "-n", ns)
    # Once the leader's peering record expires (8 s), the standby resumes and repairs the job.
    wait_children(cluster, ns, "exp", expected("exp"), timeout=60)
    assert reconciles(standby) > 0
    assert live_hashes(cluster, ns, "exp") == wanted_hashes(cluster, ns, "exp")


def test_equal_priorities_freeze_both_replicas(
    forkrl_cluster: ControlPlane, k8s_namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    """kopf's peering is not a Lease: this is why the chart runs one replica or distinct priorities."""
    cluster, ns = forkrl_cluster, k8s_namespace
    peering = ("--peering=forkrl", "--peering-lifetime=8", "--resync-seconds=2", "--priority=7")
    first = start_operator(*peering)  # alone for a moment: it works (e.g. resumes other tests' jobs)
    second = start_operator(*peering)
    time.sleep(3)  # both see each other now
    before = reconciles(first), reconciles(second)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(rlvrjob("frozen", ns)))
    time.sleep(8)
    assert children(cluster, ns, "frozen") == {}
    assert (reconciles(first), reconciles(second)) == before
    assert "same priority" in first.log(200) + second.log(200)
    second.stop()
    # Alone again, the remaining replica resumes.
    wait_children(cluster, ns, "frozen", expected("frozen"), timeout=60)
