"""Clients of a running cluster: kubectl, helm and the Python client as the admin user.

`ClusterClients` is a mixin of ControlPlane; it needs `binaries`, `kubeconfig`, `server`, `workdir`,
`pki` and `wait_for` from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import components
from tests.cluster.binaries import ClusterBinaries
from tests.cluster.pki import write_kubeconfig
from tests.cluster.processes import client_tls


class KubectlError(RuntimeError):
    """A kubectl or helm invocation failed; the message has the command line and its stderr."""


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
        """`kubectl <args> -o json`, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

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
        self.wait_for(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            f"ServiceAccount default in namespace {name}",
            timeout,
        )

    def service_account_kubeconfig(self, namespace: str, name: str, duration: str = "1h") -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` with a freshly issued
        token (TokenRequest, signed by the service-account key), e.g. to run an operator with
        exactly the RBAC its chart grants. Written to `<workdir>/sa-<namespace>-<name>.kubeconfig`."""
        assert self.pki is not None, "start() first"
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        return write_kubeconfig(path, self.server, self.pki.ca_cert, token=token, user=user)

