"""Pure builder of the job's NetworkPolicy: only the job's own pods reach its pods (Ray's ports between head
and workers, the learner's rendezvous and weight-sync stores, the rollout and verifier HTTP ports);
scrapers reach the metrics ports, KubeRay reaches the Ray dashboard, and `services_from` peers reach the
HTTP port. Egress is left open (object stores, model registries). Traffic from the node itself (kubelet
probes, `kubectl port-forward`) is not subject to NetworkPolicy in the common network plugins.
"""

from __future__ import annotations

from typing import Any

from forkrl.operator.cluster_spec import NetworkPeer
from forkrl.operator.context import JobContext
from forkrl.operator.names import JOB_LABEL, metadata

Manifest = dict[str, Any]
DASHBOARD_PORT = 8265
METRICS_PORTS = ("http", "metrics")
"""Named container ports: `http` of the rollout and verifier (their /metrics), `metrics` of the controller."""


def peer(selector: NetworkPeer) -> dict[str, Any]:
    """One `from` entry: pods by label, in the job's namespace or in the namespaces matching a selector."""
    out: dict[str, Any] = {"podSelector": {"matchLabels": dict(selector.pod_labels)}}
    if selector.namespace_labels is not None:
        out["namespaceSelector"] = {"matchLabels": dict(selector.namespace_labels)}
    return out


def network_policy(ctx: JobContext) -> Manifest | None:
    spec = ctx.cluster.network_policy
    if not spec.enabled:
        return None
    job_pods = {"matchLabels": {JOB_LABEL: ctx.names.job}}
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": job_pods}]}]  # every port, the job's pods only
    allowances = (
        (spec.metrics_from, list(METRICS_PORTS)),
        (spec.dashboard_from, [DASHBOARD_PORT]),
        (spec.services_from, ["http"]),
    )
    for peers, ports in allowances:
        if peers:
            ingress.append({
                "from": [peer(p) for p in peers],
                "ports": [{"protocol": "TCP", "port": port} for port in ports],
            })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx.names, ctx.names.job, ctx.uid, "network"),
        "spec": {"podSelector": job_pods, "policyTypes": ["Ingress"], "ingress": ingress},
    }
