"""The security side of every job pod: cluster.security as pod and container securityContexts, and the
writable /tmp that a read-only root filesystem leaves each container (Ray's session directory, caches, HOME).

With the defaults every pod passes the restricted Pod Security Standard; only `verifier_seccomp:
Unconfined` steps outside it (see `PodSecurity`)."""

from __future__ import annotations

from typing import Any

from forkrl.operator.context import JobContext

TMP_MOUNT = "/tmp"


def secured(ctx: JobContext, component: str, pod: dict[str, Any]) -> dict[str, Any]:
    """The pod spec `pod` with cluster.security applied: the pod and every container get their security
    contexts, and every container the writable /tmp. Every job pod's spec passes through here."""
    volume, mount = scratch()
    containers = [
        {**c, "securityContext": container_security_context(ctx), "volumeMounts": [*c.get("volumeMounts", []), mount]}
        for c in pod["containers"]
    ]
    return {
        **pod,
        "containers": containers,
        "volumes": [*pod.get("volumes", []), volume],
        "securityContext": pod_security_context(ctx, component),
    }


def pod_security_context(ctx: JobContext, component: str) -> dict[str, Any]:
    """Pod-level settings of cluster.security (restricted Pod Security Standard unless relaxed there)."""
    security = ctx.cluster.security
    seccomp = security.verifier_seccomp if component == "verifier" else "RuntimeDefault"
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": security.run_as_user,
        "runAsGroup": security.run_as_group,
        "seccompProfile": {"type": seccomp},
    }
    if security.fs_group is not None:
        context["fsGroup"] = security.fs_group
    return context


def container_security_context(ctx: JobContext) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": ctx.cluster.security.read_only_root_filesystem,
    }


def scratch() -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of the writable /tmp every container gets (Ray's session dir, caches, HOME)."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": TMP_MOUNT}
