"""The `forkrl` chart with `operator.watchNamespaces`: a Role (not a ClusterRole) grants the operator its
namespaced verbs in each watched namespace only, the ClusterRole keeps just the cluster-scoped ones, and an
operator running with exactly that ServiceAccount reconciles a job in its namespace (checked with
`kubectl auth can-i` and by use, on the real API server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from forkrl.operator.rbac import CLUSTER_SCOPED_RULES, NAMESPACED_RULES
from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import CHART, OperatorProcess, children, rlvrjob, wait_phase
from tests.operator.test_reconcile import expected

RELEASE = "forkrl-scoped"
RELEASE_NAMESPACE = "forkrl-scoped-system"


def _verbs(rules: list[dict]) -> list[tuple[str, str, str]]:
    return [(verb, group, resource) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]]


@pytest.fixture(scope="module")
def scoped(forkrl_cluster: ControlPlane) -> Iterator[tuple[str, str]]:
    """A second release of the chart watching one fresh namespace; (watched, unwatched) namespaces."""
    cluster = forkrl_cluster
    suffix = time.monotonic_ns() % 10**6
    watched, unwatched = f"scoped-a-{suffix}", f"scoped-b-{suffix}"
    for namespace in (RELEASE_NAMESPACE, watched, unwatched):
        if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            cluster.create_namespace(namespace)
    # The first release owns the CRD and the peering object; this one installs only its RBAC and account.
    cluster.helm("upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--set", "crds.manage=false",
                 "--set", "operator.replicas=0", "--set", "grafanaDashboard.enabled=false",
                 "--set", f"operator.watchNamespaces={{{watched}}}", "--wait", "--timeout=120s")
    yield watched, unwatched
    cluster.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, check=False)
    for namespace in (watched, unwatched):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def _can(cluster: ControlPlane, verb: str, group: str, resource: str, *where: str) -> bool:
    name, _, sub = resource.partition("/")
    subject = f"--as=system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
    args = [verb, f"{name}.{group}" if group else name, *where, subject]
    if sub:
        args.append(f"--subresource={sub}")
    return cluster.kubectl("auth", "can-i", *args, check=False).stdout.strip() == "yes"


def test_namespaced_verbs_hold_in_the_watched_namespace_only(forkrl_cluster: ControlPlane, scoped) -> None:
    watched, unwatched = scoped
    namespaced = _verbs(NAMESPACED_RULES)
    assert ("create", "", "secrets") in namespaced and ("create", "apps", "deployments") in namespaced
    with ThreadPoolExecutor(8) as pool:  # one kubectl per question: a few dozen of them
        elsewhere = list(pool.map(lambda v: _can(forkrl_cluster, *v, "-n", unwatched), namespaced))
        inside = list(pool.map(lambda v: _can(forkrl_cluster, *v, "-n", watched), namespaced))
        cluster_scoped = list(pool.map(lambda v: _can(forkrl_cluster, *v), _verbs(CLUSTER_SCOPED_RULES)))
    assert [v for v, allowed in zip(namespaced, elsewhere, strict=True) if allowed] == []
    assert [v for v, allowed in zip(namespaced, inside, strict=True) if not allowed] == []
    assert all(cluster_scoped)
    assert not _can(forkrl_cluster, "list", "forkrl.dev", "rlvrjobs", "--all-namespaces")
    rendered = [doc for doc in yaml.safe_load_all(forkrl_cluster.helm(
        "get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE).stdout) if doc]
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in rendered if "Role" in d["kind"]}
    assert kinds == {("ClusterRole", None), ("ClusterRoleBinding", None), ("Role", watched),
                     ("RoleBinding", watched)}


def test_an_operator_with_only_the_namespaced_grants_reconciles_its_namespace(forkrl_cluster: ControlPlane,
                                                                             scoped) -> None:
    watched, _ = scoped
    kubeconfig = forkrl_cluster.service_account_kubeconfig(RELEASE_NAMESPACE, RELEASE)
    operator = OperatorProcess(forkrl_cluster, kubeconfig, f"forkrl-operator-scoped-{time.monotonic_ns() % 10**6}",
                               "--standalone", "--resync-seconds=2", f"--namespace={watched}").start()
    try:
        forkrl_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(rlvrjob("exp", watched)))
        forkrl_cluster.wait_for(lambda: set(children(forkrl_cluster, watched, "exp")) == expected("exp"),
                                "the children of exp", 60)
        uid = forkrl_cluster.kubectl_json("get", "rlvr", "exp", "-n", watched)["metadata"]["uid"]
        assert forkrl_cluster.kubectl("get", "secret", f"exp-control-{uid[:8]}", "-n", watched,
                                      check=False).returncode == 0
        wait_phase(forkrl_cluster, watched, "exp", "Pending", reason="WaitingForLearner")
        log = operator.process.log_path.read_text()
        assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    finally:
        operator.stop()
