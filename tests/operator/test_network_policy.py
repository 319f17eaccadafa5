"""The job's NetworkPolicy: it selects every pod of the job and nothing else, admits the job's own pods on
every port, and outsiders only on the ports their rule names; those ports are the ones the job's
containers really expose (read from the built pods, so renaming a port fails here)."""

from __future__ import annotations

from typing import Any

from forkrl.operator.children import build_children
from forkrl.operator.network_policy import DASHBOARD_PORT, METRICS_PORTS
from tests.operator.test_children import by_kind, context


def _pod_templates(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    templates = []
    for m in manifests:
        if m["kind"] == "Deployment":
            templates.append(m["spec"]["template"])
        elif m["kind"] == "RayJob":
            cluster = m["spec"]["rayClusterSpec"]
            templates += [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return templates


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_every_job_pod_is_selected_and_only_the_job_pods_pass_on_every_port() -> None:
    ctx = context()
    manifests = build_children(ctx)
    policy = by_kind(ctx)[("NetworkPolicy", "exp")]["spec"]
    templates = _pod_templates(manifests)
    assert len(templates) == 4  # rollout, verifier, Ray head, Ray workers
    assert all(_matches(policy["podSelector"], t["metadata"]["labels"]) for t in templates)
    other_job = by_kind(context(name="other"))
    assert not any(_matches(policy["podSelector"], t["metadata"]["labels"]) for t in _pod_templates(
        list(other_job.values())))
    assert policy["policyTypes"] == ["Ingress"]  # egress stays open: object stores, registries
    own, *outsiders = policy["ingress"]
    assert "ports" not in own and own["from"] == [{"podSelector": policy["podSelector"]}]
    assert all("ports" in rule for rule in outsiders)  # nobody else gets every port


def test_outsiders_reach_only_ports_the_containers_expose() -> None:
    ctx = context()
    templates = _pod_templates(build_children(ctx))
    exposed = {(p.get("name"), p["containerPort"]) for t in templates for c in t["spec"]["containers"]
               for p in c.get("ports", [])}
    names = {name for name, _ in exposed}
    assert set(METRICS_PORTS) <= names  # rollout/verifier http (their /metrics), controller metrics
    assert ("dashboard", DASHBOARD_PORT) in exposed
    policy = by_kind(ctx)[("NetworkPolicy", "exp")]["spec"]
    metrics, dashboard = policy["ingress"][1:]
    assert [p["port"] for p in metrics["ports"]] == list(METRICS_PORTS)
    assert metrics["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                                "namespaceSelector": {"matchLabels": {}}}]
    assert [p["port"] for p in dashboard["ports"]] == [DASHBOARD_PORT]
    assert dashboard["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}


def test_peers_are_configurable_and_the_policy_can_be_turned_off() -> None:
    ctx = context({"cluster": {"network_policy": {
        "metrics_from": [{"namespace_labels": {"kubernetes.io/metadata.name": "monitoring"},
                          "pod_labels": {"app": "vmagent"}}],
        "dashboard_from": [],
        "services_from": [{"namespace_labels": None, "pod_labels": {"role": "eval"}}],
    }}})
    rules = by_kind(ctx)[("NetworkPolicy", "exp")]["spec"]["ingress"]
    assert len(rules) == 3  # the job's own pods, metrics, services: no dashboard rule
    assert rules[1]["from"] == [{"podSelector": {"matchLabels": {"app": "vmagent"}},
                                 "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rules[2] == {"from": [{"podSelector": {"matchLabels": {"role": "eval"}}}],  # the job's namespace only
                        "ports": [{"protocol": "TCP", "port": "http"}]}
    off = by_kind(context({"cluster": {"network_policy": {"enabled": False}}}))
    assert not any(kind == "NetworkPolicy" for kind, _ in off)
