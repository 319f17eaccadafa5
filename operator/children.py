"""Pure builders: an RLVRJob (its effective spec, uid and attempt) -> the manifests of its children.

Every child carries an owner reference (except a retained checkpoint claim), `app.kubernetes.io/*`
labels, `forkrl.dev/job` and the hash of its own manifest (`forkrl.dev/desired-hash`), so the
reconciler can tell whether a live object is already what it would apply. Nothing here talks to the
API server.

| child | name | purpose |
|---|---|---|
| ServiceAccount, Role, RoleBinding | `<job>-controller` | the controller may get/patch only `<job>-status` |
| ServiceAccount | `<job>-workload` | rollout and learner pods: no API token, `cluster.service_account` annotations |
| ConfigMap | `<job>-config` | `spec.yaml` for `forkrl train`, `verifier.yaml` for the verifier |
| ConfigMap | `<job>-status` | written by the controller (progress); created empty here |
| Secret | `<job>-control-<uid8>` | the job's control token; created once, never applied or read (`control_secret`) |
| PersistentVolumeClaim | `<job>-checkpoints` | with `cluster.storage.create_claim`; outlives the job (`retain`) |
| Service + Deployment | `<job>-rollout` | rollout replicas (headless Service: one DNS record per replica) |
| Service + Deployment | `<job>-verifier` | reward verifier (absent with `spec.verifier.endpoint`) |
| RayJob | `<job>` / `<job>-r<n>` | controller (head) + learner workers, one per attempt |
| PodMonitor | `<job>` | only with `cluster.monitoring.pod_monitor` |
| NetworkPolicy | `<job>` | only the job's pods (and the listed peers) reach its pods; `cluster.network_policy` |
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from forkrl.operator import workloads
from forkrl.operator.context import JobContext, controller_spec
from forkrl.operator.names import (
    HASH_ANNOTATION,
    JOB_UID_ANNOTATION,
    RETAINED_LABEL,
    SERVICE_PORT,
    SPEC_FILE,
    VERIFIER_FILE,
    metadata,
    selector,
)
from forkrl.operator.network_policy import network_policy
from forkrl.operator.ray_job import ray_job
from forkrl.rollout.control_token import CONTROL_SECRET_KEY

Manifest = dict[str, Any]


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def config_map(ctx: JobContext) -> Manifest:
    verifier = {
        "run": ctx.names.job,
        "math": ctx.spec.verifier.math.model_dump(mode="json"),
        "code": ctx.spec.verifier.code.model_dump(mode="json"),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx.names, ctx.names.config, ctx.uid, "config"),
        "data": {
            SPEC_FILE: dump_yaml(controller_spec(ctx).model_dump(mode="json")),
            VERIFIER_FILE: dump_yaml(verifier),
        },
    }


def control_secret(ctx: JobContext, token: str) -> Manifest:
    """The job's control token. Created once with a fresh token (POST, never server-side applied, so no later
    reconcile can rotate it under running pods) and never read back: the operator needs no `get` on Secrets."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(ctx.names, ctx.control_secret, ctx.uid, "control"),
        "type": "Opaque",
        "stringData": {CONTROL_SECRET_KEY: token},
    }


def status_config_map(ctx: JobContext) -> Manifest:
    """Created without data: the operator owns only its metadata, the controller patches `data`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            ctx.names,
            ctx.names.status,
            ctx.uid,
            "status",
            annotations={"forkrl.dev/written-by": "controller (forkrl train)"},
        ),
    }


def service_account(ctx: JobContext, name: str, component: str) -> Manifest:
    """An account of the job's pods, with the workload-identity annotations of `cluster.service_account`."""
    annotations = ctx.cluster.service_account.annotations
    meta = metadata(ctx.names, name, ctx.uid, component, annotations=annotations or None)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def controller_rbac(ctx: JobContext) -> list[Manifest]:
    names = ctx.names
    meta = metadata(names, names.controller, ctx.uid, "controller")
    return [
        service_account(ctx, names.controller, "controller"),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [names.status],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.controller},
            "subjects": [{"kind": "ServiceAccount", "name": names.controller, "namespace": names.namespace}],
        },
    ]


def claim(ctx: JobContext) -> Manifest | None:
    """The checkpoint claim. Retained (the default): no owner reference, labelled `forkrl.dev/retained`,
    annotated with the uid of the job using it. A claim that exists keeps its own spec (immutable)."""
    created = ctx.cluster.storage.create_claim
    if created is None:
        return None
    live = ctx.live_claim_spec or {}
    storage = ((live.get("resources") or {}).get("requests") or {}).get("storage")
    spec: dict[str, Any] = {
        "accessModes": list(live.get("accessModes") or [created.access_mode]),
        "resources": {"requests": {"storage": storage or created.size}},
    }
    if created.storage_class_name is not None:
        spec["storageClassName"] = live.get("storageClassName") or created.storage_class_name
    if created.retain:
        meta = metadata(
            ctx.names,
            ctx.names.claim,
            ctx.uid,
            "storage",
            extra_labels={RETAINED_LABEL: "true"},
            annotations={JOB_UID_ANNOTATION: ctx.uid},
            owned=False,
        )
    else:
        meta = metadata(ctx.names, ctx.names.claim, ctx.uid, "storage")
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def service(ctx: JobContext, component: str, name: str, headless: bool) -> Manifest:
    spec: dict[str, Any] = {
        "selector": selector(ctx.names.job, component),
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    if headless:
        # The controller resolves one address per replica and pushes weights to each, also to replicas
        # that are not ready yet (a replica without weights is never ready).
        spec.update({"clusterIP": "None", "publishNotReadyAddresses": True})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx.names, name, ctx.uid, component),
        "spec": spec,
    }


def pod_monitor(ctx: JobContext) -> Manifest | None:
    if not ctx.cluster.monitoring.pod_monitor:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(ctx.names, ctx.names.pod_monitor, ctx.uid, "monitoring"),
        "spec": {
            "selector": {"matchLabels": {"forkrl.dev/job": ctx.names.job}},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}, {"port": "metrics", "path": "/metrics"}],
        },
    }


def manifest_hash(manifest: Manifest) -> str:
    """sha256 of the manifest without its own hash annotation (canonical JSON)."""
    meta = dict(manifest.get("metadata", {}))
    annotations = {k: v for k, v in dict(meta.get("annotations") or {}).items() if k != HASH_ANNOTATION}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    text = json.dumps({**manifest, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def with_hash(manifest: Manifest) -> Manifest:
    digest = manifest_hash(manifest)
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**dict(meta.get("annotations") or {}), HASH_ANNOTATION: digest}
    return {**manifest, "metadata": meta}


def build_children(ctx: JobContext) -> list[Manifest]:
    """Every child of the job, in the order they are applied (RBAC and config before the pods using them)."""
    names = ctx.names
    manifests: list[Manifest | None] = [
        network_policy(ctx),  # before any pod: none of them is ever reachable from outside the job
        *controller_rbac(ctx),
        service_account(ctx, names.workload, "workload"),
        config_map(ctx),
        status_config_map(ctx),
        claim(ctx),
        service(ctx, "rollout", names.rollout, headless=True),
        workloads.rollout_deployment(ctx),
    ]
    if ctx.has_verifier:
        manifests += [service(ctx, "verifier", names.verifier, headless=False), workloads.verifier_deployment(ctx)]
    manifests += [ray_job(ctx), pod_monitor(ctx)]
    return [with_hash(m) for m in manifests if m is not None]
