"""Pure builders of the pod-running children: the rollout and verifier Deployments and the RayJob.

The RayJob targets KubeRay >= 1.5: HTTP submission (no submitter pod), the RayCluster deleted when the
job finishes, no KubeRay-level retries (`backoffLimit: 0`; forkrl retries with a new RayJob and counts
them). The controller (`forkrl train`) is the Ray job's driver on the head pod; the learner ranks are
Ray actors on the worker pods.
"""

from __future__ import annotations

import math
from typing import Any

from forkrl.operator.cluster_spec import Placement
from forkrl.operator.context import JobContext, controller_spec, rollout_model_dir
from forkrl.operator.names import (
    CONFIG_MOUNT,
    RAY_JOB_LABEL,
    SERVICE_PORT,
    SPEC_FILE,
    VERIFIER_FILE,
    labels,
    metadata,
    selector,
)
from forkrl.operator.quantity import format_bytes, format_cpu, parse_quantity
from forkrl.rollout.network import POD_IP_ENV, RENDEZVOUS_PORT_ENV, WEIGHT_SYNC_PORT_ENV

Manifest = dict[str, Any]
ENTRYPOINT = f"forkrl train {CONFIG_MOUNT}/{SPEC_FILE} --resume --quiet"
HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001))
RENDEZVOUS_PORT = 29500
"""Learner rank 0's TCP store of the learner world (declared on every learner pod: any may hold rank 0)."""
WEIGHT_SYNC_PORT = 29510
"""Pipeline stage s's weight-sync store listens on WEIGHT_SYNC_PORT + s (on the pod of its sender)."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
VOLCANO_QUEUE_LABEL = "volcano.sh/queue-name"
SCHEDULER_LABEL = "ray.io/scheduler-name"
PRIORITY_LABEL = "ray.io/priority-class-name"


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
    taken = {item["name"] for item in base}
    return base + [{"name": k, "value": v} for k, v in sorted(ctx.cluster.env.items()) if k not in taken]


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
                "spec": pod,
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
        args += ["--max-batch-size", str(spec.rollout.max_batch_size)]
    container = {
        "name": "rollout",
        "image": ctx.cluster.image_of("rollout"),
        "imagePullPolicy": ctx.cluster.image_pull_policy,
        "command": ["python", "-m", "forkrl.rollout"],
        "args": args,
        "ports": [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}],
        "env": env(ctx, []),
        "resources": requests_and_limits(ctx, pods.cpu, pods.memory, pods.gpus),
        # Loading a large checkpoint into vLLM takes minutes: the startup probe allows 30 of them.
        "startupProbe": http_probe("/healthz", 10, 180),
        "livenessProbe": http_probe("/healthz", 30, 3),
        "readinessProbe": http_probe("/readyz", 10, 3),
        "volumeMounts": [
            {"name": "storage", "mountPath": ctx.cluster.storage.mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *claim_mounts(ctx)[1],
        ],
    }
    pod = {
        "containers": [container],
        "volumes": [storage_volume(ctx), shared_memory(ctx.cluster.learner.shared_memory), *claim_mounts(ctx)[0]],
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


def learner_layout(ctx: JobContext) -> tuple[int, int]:
    """(worker pods, learner ranks per pod)."""
    ranks, per_pod = ctx.spec.resources.learner_ranks, ctx.cluster.learner.ranks_per_pod
    if ranks <= per_pod:
        return 1, ranks
    return ranks // per_pod, per_pod


def scheduling_labels(ctx: JobContext) -> dict[str, str]:
    scheduling = ctx.cluster.scheduling
    out: dict[str, str] = {}
    if scheduling.batch_scheduler == "volcano":
        out[SCHEDULER_LABEL] = "volcano"
        if scheduling.queue_name is not None:
            out[VOLCANO_QUEUE_LABEL] = scheduling.queue_name
        if scheduling.priority_class_name is not None:
            out[PRIORITY_LABEL] = scheduling.priority_class_name
    elif scheduling.batch_scheduler == "kueue":
        out[KUEUE_QUEUE_LABEL] = scheduling.queue_name or ""
    return out


def ray_job_suspend(ctx: JobContext) -> bool:
    """Suspended with the RLVRJob, and a suspended one stays so until the services are ready (resume).
    Under Kueue the RayJob is created suspended and from then on Kueue decides (admission unsuspends it),
    so the live value is kept."""
    if ctx.suspended:
        return True
    if ctx.cluster.scheduling.batch_scheduler == "kueue":
        return True if ctx.live_ray_job_suspend is None else ctx.live_ray_job_suspend
    return bool(ctx.hold_learner and ctx.live_ray_job_suspend)


def ray_pod(
    ctx: JobContext,
    component: str,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    where: Placement,
    service_account: str | None,
    metrics_port: int | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes, **placement(ctx, where)}
    if component == "learner":
        spec.update(spread_over_nodes(ctx, component))
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    else:
        spec["automountServiceAccountToken"] = False
    annotations = scrape_annotations(metrics_port)
    pod_labels = {**labels(ctx.names.job, component), RAY_JOB_LABEL: ctx.ray_job_name}
    template: dict[str, Any] = {"metadata": {"labels": pod_labels}, "spec": spec}
    if annotations:
        template["metadata"]["annotations"] = annotations
    return template


def ray_job(ctx: JobContext) -> Manifest:
    cluster, names = ctx.cluster, ctx.names
    pods, ranks_per_pod = learner_layout(ctx)
    resources = ctx.spec.resources
    metrics_port = controller_spec(ctx).observability.metrics_port
    head_env = env(
        ctx,
        [
            {"name": "FORKRL_STATUS_CONFIGMAP", "value": names.status},
            {"name": "FORKRL_ROLLOUT_SERVICE", "value": names.rollout_host},
            {"name": "FORKRL_ROLLOUT_PORT", "value": str(SERVICE_PORT)},
            {"name": "FORKRL_ATTEMPT", "value": str(ctx.attempt)},
        ],
    )
    head_ports = [{"name": n, "containerPort": p} for n, p in HEAD_PORTS]
    if metrics_port is not None:
        head_ports.append({"name": "metrics", "containerPort": metrics_port})
    extra_volumes, extra_mounts = claim_mounts(ctx)
    mounts = [
        {"name": "storage", "mountPath": cluster.storage.mount_path},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *extra_mounts,
    ]
    head = {
        "name": "ray-head",
        "image": cluster.image_of("controller"),
        "imagePullPolicy": cluster.image_pull_policy,
        "ports": head_ports,
        "env": head_env,
        "resources": requests_and_limits(ctx, cluster.controller.cpu, cluster.controller.memory, 0),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}, *mounts],
    }
    stages = ctx.spec.learner.parallel.pipeline_parallel
    worker_ports = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}] + [
        {"name": f"weight-sync-{s}", "containerPort": WEIGHT_SYNC_PORT + s, "protocol": "TCP"} for s in range(stages)
    ]
    worker = {
        "name": "ray-worker",
        "image": cluster.image_of("learner"),
        "imagePullPolicy": cluster.image_pull_policy,
        "ports": worker_ports,
        "env": env(ctx, [{"name": RENDEZVOUS_PORT_ENV, "value": str(RENDEZVOUS_PORT)},
                         {"name": WEIGHT_SYNC_PORT_ENV, "value": str(WEIGHT_SYNC_PORT)}]),
        "resources": requests_and_limits(
            ctx,
            format_cpu(parse_quantity(str(math.ceil(ranks_per_pod * resources.cpus_per_learner)))),
            format_bytes(parse_quantity(cluster.learner.memory_per_rank) * ranks_per_pod),
            math.ceil(ranks_per_pod * resources.gpus_per_learner),
        ),
        "volumeMounts": mounts,
    }
    shm = shared_memory(cluster.learner.shared_memory)
    config_volume = {
        "name": "config",
        "configMap": {"name": names.config, "items": [{"key": SPEC_FILE, "path": SPEC_FILE}]},
    }
    spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "HTTPMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 0,
        "backoffLimit": 0,
        "suspend": ray_job_suspend(ctx),
        "rayClusterSpec": {
            "rayVersion": cluster.ray_version,
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                # num-cpus 0: learner ranks go to the worker pods, never to the controller's pod.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": ray_pod(
                    ctx,
                    "controller",
                    head,
                    [config_volume, storage_volume(ctx), shm, *extra_volumes],
                    cluster.controller,
                    names.controller,
                    metrics_port,
                ),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "learner",
                    "replicas": pods,
                    "minReplicas": pods,
                    "maxReplicas": pods,
                    "rayStartParams": {},
                    "template": ray_pod(
                        ctx, "learner", worker, [storage_volume(ctx), shm, *extra_volumes], cluster.learner, None, None
                    ),
                }
            ],
        },
    }
    if cluster.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    meta = metadata(names, ctx.ray_job_name, ctx.uid, "learner", extra_labels=scheduling_labels(ctx))
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": spec}
