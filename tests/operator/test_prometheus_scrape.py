"""A real Prometheus scrapes a real operator on the test control plane: every dashboard panel and alert over
the operator's metrics (live_queries.NO_LOCAL_DATA marks them: a local run has no operator) returns data, and
the reconcile-error alert's condition holds once a cluster policy refuses a job's children."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.binaries import ClusterBinaries
from tests.cluster.controlplane import ControlPlane
from tests.monitoring.chart import Chart
from tests.monitoring.live_prometheus import LivePrometheus, find_prometheus
from tests.monitoring.live_queries import (
    NO_LOCAL_DATA,
    OPERATOR_ONLY,
    LiveQuery,
    alert_queries,
    has_data,
    panel_queries,
)
from tests.operator.harness import OperatorProcess, rlvrjob
from tests.operator.test_reconcile import apply, expected, wait_children

REFUSED_JOB = "refused"


def refusing_policy(namespace: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (CEL, in the apiserver) denying the Deployments of job REFUSED_JOB in
    `namespace`, as a cluster's own policy might: each reconcile of that job fails at its first apply."""
    name = f"refuse-{namespace}"
    label = "object.metadata.labels[?'forkrl.dev/job'].orValue('')"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                          "operations": ["CREATE", "UPDATE"],
                                                          "resources": ["deployments"]}]},
                  "validations": [{"expression": f"{label} != '{REFUSED_JOB}'",
                                   "message": f"this cluster refuses the Deployments of job {REFUSED_JOB}"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {
                      "matchLabels": {"kubernetes.io/metadata.name": namespace}}}}},
    ]


def policy_denies(cluster: ControlPlane, namespace: str) -> bool:
    """Whether the apiserver already enforces the policy (it loads a new binding within a second or so)."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "probe", "namespace": namespace, "labels": {"forkrl.dev/job": REFUSED_JOB}},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    done = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(deployment), check=False)
    return done.returncode != 0 and "refuses the Deployments" in done.stderr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[LivePrometheus]:
    binary = find_prometheus()
    if binary is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail("prometheus is missing but installable here: run `bash scripts/setup.sh`")
        pytest.skip("prometheus is missing and scripts/setup.sh cannot install it (needs root and apt-get)")
    live = LivePrometheus.start(binary, tmp_path / "prometheus")
    yield live
    live.stop()


def operator_queries(k8s_binaries: ClusterBinaries, home: Path) -> list[LiveQuery]:
    everything = [*panel_queries("any"), *alert_queries(Chart(k8s_binaries.path("helm"), home).alert_rules())]
    return [query for query in everything if NO_LOCAL_DATA.get(query.id) == OPERATOR_ONLY]


def test_a_scraped_operator_gives_every_operator_panel_and_alert_data(
    forkrl_cluster: ControlPlane, k8s_namespace: str, k8s_binaries: ClusterBinaries,
    start_operator: Callable[..., OperatorProcess], prometheus: LivePrometheus, tmp_path: Path,
) -> None:
    cluster, ns = forkrl_cluster, k8s_namespace
    queries = operator_queries(k8s_binaries, tmp_path)
    assert len(queries) >= 9, [query.id for query in queries]
    operator = start_operator("--standalone", "--resync-seconds=1")
    assert prometheus.add_targets_from(f"metrics: http://127.0.0.1:{operator.metrics_port}/metrics")
    policy = refusing_policy(ns)
    try:
        # A job that reconciles (children applied, status written, events posted) and is then deleted (its
        # children swept), and one whose every reconcile fails.
        apply(cluster, rlvrjob("fine", ns))
        wait_children(cluster, ns, "fine", expected("fine"))
        cluster.kubectl("delete", "rlvr", "fine", "-n", ns, "--wait=true", "--timeout=60s")
        cluster.apply(policy)
        cluster.wait_for(lambda: policy_denies(cluster, ns), "the admission policy in force", timeout=30)
        apply(cluster, rlvrjob(REFUSED_JOB, ns))
        alert = next(query for query in queries if query.id == "alert ForkrlOperatorReconcileErrors")
        # Retried every 3 s (kopf's backoff): the alert's count (3 in its window) is passed within seconds.
        cluster.wait_for(lambda: operator.counter("forkrl_operator_reconciles_total", outcome="error") >= 6,
                         "failed reconciles of the refused job", timeout=90)

        def missing() -> list[str]:
            end = time.time()
            return [query.id for query in queries
                    if not has_data(prometheus.query_range(query.query, prometheus.first_target_at or end, end))]

        # Prometheus scrapes every second; the last counts reach it within a scrape or two.
        deadline = time.monotonic() + 30
        while (absent := missing()) and time.monotonic() < deadline:
            time.sleep(1)
        assert absent == [], f"no data for {absent}; prometheus log:\n{prometheus.log_tail()}"
        # The alert's whole condition (its threshold included), not only its left-hand side, holds.
        firing = prometheus.query_range(alert.shipped, time.time() - 5, time.time())
        assert has_data(firing), alert.shipped
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                                      "items": policy}), check=False)
