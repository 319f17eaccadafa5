"""The operator's few API calls, over the official kubernetes client's ApiClient (auth, TLS, token refresh).

Children are written with server-side apply (`PATCH` + `application/apply-patch+yaml`, field manager
`forkrl-operator`, force): the API server merges, creates on first apply and reports no change when
nothing changed. The status is written with a JSON merge patch guarded by `resourceVersion`, so two
writers (two operator replicas during a hand-over) cannot silently overwrite each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from forkrl.operator.names import FIELD_MANAGER
from forkrl.operator.resource import GROUP, PLURAL, VERSION

# kind -> (API group, version, plural). Everything the operator reads or writes.
KINDS: dict[str, tuple[str, str, str]] = {
    "RLVRJob": (GROUP, VERSION, PLURAL),
    "ConfigMap": ("", "v1", "configmaps"),
    "Secret": ("", "v1", "secrets"),
    "Service": ("", "v1", "services"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "Pod": ("", "v1", "pods"),
    "Deployment": ("apps", "v1", "deployments"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "RayJob": ("ray.io", "v1", "rayjobs"),
    "PodMonitor": ("monitoring.coreos.com", "v1", "podmonitors"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
# Kinds of the children of an RLVRJob (all labelled forkrl.dev/job), in the order they are watched.
CHILD_KINDS = (
    "RayJob",
    "Deployment",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "PersistentVolumeClaim",
    "PodMonitor",
    "NetworkPolicy",
)
REQUEST_TIMEOUT_S = 30.0


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status (0 when no response came)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


def object_path(
    kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None
) -> str:
    """The API path of an object, or of a collection (no name; no namespace: every namespace)."""
    group, version, plural = KINDS[kind]
    base = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    if namespace is None:
        return f"{base}/{plural}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


@dataclass
class Kube:
    """Synchronous calls (run them in a thread from async code)."""

    api: kube_client.ApiClient

    @classmethod
    def connect(cls, kubeconfig: str | None = None, pool_size: int = 16) -> Kube:
        """In-cluster credentials, else the kubeconfig (argument, $KUBECONFIG or ~/.kube/config)."""
        configuration = kube_client.Configuration()
        try:
            if kubeconfig is not None:
                raise kube_config.ConfigException("a kubeconfig was given")
            kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException:
            kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        return cls(kube_client.ApiClient(configuration))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, post = self.api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api.call_api(method, url, headers, body, post, _request_timeout=REQUEST_TIMEOUT_S)
            response.read()
        except kube_client.ApiException as err:
            raise KubeError(err.status or 0, f"{method} {path}: {err.reason}") from err
        except OSError as err:  # connection refused, reset, timed out
            raise KubeError(0, f"{method} {path}: {err}") from err
        text = response.data.decode() if response.data else ""
        if not 200 <= response.status < 300:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise KubeError(response.status, f"{method} {path}: {response.status} {message}")
        return json.loads(text) if text else {}

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object (created when missing)."""
        meta = manifest["metadata"]
        path = object_path(manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return self.request("PATCH", path, manifest, query, content_type="application/apply-patch+yaml")

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create one object (POST); KubeError with status 409 when it exists already."""
        path = object_path(manifest["kind"], manifest["metadata"]["namespace"])
        return self.request("POST", path, manifest, [("fieldManager", FIELD_MANAGER)])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", object_path(kind, namespace, name))
        except KubeError as err:
            if err.not_found:
                return None
            raise

    def list_objects(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace (None: all namespaces); [] when the kind is not served (CRD absent)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        try:
            items = self.request("GET", object_path(kind, namespace), query=query).get("items") or []
        except KubeError as err:
            if err.not_found:
                return []
            raise
        return [{**item, "kind": kind} for item in items]

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        path = object_path(kind, namespace, name, subresource)
        return self.request(
            "PATCH", path, patch, [("fieldManager", FIELD_MANAGER)], content_type="application/merge-patch+json"
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> dict[str, Any]:
        """Merge-patch the RLVRJob's status; 409 when the object changed since `resource_version`."""
        patch = {"metadata": {"resourceVersion": resource_version}, "status": status}
        return self.merge_patch("RLVRJob", namespace, name, patch, subresource="status")

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> bool:
        """True when a deletion was started, False when the object was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            self.request("DELETE", object_path(kind, namespace, name), body)
        except KubeError as err:
            if err.not_found:
                return False
            raise
        return True

    def close(self) -> None:
        self.api.close()
