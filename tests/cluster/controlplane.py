"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd + kube-apiserver, plus on demand
kube-controller-manager, kube-scheduler, kwok (simulated nodes and kubelets) and the KubeRay operator.

    with ControlPlane(build_binaries()).start() as cluster:
        cluster.kubectl("get", "namespaces")

Every component is a child process logging to `<workdir>/logs/<name>.log`; errors carry the tail
of that log. stop() (also on `with` exit) terminates every process group and removes the workdir.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.cluster import components
from tests.cluster.binaries import ClusterBinaries
from tests.cluster.clients import ClusterClients, KubectlError
from tests.cluster.network import APISERVER_PORT, LOOPBACK, ClusterNetwork, NamespaceHost
from tests.cluster.pki import (
    APISERVER_DNS_NAMES,
    CertificateAuthority,
    write_kubeconfig,
    write_service_account_keys,
)
from tests.cluster.processes import (
    ComponentError,
    ManagedProcess,
    client_tls,
    free_ports,
    http_ok,
    insecure_tls,
    wait_until,
)
from tests.multihost.forward import Forwarder

__all__ = ["ControlPlane", "KubectlError"]

# Start-up limits (seconds) sized for 2 busy cores; a healthy start takes a fraction of them.
ETCD_READY_TIMEOUT = 30.0
APISERVER_READY_TIMEOUT = 90.0
COMPONENT_READY_TIMEOUT = 60.0
# KubeRay's CRDs, as copied from the ray-operator module by build.sh.
KUBERAY_CRDS = ("rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io")
# kwok stage configs (copied from the kwok module by build.sh): node init + lease heartbeat,
# and the "fast" pod stages (Pending -> Running/Ready, Job pods complete, deletions finalised).
KWOK_STAGES = (
    "node-initialize.yaml",
    "node-heartbeat-with-lease.yaml",
    "pod-ready.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
)


# Control planes not yet stopped; stopped at interpreter exit so no etcd or apiserver outlives
# a test run that ended without teardown (e.g. KeyboardInterrupt during a fixture).
_RUNNING: weakref.WeakSet[ControlPlane] = weakref.WeakSet()


@atexit.register
def _stop_running_control_planes() -> None:
    for cluster in list(_RUNNING):
        cluster.stop()


class ControlPlane(ClusterClients):
    """etcd + kube-apiserver with generated PKI and an admin (system:masters) kubeconfig.

    By default every component runs on the root namespace's loopback. With `host`, they run inside
    that network namespace, the apiserver serves `network`'s ranges on the host's address (where
    nodes reach it: `node_server`), and this process reaches it through a loopback forwarder
    (`server`), so kubectl, helm and the Python client work unchanged.
    """

    def __init__(
        self,
        binaries: ClusterBinaries,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        host: NamespaceHost | None = None,
        network: ClusterNetwork = LOOPBACK,
    ) -> None:
        self.binaries = binaries
        self.host = host
        self.network = network
        self._forwarder: Forwarder | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="forkrl-k8s-")) if workdir is None else workdir
        self.keep_workdir = keep_workdir or os.environ.get("FORKRL_K8S_KEEP_WORKDIR") == "1"
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.component_kubeconfig = self.kubeconfig
        """The admin kubeconfig as components next to the apiserver use it (its own URL in a namespace)."""
        self.server = ""
        self.pki: components.PkiFiles | None = None
        self.ca: CertificateAuthority | None = None
        """Issues more identities (nodes' kubelets and kube-proxies) after start()."""
        self.processes: dict[str, ManagedProcess] = {}
        self.startup_seconds: dict[str, float] = {}
        self.kwok_nodes: list[str] = []
        self._kuberay_crds_installed = False

    # ----------------------------------------------------------------- lifecycle
    def start(self, controller_manager: bool = True) -> ControlPlane:
        """Start etcd and the apiserver (and the controller manager unless told not to)."""
        _RUNNING.add(self)
        try:
            etcd_port, etcd_peer_port, apiserver_port = free_ports(3)
            if self.host is not None:
                apiserver_port = APISERVER_PORT
                self._forwarder = Forwarder(self.host.namespace, "127.0.0.1", apiserver_port)
                self.server = f"https://127.0.0.1:{self._forwarder.port}"
            else:
                self.server = f"https://127.0.0.1:{apiserver_port}"
            self.pki = self._write_pki()
            write_kubeconfig(self.kubeconfig, self.server, self.pki.ca_cert, client=self.pki.admin)
            if self.host is not None:
                self.component_kubeconfig = self.workdir / "component.kubeconfig"
                write_kubeconfig(
                    self.component_kubeconfig, f"https://127.0.0.1:{apiserver_port}", self.pki.ca_cert,
                    client=self.pki.admin,
                )
            etcd = self._spawn(
                "etcd",
                components.etcd_args(self.binaries.path("etcd"), self.workdir / "etcd", etcd_port, etcd_peer_port),
            )
            self._wait_ready(
                "etcd", lambda: self._probe(lambda: http_ok(f"http://127.0.0.1:{etcd_port}/health", expect=b'"true"')),
                etcd,
            )
            apiserver = self._spawn(
                "kube-apiserver",
                components.apiserver_args(
                    self.binaries.path("kube-apiserver"),
                    self.pki,
                    etcd_port,
                    apiserver_port,
                    self._dir("apiserver"),
                    self.network,
                ),
            )
            tls = client_tls(self.pki.ca_cert, self.pki.admin.cert_file, self.pki.admin.key_file)
            self._wait_ready(
                "kube-apiserver",
                lambda: http_ok(f"{self.server}/readyz", context=tls),
                apiserver,
                timeout=APISERVER_READY_TIMEOUT,
            )
            if controller_manager:
                self.start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every component (last started first) and remove the workdir. Safe to call twice."""
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        if self._forwarder is not None:
            self._forwarder.close()
        _RUNNING.discard(self)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- optional components
    def start_controller_manager(self) -> None:
        """Garbage collector, namespace, serviceaccount(-token) and workload controllers, and the endpoint
        controllers when the network's pods have publishable addresses."""
        if "kube-controller-manager" in self.processes:
            return
        assert self.pki is not None, "start() first"
        (port,) = free_ports(1)
        args = components.controller_manager_args(
            self.binaries.path("kube-controller-manager"),
            self.pki,
            self.component_kubeconfig,
            port,
            self._dir("kube-controller-manager"),
            self.network,
        )
        self._start_with_health("kube-controller-manager", args, f"https://127.0.0.1:{port}/healthz")

    def start_scheduler(self) -> None:
        if "kube-scheduler" in self.processes:
            return
        (port,) = free_ports(1)
        args = components.scheduler_args(
            self.binaries.path("kube-scheduler"), self.component_kubeconfig, port, self._dir("kube-scheduler")
        )
        self._start_with_health("kube-scheduler", args, f"https://127.0.0.1:{port}/healthz")

    def start_kwok(self) -> None:
        """kwok simulates kubelets for nodes annotated kwok.x-k8s.io/node=fake (see add_kwok_node)."""
        if "kwok" in self.processes:
            return
        stages = [self.binaries.kwok_stage_dir / name for name in KWOK_STAGES]
        if missing := [str(path) for path in stages if not path.is_file()]:
            raise ComponentError(f"kwok stage configs missing (re-run tests/cluster/build.sh): {missing}")
        (port,) = free_ports(1)
        args = components.kwok_args(self.binaries.path("kwok"), self.component_kubeconfig, stages, port)
        self._start_with_health("kwok", args, f"http://127.0.0.1:{port}/healthz", tls=None)

    def install_kuberay_crds(self) -> None:
        """Apply the RayCluster/RayJob/RayService CRDs (once) and wait until they are served."""
        if self._kuberay_crds_installed:
            return
        crd_dir = self.binaries.kuberay_crd_dir
        if not (crd_dir / "ray.io_rayjobs.yaml").is_file():
            raise ComponentError(f"KubeRay CRDs missing from {crd_dir} (re-run tests/cluster/build.sh)")
        # Server-side apply: the RayJob CRD is too large for client-side apply's annotation.
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in KUBERAY_CRDS])
        self._kuberay_crds_installed = True

    def start_kuberay(self) -> None:
        """The KubeRay operator (CRDs installed first), watching all namespaces."""
        if "kuberay" in self.processes:
            return
        self.install_kuberay_crds()
        metrics_port, probe_port = free_ports(2)
        args = components.kuberay_args(self.binaries.path("kuberay"), metrics_port, probe_port)
        self._start_with_health("kuberay", args, f"http://127.0.0.1:{probe_port}/readyz", tls=None)

    def start_component(self, name: str, args: list[str], health_url: str) -> None:
        """Start one more process next to the control plane (in its namespace, if any) with the
        component kubeconfig in $KUBECONFIG, and wait until `health_url` answers 200 there."""
        self._start_with_health(name, args, health_url, tls=None)

    def stop_component(self, name: str) -> None:
        """Stop one optional component (e.g. "kuberay") so a later start_*() starts it afresh."""
        if name in ("etcd", "kube-apiserver"):
            raise ValueError(f"{name} is the control plane itself; use stop()")
        process = self.processes.pop(name, None)
        if process is not None:
            process.stop()

    def add_kwok_node(
        self,
        name: str,
        cpu: str = "32",
        memory: str = "256Gi",
        gpus: int = 0,
        pods: int = 110,
        labels: Mapping[str, str] | None = None,
        wait_ready: bool = True,
    ) -> dict[str, Any]:
        """Create a Node that kwok keeps Ready, advertising cpu/memory/pods and `gpus` nvidia.com/gpu.

        The nodes carry no taint: every node of this cluster is simulated, so ordinary pods
        (KubeRay's included) schedule onto them without tolerations.
        """
        resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {components.KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **({"nvidia.com/gpu.present": "true"} if gpus else {}),
                    **(labels or {}),
                },
            },
            "spec": {},
            "status": {"allocatable": resources, "capacity": resources},
        }
        self.kubectl("create", "-f", "-", input=json.dumps(node))
        self.kwok_nodes.append(name)
        if wait_ready:
            self.kubectl("wait", "--for=condition=Ready", "--timeout=60s", f"node/{name}")
        return self.kubectl_json("get", "node", name)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
        """Poll `condition` while every component stays alive; returns the seconds waited. Polls back off to
        one every 2 s: a condition is usually a kubectl call (~0.13 CPU-s, measured over a suite run), and the
        long waits (a job's pods starting) are for the very cores those calls take."""
        return wait_until(condition, what, timeout, watched=list(self.processes.values()), interval=0.25,
                          max_interval=2.0)

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    def logs(self, name: str, lines: int = 40) -> str:
        return self.processes[name].log_tail(lines)

    @property
    def node_server(self) -> str:
        """The apiserver URL as nodes and pods dial it (the host's address; `server` elsewhere)."""
        if self.host is None:
            return self.server
        return f"https://{self.host.address}:{APISERVER_PORT}"

    # ----------------------------------------------------------------- internals
    def _probe(self, check: Callable[[], bool]) -> bool:
        """Run a health check from where the components listen (inside the host, if any)."""
        return check() if self.host is None else self.host.run(check)

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_pki(self) -> components.PkiFiles:
        ca = self.ca = CertificateAuthority(self.pki_dir)
        ips = ["127.0.0.1", self.network.first_service_ip] + ([self.host.address] if self.host else [])
        serving_cert, serving_key = ca.issue_serving("apiserver", ips, APISERVER_DNS_NAMES)
        sa_key, sa_pub = write_service_account_keys(self.pki_dir)
        admin = ca.issue_client("admin", user="forkrl-admin", groups=("system:masters",))
        front_proxy_ca = CertificateAuthority(self.pki_dir, "forkrl-test-front-proxy-ca", stem="front-proxy-ca")
        front_proxy_client = front_proxy_ca.issue_client("front-proxy-client", user="front-proxy-client")
        return components.PkiFiles(
            ca_cert=ca.cert_file,
            ca_key=ca.key_file,
            apiserver_cert=serving_cert,
            apiserver_key=serving_key,
            service_account_key=sa_key,
            service_account_pub=sa_pub,
            admin=admin,
            front_proxy_ca_cert=front_proxy_ca.cert_file,
            front_proxy_client=front_proxy_client,
            kubelet_client=ca.issue_client(
                "apiserver-kubelet-client", user="kube-apiserver-kubelet-client", groups=("system:masters",)
            ),
        )

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.component_kubeconfig)
        # A private HOME keeps components from reading the developer's ~/.kube or ~/.kwok config.
        env["HOME"] = str(self._dir("home"))
        argv = args if self.host is None else self.host.wrap(args)
        process = ManagedProcess(name, argv, self.log_dir / f"{name}.log", env=env, cwd=self.workdir)
        self.processes[name] = process
        process.start()
        return process

    def _wait_ready(
        self, name: str, probe: Callable[[], bool], process: ManagedProcess, timeout: float = COMPONENT_READY_TIMEOUT
    ) -> None:
        start = time.monotonic()
        wait_until(probe, f"{name} health", timeout, watched=[process])
        self.startup_seconds[name] = time.monotonic() - start

    def _start_with_health(self, name: str, args: list[str], url: str, tls: Any = "insecure") -> None:
        context = insecure_tls() if tls == "insecure" else tls
        process = self._spawn(name, args)
        self._wait_ready(name, lambda: self._probe(lambda: http_ok(url, context=context)), process)
