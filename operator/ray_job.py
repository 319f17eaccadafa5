"""Pure builder of the learner's RayJob: the Ray head pod runs the controller (`forkrl train`, the Ray
job's driver) and the worker pods the learner ranks, as Ray actors.

The RayJob targets KubeRay >= 1.5.1: HTTP submission (no submitter pod) carrying the Ray cluster's auth token,
the RayCluster deleted when the job finishes, no KubeRay-level retries (`backoffLimit: 0`; forkrl retries with
a new RayJob and counts them).
"""

from __future__ import annotations

import math
from typing import Any

from forkrl.operator.cluster_spec import Placement
from forkrl.operator.context import JobContext, controller_spec
from forkrl.operator.names import CONFIG_MOUNT, RAY_JOB_LABEL, SERVICE_PORT, SPEC_FILE, labels, metadata
from forkrl.operator.pod_security import secured
from forkrl.operator.quantity import format_bytes, format_cpu, parse_quantity
from forkrl.operator.workloads import (
    Manifest,
    claim_mounts,
    control_token_env,
    env,
    env_from,
    placement,
    requests_and_limits,
    scrape_annotations,
    shared_memory,
    spread_over_nodes,
    storage_volume,
)
from forkrl.rollout.network import RENDEZVOUS_PORT_ENV, WEIGHT_SYNC_PORT_ENV

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
OVERWRITE_COMMAND_ANNOTATION = "ray.io/overwrite-container-cmd"
RAY_START_COMMAND = ["/bin/bash", "-c", 'ulimit -n 65536 2>/dev/null; eval exec "$KUBERAY_GEN_RAY_START_CMD"']
"""KubeRay's own `ray start` command (it puts it in $KUBERAY_GEN_RAY_START_CMD) as the Ray container's PID 1.
KubeRay's default runs it under `bash -lc`, and bash as PID 1 ignores SIGTERM: every Ray pod then sat out its
whole grace period on suspend, drain or retry, and Ray never shut down cleanly. With `exec`, `ray start
--block` receives the SIGTERM and its handler drains the node and stops its processes."""


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
    service_account: str,
    metrics_port: int | None,
) -> dict[str, Any]:
    """A Ray pod template. Only the head (the controller, which patches its status ConfigMap) mounts an API
    token; workers run under the workload account without one."""
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes, **placement(ctx, where),
                            "serviceAccountName": service_account}
    if component == "learner":
        spec.update(spread_over_nodes(ctx, component))
        spec["automountServiceAccountToken"] = False
    container["command"] = RAY_START_COMMAND
    annotations = {**scrape_annotations(metrics_port), OVERWRITE_COMMAND_ANNOTATION: "true"}
    pod_labels = {**labels(ctx.names.job, component), RAY_JOB_LABEL: ctx.ray_job_name}
    return {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": secured(ctx, component, spec)}


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
            control_token_env(ctx),
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
        **env_from(ctx),
        "resources": requests_and_limits(ctx, cluster.controller.cpu, cluster.controller.memory, 0),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}, *mounts],
    }
    stages = ctx.spec.learner.parallel.pipeline_parallel
    worker_ports = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}] + [
        {"name": f"weight-sync-{s}", "containerPort": WEIGHT_SYNC_PORT + s, "protocol": "TCP"} for s in range(stages)
    ]
    worker = {
        "name": "ray-worker",
        "image": cluster.image_of("learner", uses_gpu=resources.gpus_per_learner > 0),
        "imagePullPolicy": cluster.image_pull_policy,
        "ports": worker_ports,
        "env": env(ctx, [{"name": RENDEZVOUS_PORT_ENV, "value": str(RENDEZVOUS_PORT)},
                         {"name": WEIGHT_SYNC_PORT_ENV, "value": str(WEIGHT_SYNC_PORT)}]),
        **env_from(ctx),
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
            "authOptions": {"mode": "token" if cluster.ray_token_auth else "disabled"},
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
                        ctx, "learner", worker, [storage_volume(ctx), shm, *extra_volumes], cluster.learner,
                        names.workload, None
                    ),
                }
            ],
        },
    }
    if cluster.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    meta = metadata(names, ctx.ray_job_name, ctx.uid, "learner", extra_labels=scheduling_labels(ctx))
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": spec}
