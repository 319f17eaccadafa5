"""Clients of a running cluster: kubectl, helm and the Python client as the admin user.

`ClusterClients` is a mixin of ControlPlane; it needs `binaries`, `kubeconfig`, `server`, `workdir`,
`pki` and `wait_for` from it.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import components
from tests.cluster.binaries import ClusterBinaries
from tests.cluster.pki import write_kubeconfig
from tests.cluster.processes import client_tls


class KubectlError(RuntimeError):
    """A kubectl or helm invocation failed; the message has the command line and its stderr."""


@dataclass(frozen=True)
class ApiResource:
    """One resource type from the API server's discovery: where its objects are and what they are called."""

    group_version: str
    plural: str
    kind: str
    namespaced: bool

    def path(self, namespace: str | None, name: str | None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        scope = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{base}{scope}/{self.plural}" + (f"/{name}" if name else "")


@dataclass(frozen=True)
class GetRequest:
    """`kubectl get RESOURCE[,RESOURCE...] [NAME] [-n NS | -A] [-l SELECTOR]`, parsed."""

    resources: tuple[str, ...]
    name: str | None
    namespace: str
    selector: str | None
    all_namespaces: bool


def parse_get(args: Sequence[str]) -> GetRequest | None:
    """The `get` forms the REST path answers; None for anything else (kubectl answers those)."""
    if not args or args[0] != "get":
        return None
    positional: list[str] = []
    options: dict[str, str] = {}
    all_namespaces = False
    values = iter(args[1:])
    for arg in values:
        if arg in ("-A", "--all-namespaces"):
            all_namespaces = True
        elif arg in ("-n", "--namespace", "-l", "--selector"):
            options[arg.lstrip("-")[:1]] = next(values, "")
        elif arg.startswith(("--namespace=", "--selector=")):
            key, value = arg[2:].split("=", 1)
            options[key[:1]] = value
        elif arg.startswith("-"):
            return None  # any other flag (-o, --raw, --show-labels, ...): kubectl
        else:
            positional.append(arg)
    if not 1 <= len(positional) <= 2 or "/" in positional[0]:
        return None
    resources = tuple(positional[0].split(","))
    name = positional[1] if len(positional) == 2 else None
    if name is not None and (len(resources) > 1 or all_namespaces or "l" in options):
        return None
    return GetRequest(resources, name, options.get("n") or "default", options.get("l"), all_namespaces)


class ClusterClients:
    binaries: ClusterBinaries
    kubeconfig: Path
    server: str
    workdir: Path
    pki: components.PkiFiles | None
    wait_for: Callable[..., float]

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses talking to this cluster: KUBECONFIG, the binaries on PATH,
        and helm's config/cache/data dirs inside the workdir."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.binaries.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(self.workdir / "helm" / kind.lower())
        return env

    def _run_tool(
        self, tool: str, args: Sequence[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries.path(tool)), *args]
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            output = f"{result.stderr.strip()}\n{result.stdout.strip()}".strip()
            raise KubectlError(f"{tool} {' '.join(args)} exited with {result.returncode}:\n{output}")
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 90.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster as the admin user."""
        return self._run_tool("kubectl", args, input, check, timeout)

    def kubectl_json(self, *args: str) -> Any:
        """`kubectl <args> -o json`, parsed. A plain `get` is answered by the API server directly (what kubectl
        would print, errors included): tests poll with it, and each kubectl process costs ~0.1 CPU-s, a
        hundred CPU-seconds over a suite run, on the cores the tests wait for."""
        request = parse_get(args)
        if request is not None and self.pki is not None:
            answer = self._rest_get(request, args)
            if answer is not None:
                return answer
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    @functools.cached_property
    def _admin_tls(self) -> ssl.SSLContext:
        assert self.pki is not None
        return client_tls(self.pki.ca_cert, self.pki.admin.cert_file, self.pki.admin.key_file)

    def _api_get(self, path: str) -> Any:
        """GET `path` as the admin user; HTTPError for a status >= 400."""
        with urllib.request.urlopen(f"{self.server}{path}", timeout=30, context=self._admin_tls) as response:
            return json.loads(response.read())

    @functools.cached_property
    def _api_resources(self) -> dict[str, ApiResource]:
        """Every name kubectl accepts for a resource type (plural, singular, short names, kind, `plural.group`),
        from discovery; the core group wins a name several groups share, as in kubectl. Deleted to rediscover."""
        group_versions = ["v1"] + [group["preferredVersion"]["groupVersion"]
                                   for group in self._api_get("/apis")["groups"]]
        names: dict[str, ApiResource] = {}
        for group_version in group_versions:
            listing = self._api_get("/api/v1" if group_version == "v1" else f"/apis/{group_version}")
            group = group_version.rpartition("/")[0]
            for entry in listing["resources"]:
                if "/" in entry["name"] or "get" not in entry.get("verbs", []):
                    continue
                resource = ApiResource(group_version, entry["name"], entry["kind"], entry["namespaced"])
                aliases = [entry["name"], entry.get("singularName") or "", entry["kind"].lower(),
                           *entry.get("shortNames", [])]
                if group:
                    aliases += [f"{alias}.{group}" for alias in aliases[:3] if alias]
                for alias in aliases:
                    if alias:
                        names.setdefault(alias, resource)
        return names

    def _rest_get(self, request: GetRequest, args: Sequence[str]) -> Any | None:
        """`request` through the API server's REST API, shaped as `kubectl get -o json` prints it; None where a
        resource name is unknown even after a fresh discovery (kubectl then answers, or explains)."""
        if any(name.lower() not in self._api_resources for name in request.resources):
            del self._api_resources  # a CRD installed since the last discovery
            if any(name.lower() not in self._api_resources for name in request.resources):
                return None
        known = self._api_resources
        query = f"?labelSelector={urllib.parse.quote(request.selector)}" if request.selector else ""
        namespace = None if request.all_namespaces else request.namespace
        items: list[dict[str, Any]] = []
        try:
            for name in request.resources:
                resource = known[name.lower()]
                answer = self._api_get(resource.path(namespace, request.name) + query)
                if request.name is not None:
                    return answer
                for item in answer.get("items", []):  # a list's items carry no kind: kubectl adds it
                    items.append({"apiVersion": resource.group_version, "kind": resource.kind, **item})
        except urllib.error.HTTPError as error:
            try:
                status = json.loads(error.read())
                message = f"Error from server ({status.get('reason', error.code)}): {status.get('message', '')}"
            except ValueError:
                message = f"Error from server: HTTP {error.code}"
            raise KubectlError(f"kubectl {' '.join(args)} -o json exited with 1:\n{message}") from None
        except OSError as error:
            raise KubectlError(f"kubectl {' '.join(args)} -o json exited with 1:\n{error}") from None
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}

    def apply(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]], *args: str) -> str:
        """`kubectl apply -f -` of a YAML string or of object(s); returns kubectl's output."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = yaml.safe_dump(dict(manifest))
        else:
            text = yaml.safe_dump_all([dict(obj) for obj in manifest])
        return self.kubectl("apply", "-f", "-", *args, input=text).stdout

    def helm(self, *args: str, check: bool = True, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster (isolated helm home under the workdir)."""
        return self._run_tool("helm", args, None, check, timeout)

    def server_version(self) -> dict[str, str]:
        """GET /version from the apiserver (authenticated as admin)."""
        assert self.pki is not None, "start() first"
        tls = client_tls(self.pki.ca_cert, self.pki.admin.cert_file, self.pki.admin.key_file)
        with urllib.request.urlopen(f"{self.server}/version", timeout=10, context=tls) as response:
            return json.loads(response.read())

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for the admin user (the Python client, imported lazily)."""
        from kubernetes import config as kube_config

        return kube_config.new_client_from_config(config_file=str(self.kubeconfig))

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create a namespace and wait for its `default` ServiceAccount (pods are rejected until
        the serviceaccount controller has made it)."""
        self.kubectl("create", "namespace", name)
        def has_default_account() -> bool:
            try:
                self.kubectl_json("get", "serviceaccount", "default", "-n", name)
            except KubectlError:
                return False
            return True

        self.wait_for(has_default_account, f"ServiceAccount default in namespace {name}", timeout)

    def service_account_kubeconfig(self, namespace: str, name: str, duration: str = "1h") -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` with a freshly issued
        token (TokenRequest, signed by the service-account key), e.g. to run an operator with
        exactly the RBAC its chart grants. Written to `<workdir>/sa-<namespace>-<name>.kubeconfig`."""
        assert self.pki is not None, "start() first"
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        return write_kubeconfig(path, self.server, self.pki.ca_cert, token=token, user=user)

