"""Data safety and lifecycle on the real control plane: a checkpoint claim outlives its job by default and a
job created again under the same name adopts it; `retain: false` claims go with the job."""

from __future__ import annotations

import time

from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import OperatorProcess, children, claim, get_job, rlvrjob, wait_phase
from tests.operator.test_reconcile import apply, events, expected, wait_children


def test_a_retained_claim_outlives_its_job_and_the_next_job_of_that_name_adopts_it(
    forkrl_cluster: ControlPlane, k8s_namespace: str, checkpoint_volume: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    errors = module_operator.counter("forkrl_operator_reconciles_total", outcome="error")
    apply(cluster, rlvrjob("exp", ns, {"cluster": {"storage": {"create_claim": {"size": "1Gi"}}}}))
    first_uid = get_job(cluster, ns, "exp")["metadata"]["uid"]
    wait_children(cluster, ns, "exp", expected("exp"))
    kept = claim(cluster, ns)
    assert kept is not None and "ownerReferences" not in kept["metadata"]
    assert kept["metadata"]["labels"]["forkrl.dev/retained"] == "true"
    assert kept["metadata"]["annotations"]["forkrl.dev/job-uid"] == first_uid
    cluster.wait_for(lambda: (claim(cluster, ns) or {}).get("status", {}).get("phase") == "Bound", "the claim to bind")

    cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=true", "--timeout=60s")
    cluster.wait_for(lambda: children(cluster, ns, "exp") == {}, "every owned child to be deleted", 60)
    time.sleep(3)  # the garbage collector and the finalizer's sweep are done; the claim must still be there
    after = claim(cluster, ns)
    assert after is not None and after["metadata"]["uid"] == kept["metadata"]["uid"]
    assert "deletionTimestamp" not in after["metadata"]

    # The same job again (asking for more storage than the kept claim has): it reuses the claim.
    apply(cluster, rlvrjob("exp", ns, {"cluster": {"storage": {"create_claim": {"size": "2Gi"}}}}))
    second_uid = get_job(cluster, ns, "exp")["metadata"]["uid"]
    assert second_uid != first_uid
    wait_children(cluster, ns, "exp", expected("exp"))
    cluster.wait_for(
        lambda: (claim(cluster, ns) or {})["metadata"]["annotations"]["forkrl.dev/job-uid"] == second_uid,
        "the new job to adopt the claim",
        30,
    )
    adopted = claim(cluster, ns)
    assert adopted is not None and adopted["metadata"]["uid"] == kept["metadata"]["uid"]
    assert adopted["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert ("Normal", "AdoptedClaim") in events(cluster, ns, "exp")
    message = cluster.kubectl_json(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=exp,reason=AdoptedClaim"
    )["items"][0]["message"]
    assert "keeps its size 1Gi (the spec asks 2Gi" in message
    wait_phase(cluster, ns, "exp", "Pending", reason="WaitingForLearner")
    assert module_operator.counter("forkrl_operator_reconciles_total", outcome="error") == errors

    # Cleaning up, as operator/README.md says: the job, then its retained claim by label.
    cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=true", "--timeout=60s")
    assert claim(cluster, ns) is not None
    cluster.kubectl("delete", "pvc", "-n", ns, "-l", "forkrl.dev/job=exp,forkrl.dev/retained=true", "--wait=true")
    assert claim(cluster, ns) is None


def test_a_claim_with_retain_false_is_owned_and_goes_with_the_job(
    forkrl_cluster: ControlPlane, k8s_namespace: str, checkpoint_volume: str, module_operator: OperatorProcess
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    apply(cluster, rlvrjob("exp", ns, {"cluster": {"storage": {"create_claim": {"size": "1Gi", "retain": False}}}}))
    uid = get_job(cluster, ns, "exp")["metadata"]["uid"]
    cluster.wait_for(lambda: claim(cluster, ns) is not None, "the claim", 60)
    owned = claim(cluster, ns)
    assert owned is not None
    assert [(r["kind"], r["uid"]) for r in owned["metadata"]["ownerReferences"]] == [("RLVRJob", uid)]
    assert "forkrl.dev/retained" not in owned["metadata"]["labels"]
    cluster.kubectl("delete", "rlvr", "exp", "-n", ns, "--wait=true", "--timeout=60s")
    cluster.wait_for(lambda: claim(cluster, ns) is None, "the owned claim to be deleted with its job", 60)
