"""Pure builders of the pod-running children: the rollout and verifier Deployments, and the pieces every
job pod shares (environment, resources, placement, volumes). The learner's RayJob is in `ray_job.py`."""

from __future__ import annotations

import math
from typing import Any

from forkrl.operator.cluster_spec import Placement
from forkrl.operator.context import JobContext, rollout_model_dir
from forkrl.operator.names import (
    CONFIG_MOUNT,
    SERVICE_PORT,
    VERIFIER_FILE,
    labels,
    metadata,
    selector,
)
from forkrl.operator.pod_security import TMP_MOUNT, secured
from forkrl.operator.quantity import parse_quantity
from forkrl.rollout.control_token import CONTROL_SECRET_KEY, CONTROL_TOKEN_ENV
from forkrl.rollout.network import POD_IP_ENV

Manifest = dict[str, Any]


def env(ctx: JobContext, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fixed forkrl variables first, then cluster.env (sorted by name) unless it redefines one."""
    base = [
        {"name": "FORKRL_JOB", "value": ctx.names.job},
        {"name": "FORKRL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # The address other pods reach this one at (rendezvous and weight-sync stores are announced with it).
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *extra,
    ]
    # The image's home may be read-only or another user's: caches go to the writable /tmp.
    if "HOME" not in ctx.cluster.env and "HOME" not in ctx.cluster.env_value_from:
        base.append({"name": "HOME", "value": TMP_MOUNT})
    taken = {item["name"] for item in base}
    plain = [{"name": k, "value": v} for k, v in ctx.cluster.env.items()]
    referenced = [
        {"name": k, "valueFrom": {key: {"name": ref.name, "key": ref.key, "optional": ref.optional}}}
        for k, source in ctx.cluster.env_value_from.items()
        for key, ref in (("secretKeyRef", source.secret_key_ref), ("configMapKeyRef", source.config_map_key_ref))
        if ref is not None
    ]
    return base + sorted((item for item in plain + referenced if item["name"] not in taken), key=lambda i: i["name"])


def control_token_env(ctx: JobContext) -> dict[str, Any]:
    """The job's control token from its Secret (the rollout replicas require it, the controller proves it)."""
    ref = {"name": ctx.control_secret, "key": CONTROL_SECRET_KEY}
    return {"name": CONTROL_TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}


def env_from(ctx: JobContext) -> dict[str, Any]:
    """`envFrom` of every forkrl container (empty: no key at all)."""
    sources = []
    for source in ctx.cluster.env_from:
        kind, name = ("secretRef", source.secret_ref) if source.secret_ref else ("configMapRef", source.config_map_ref)
        item: dict[str, Any] = {kind: {"name": name, "optional": source.optional}}
        if source.prefix:
            item["prefix"] = source.prefix
        sources.append(item)
    return {"envFrom": sources} if sources else {}


def requests_and_limits(ctx: JobContext, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    """Requests, and limits equal to them (the CPU limit only with cluster.cpu_limits)."""
    values: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        values[ctx.cluster.gpu_resource] = str(gpus)
    limits = dict(values)
    if not ctx.cluster.cpu_limits:
        del limits["cpu"]
    return {"requests": dict(values), "limits": limits}


def placement(ctx: JobContext, where: Placement) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if where.node_selector:
        spec["nodeSelector"] = dict(sorted(where.node_selector.items()))
    if where.tolerations:
        spec["tolerations"] = [
            {
                key: value
                for key, value in {
                    "key": t.key,
                    "operator": t.operator,
                    "value": t.value,
                    "effect": t.effect,
                    "tolerationSeconds": t.toleration_seconds,
                }.items()
                if value is not None
            }
            for t in where.tolerations
        ]
    scheduling = ctx.cluster.scheduling
    if scheduling.priority_class_name is not None:
        spec["priorityClassName"] = scheduling.priority_class_name
    if ctx.cluster.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in ctx.cluster.image_pull_secrets]
    return spec


def spread_over_nodes(ctx: JobContext, component: str) -> dict[str, Any]:
    """Replicas of one component on as many nodes as the scheduler can (a node lost takes one replica,
    and ranks of one learner do not share a node's network); a preference, never a reason to stay Pending."""
    return {
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(ctx.names.job, component)},
            }
        ]
    }


def storage_volume(ctx: JobContext) -> dict[str, Any]:
    storage = ctx.cluster.storage
    if storage.claim_name is not None:
        return {"name": "storage", "persistentVolumeClaim": {"claimName": storage.claim_name}}
    if storage.create_claim is not None:
        return {"name": "storage", "persistentVolumeClaim": {"claimName": ctx.names.claim}}
    return {"name": "storage", "emptyDir": {}}


def claim_mounts(ctx: JobContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of cluster.mounts, for every forkrl container."""
    volumes = [
        {"name": m.name, "persistentVolumeClaim": {"claimName": m.claim_name, "readOnly": m.read_only}}
        for m in ctx.cluster.mounts
    ]
    mounts = [{"name": m.name, "mountPath": m.mount_path, "readOnly": m.read_only} for m in ctx.cluster.mounts]
    return volumes, mounts


def shared_memory(size: str) -> dict[str, Any]:
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def scrape_annotations(port: int | None) -> dict[str, str]:
    if port is None:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def deployment(ctx: JobContext, component: str, name: str, replicas: int, pod: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx.names, name, ctx.uid, component),
        "spec": {
            "replicas": 0 if ctx.suspended else replicas,
            "selector": {"matchLabels": selector(ctx.names.job, component)},
            "template": {
                "metadata": {
                    "labels": labels(ctx.names.job, component),
                    "annotations": scrape_annotations(SERVICE_PORT),
                },
                "spec": secured(ctx, component, pod),
            },
        },
    }


def rollout_deployment(ctx: JobContext) -> Manifest:
    spec, pods = ctx.spec, ctx.cluster.rollout
    vllm = spec.rollout.engine == "vllm"
    args = [
        "--engine",
        spec.rollout.engine,
        "--model",
        rollout_model_dir(ctx),
        "--host",
        "0.0.0.0",
        "--port",
        str(SERVICE_PORT),
        "--run",
        ctx.names.job,
        "--replica",
        "$(POD_NAME)",
        "--seed",
        str(spec.seed),
        "--max-context",
        str(spec.model.max_prompt_tokens + spec.model.max_response_tokens),
        "--in-flight-policy",
        "abort_retry" if spec.rollout.in_flight_on_sync == "abort" else "finish",
    ]
    if vllm:
        args += [
            "--tensor-parallel-size",
            str(max(1, pods.gpus)),
            "--max-num-seqs",
            str(spec.rollout.max_batch_size),
            "--gpu-memory-utilization",
            str(spec.rollout.gpu_memory_utilization),
        ]
    else:
        args += ["--max-batch-size", str(spec.rollout.max_batch_size), "--num-threads", str(spec.rollout.torch_threads)]
    container = {
        "name": "rollout",
        "image": ctx.cluster.image_of("rollout", uses_gpu=pods.gpus > 0),
        "imagePullPolicy": ctx.cluster.image_pull_policy,
        # A crash leaves its log's tail as the termination message: the operator shows it in the job's
        # conditions (operator/pod_problems.py).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "command": ["python", "-m", "forkrl.rollout"],
        "args": args,
        "ports": [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}],
        "env": env(ctx, [control_token_env(ctx)]),
        **env_from(ctx),
        "resources": requests_and_limits(ctx, pods.cpu, pods.memory, pods.gpus),
        # Loading a large checkpoint into vLLM takes minutes: the startup probe allows 30 of them. It asks every
        # 2 s (a local GET) and readiness every 5 s: the learner waits for the replicas to be Ready, so each
        # probe period is start-up latency of the whole job, on every start, retry and resume.
        "startupProbe": http_probe("/healthz", 2, 900),
        "livenessProbe": http_probe("/healthz", 30, 3),
        "readinessProbe": http_probe("/readyz", 5, 3),
        "volumeMounts": [
            {"name": "storage", "mountPath": ctx.cluster.storage.mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *claim_mounts(ctx)[1],
        ],
    }
    pod = {
        "containers": [container],
        "volumes": [storage_volume(ctx), shared_memory(ctx.cluster.learner.shared_memory), *claim_mounts(ctx)[0]],
        "serviceAccountName": ctx.names.workload,  # workload identity (object stores), no API token
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 60,
        **placement(ctx, pods),
        **spread_over_nodes(ctx, "rollout"),
    }
    return deployment(ctx, "rollout", ctx.names.rollout, spec.rollout.replicas, pod)


def verifier_deployment(ctx: JobContext) -> Manifest:
    pods = ctx.cluster.verifier
    # Inside a container os.sched_getaffinity sees the node's CPUs, not the pod's limit.
    workers = ctx.spec.verifier.workers or max(1, math.floor(parse_quantity(pods.cpu)))
    container = {
        "name": "verifier",
        "image": ctx.cluster.image_of("verifier"),
        "imagePullPolicy": ctx.cluster.image_pull_policy,
        # A crash leaves its log's tail as the termination message: the operator shows it in the job's
        # conditions (operator/pod_problems.py).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "command": ["python", "-m", "forkrl.rollout.verifier"],
        "args": [
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVICE_PORT),
            "--run",
            ctx.names.job,
            "--workers",
            str(workers),
            "--config",
            f"{CONFIG_MOUNT}/{VERIFIER_FILE}",
            "--log-level",
            "warning",
        ],
        "ports": [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}],
        "env": env(ctx, []),
        **env_from(ctx),
        "resources": requests_and_limits(ctx, pods.cpu, pods.memory, 0),
        "livenessProbe": http_probe("/healthz", 30, 3),
        "readinessProbe": http_probe("/readyz", 5, 3),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}, *claim_mounts(ctx)[1]],
    }
    pod = {
        "containers": [container],
        "volumes": [
            {
                "name": "config",
                "configMap": {"name": ctx.names.config, "items": [{"key": VERIFIER_FILE, "path": VERIFIER_FILE}]},
            },
            *claim_mounts(ctx)[0],
        ],
        "automountServiceAccountToken": False,
        **placement(ctx, pods),
    }
    return deployment(ctx, "verifier", ctx.names.verifier, pods.replicas, pod)
