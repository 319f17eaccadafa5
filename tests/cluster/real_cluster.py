"""A kind-style cluster with real nodes on one machine: every node and the control plane its own host.

    with RealCluster(control_binaries, node_binaries, archives, node_count=2).start() as cluster:
        cluster.kubectl("get", "nodes")          # the admin kubeconfig, through a loopback forwarder

Hosts are network namespaces on one bridge (tests/multihost/netns.py): h0 runs etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, the cluster DNS (CoreDNS, answering at h0's address, which
every kubelet hands its pods as their nameserver) and, on demand, the KubeRay operator; h1.. are
worker nodes (tests/cluster/nodes.py). Pod ranges are routed between hosts by static routes, the
job a CNI like kindnet does on a kind cluster. Service ClusterIPs work through each node's
kube-proxy (iptables mode, inside the node's namespace). Address plan: tests/cluster/network.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.cluster import host_state, node_config
from tests.cluster.binaries import ClusterBinaries, NodeBinaries
from tests.cluster.controlplane import ControlPlane
from tests.cluster.host_state import HostState
from tests.cluster.network import NamespaceHost, node_pod_cidr, real_nodes_network
from tests.cluster.nodes import WorkerNode
from tests.multihost.netns import Hosts


class RealCluster:
    """Control plane + `node_count` real worker nodes (node-1, node-2, ...)."""

    def __init__(
        self,
        control_binaries: ClusterBinaries,
        node_binaries: NodeBinaries,
        archives: Sequence[tuple[Path, str]],
        sandbox_image: str,
        node_count: int = 2,
    ) -> None:
        if node_count < 1:
            raise ValueError(f"node_count: at least 1, got {node_count}")
        self.control_binaries = control_binaries
        self.node_binaries = node_binaries
        self.archives = list(archives)
        self.sandbox_image = sandbox_image
        self.node_count = node_count
        self.hosts: Hosts | None = None
        self.control_plane: ControlPlane | None = None
        self.nodes: list[WorkerNode] = []
        self.host_state: HostState | None = None
        self.workdir: Path | None = None
        self.phase_seconds: dict[str, float] = {}
        self.base_image = ""
        """The reference of the Debian + Python image pods run (tests/cluster/image.py), once known."""

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> RealCluster:
        start = time.monotonic()
        try:
            self.host_state = HostState.record()
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{host_state.WORKDIR_PREFIX}{os.getpid()}-"))
            self.hosts = Hosts.create(1 + self.node_count)
            cp_host = self.hosts[0]
            self._write_cp_resolv_conf(cp_host.namespace, cp_host.address)
            self.control_plane = ControlPlane(
                self.control_binaries,
                workdir=self.workdir / "control-plane",
                host=NamespaceHost(cp_host.namespace, cp_host.address),
                network=real_nodes_network(cp_host.address),
            ).start(controller_manager=True)
            self.control_plane.start_scheduler()
            self._start_dns()
            self._route_pod_ranges()
            self.phase_seconds["control plane"] = time.monotonic() - start
            for index in range(1, self.node_count + 1):
                self.nodes.append(self._make_node(index))
            for node in self.nodes:
                node.start(self.archives)
            self.phase_seconds["nodes"] = time.monotonic() - start - self.phase_seconds["control plane"]
            self.phase_seconds["image import"] = max(n.startup_seconds.get("image import", 0.0) for n in self.nodes)
        except BaseException:
            self.stop()
            raise
        self.phase_seconds["cluster up"] = time.monotonic() - start
        return self

    def stop(self) -> None:
        """Nodes first (pods, mounts, cgroups), then the control plane and the hosts; then the
        machine-wide settings as they were before. Safe to call twice."""
        for node in reversed(self.nodes):
            node.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        if self.hosts is not None:
            self.hosts.delete()
        if self.workdir is not None:
            host_state.unmount_all(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.host_state is not None:
            self.host_state.restore()

    def __enter__(self) -> RealCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- clients
    @property
    def cp(self) -> ControlPlane:
        assert self.control_plane is not None, "start() first"
        return self.control_plane

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return self.cp.kubectl_json(*args)

    def node(self, name: str) -> WorkerNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")

    @property
    def dns_ip(self) -> str:
        assert self.hosts is not None
        return self.hosts[0].address

    # ----------------------------------------------------------------- internals
    def _make_node(self, index: int) -> WorkerNode:
        assert self.hosts is not None and self.workdir is not None
        host = self.hosts[index]
        name = f"node-{index}"
        return WorkerNode(
            name=name,
            host=NamespaceHost(host.namespace, host.address),
            index=index,
            workdir=self.workdir / name,
            binaries=self.node_binaries,
            control_plane=self.cp,
            pod_cidr=node_pod_cidr(index),
            dns_ip=self.dns_ip,
            sandbox_image=self.sandbox_image,
            labels={"forkrl.dev/test-node": name},
        )

    def _write_cp_resolv_conf(self, namespace: str, address: str) -> None:
        # `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: components on
        # h0 (the KubeRay operator dialling a head Service's name) use the cluster DNS.
        etc = Path(f"/etc/netns/{namespace}")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(node_config.pod_resolv_conf(address))

    def _start_dns(self) -> None:
        cp = self.cp
        assert self.workdir is not None
        corefile = self.workdir / "Corefile"
        corefile.write_text(node_config.corefile(cp.component_kubeconfig, self.dns_ip))
        args = [str(self.node_binaries.path("coredns")), "-conf", str(corefile)]
        cp.start_component("coredns", args, f"http://127.0.0.1:{node_config.COREDNS_READY_PORT}/ready")

    def _route_pod_ranges(self) -> None:
        """Each pod range via its node's address, on every other host; forwarding on inside nodes."""
        assert self.hosts is not None
        hosts = list(self.hosts)
        for host in hosts:
            for index in range(1, self.node_count + 1):
                if index != host.index:
                    host.run(["ip", "route", "add", node_pod_cidr(index), "via", hosts[index].address])
            if host.index > 0:
                # Per-namespace settings: forwarding between the pod bridge and eth0, and bridged
                # pod traffic through this node's iptables (kube-proxy's Service rules).
                host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
                host.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])
