"""cluster.security: every job pod passes the restricted Pod Security Standard by default, checked twice: by
the rules written out here, and by the API server's own PodSecurity admission (a server-side dry run of
each pod in a namespace that enforces `restricted`). Relaxing the verifier's seccomp is refused there."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from forkrl.operator.cluster_spec import RESERVED_MOUNT_PATHS
from tests.cluster.controlplane import ControlPlane
from tests.operator.test_children import _pod_specs, container, context

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                   "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The restricted profile's rules (v1.36) that a pod built here could break, as readable findings."""
    found = []
    pod_context = pod.get("securityContext", {})
    for c in pod["containers"] + pod.get("initContainers", []):
        ctx = c.get("securityContext", {})
        name = c["name"]
        if not ctx.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot not true")
        if ctx.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation not false")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities not dropped")
        seccomp = ctx.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccomp {seccomp}")
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
    for volume in pod.get("volumes", []):
        kind = next(k for k in volume if k != "name")
        if kind not in ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: {kind}")
    return found


def test_every_job_pod_is_restricted_non_root_with_a_read_only_image_and_a_writable_tmp() -> None:
    for where, pod in _pod_specs(context()).items():
        assert restricted_violations(pod) == [], where
        main = container({"spec": pod})
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 1000, where
        tmp = next(m for m in main["volumeMounts"] if m["mountPath"] == "/tmp")
        assert {"name": tmp["name"], "emptyDir": {}} in pod["volumes"], where
        assert {"name": "HOME", "value": "/tmp"} in main["env"], where
    assert "/tmp" in RESERVED_MOUNT_PATHS


def test_security_settings_reach_every_pod_and_home_stays_the_users_to_choose() -> None:
    security = {"run_as_user": 4242, "run_as_group": 4343, "fs_group": None, "read_only_root_filesystem": False,
                "verifier_seccomp": "Unconfined"}
    pods = _pod_specs(context({"cluster": {"security": security, "env": {"HOME": "/home/me"}}}))
    for where, pod in pods.items():
        main = container({"spec": pod})
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (4242, 4343), where
        assert "fsGroup" not in pod["securityContext"], where
        assert main["securityContext"]["readOnlyRootFilesystem"] is False, where
        assert [e["value"] for e in main["env"] if e["name"] == "HOME"] == ["/home/me"], where
        expected = "Unconfined" if where == "verifier" else "RuntimeDefault"
        assert pod["securityContext"]["seccompProfile"] == {"type": expected}, where
    assert restricted_violations(pods["verifier"]) == ["verifier: seccomp Unconfined"]
    with pytest.raises(ValidationError, match="run_as_user"):
        context({"cluster": {"security": {"run_as_user": 0}}})


def _dry_run_pod(cluster: ControlPlane, namespace: str, name: str, pod: dict[str, Any]) -> tuple[int, str]:
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": pod}
    result = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    return result.returncode, result.stdout + result.stderr


def test_the_api_servers_pod_security_admission_accepts_every_job_pod_under_restricted(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    control_plane.kubectl("label", "namespace", k8s_namespace, "pod-security.kubernetes.io/enforce=restricted")
    for account in ("exp-controller", "exp-workload"):  # the head pod's; the rollout and learner pods'
        control_plane.kubectl("create", "serviceaccount", account, "-n", k8s_namespace)
    for where, pod in _pod_specs(context()).items():
        code, output = _dry_run_pod(control_plane, k8s_namespace, where, pod)
        assert code == 0, f"{where}: {output}"
    # The one relaxation there is, and what a restricted namespace says to it.
    verifier = _pod_specs(context({"cluster": {"security": {"verifier_seccomp": "Unconfined"}}}))["verifier"]
    code, output = _dry_run_pod(control_plane, k8s_namespace, "verifier", verifier)
    assert code != 0 and "violates PodSecurity" in output and "seccompProfile" in output, output
