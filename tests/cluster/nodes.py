"""A real worker node: containerd, kubelet and kube-proxy in one host's network namespace.

    node = WorkerNode("node-1", host, index=1, workdir=..., binaries=..., control_plane=cp, images=[...])
    node.start()          # containerd up, images imported, kubelet registered and Ready, kube-proxy synced
    node.stop()           # every pod process killed, mounts and cgroups removed

The node's daemons run under `nsenter --net` (not `ip netns exec`): they join the node's network
namespace but stay in the machine's mount namespace, so the kubelet's volume mounts and containerd's
rootfs mounts see each other, as on a real machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import host_state, node_config
from tests.cluster.binaries import NodeBinaries
from tests.cluster.controlplane import ControlPlane
from tests.cluster.network import NamespaceHost
from tests.cluster.pki import write_kubeconfig
from tests.cluster.processes import ComponentError, ManagedProcess, http_ok, wait_until

NODE_READY_TIMEOUT = 120.0
DAEMON_READY_TIMEOUT = 60.0


@dataclass
class WorkerNode:
    name: str
    host: NamespaceHost
    index: int
    """1-based: the node's pod range is network.node_pod_cidr(index)."""
    workdir: Path
    binaries: NodeBinaries
    control_plane: ControlPlane
    pod_cidr: str
    dns_ip: str
    sandbox_image: str
    labels: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def paths(self) -> node_config.NodePaths:
        return node_config.NodePaths(self.workdir)

    @property
    def cgroup_root(self) -> str:
        return f"{host_state.CGROUP_PREFIX}{os.getpid()}-{self.name}"

    # ----------------------------------------------------------------- lifecycle
    def start_containerd(self) -> None:
        paths = self.paths
        for directory in (paths.containerd_root, paths.containerd_state, paths.cni_conf_dir, paths.cni_data_dir,
                          paths.kubelet_root, paths.pod_logs, paths.runc_root):
            directory.mkdir(parents=True, exist_ok=True)
        paths.containerd_config.write_text(node_config.containerd_config(paths, self.sandbox_image))
        (paths.cni_conf_dir / "10-forkrl.conflist").write_text(node_config.cni_config(self.name, self.pod_cidr, paths))
        process = self._spawn("containerd", ["/usr/bin/containerd", "--config", str(paths.containerd_config)])
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, process)

    def import_images(self, archives: Sequence[tuple[Path, str]]) -> None:
        start = time.monotonic()
        for path, ref in archives:
            self.ctr("images", "import", "--no-unpack", str(path), timeout=300)
            if ref not in self.ctr("images", "list", "-q").stdout.split():
                raise ComponentError(f"{self.name}: importing {path} did not create image {ref}")
        self.startup_seconds["image import"] = time.monotonic() - start

    def start_kubelet(self) -> None:
        paths = self.paths
        cp = self.control_plane
        ca = cp.ca
        assert ca is not None, "the control plane must be started first"
        client = ca.issue_client(f"kubelet-{self.name}", user=f"system:node:{self.name}", groups=("system:nodes",))
        serving_cert, serving_key = ca.issue_serving(f"kubelet-serving-{self.name}", [self.host.address], (self.name,))
        write_kubeconfig(paths.kubelet_kubeconfig, cp.node_server, ca.cert_file, client=client)
        paths.resolv_conf.write_text(node_config.pod_resolv_conf(self.dns_ip))
        paths.kubelet_config.write_text(
            node_config.kubelet_config(
                paths, self.host.address, self.dns_ip, ca.cert_file, serving_cert, serving_key, self.cgroup_root
            )
        )
        host_state.make_cgroup_root(self.cgroup_root)
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        args = [
            str(self.binaries.path("kubelet")),
            f"--config={paths.kubelet_config}",
            f"--kubeconfig={paths.kubelet_kubeconfig}",
            f"--root-dir={paths.kubelet_root}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.host.address}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=1",
        ]
        process = self._spawn("kubelet", args)
        self._wait("kubelet", lambda: self._node_ready(), process, timeout=NODE_READY_TIMEOUT)

    def start_kube_proxy(self) -> None:
        paths = self.paths
        cp = self.control_plane
        ca = cp.ca
        assert ca is not None, "the control plane must be started first"
        client = ca.issue_client(f"kube-proxy-{self.name}", user="system:kube-proxy")
        write_kubeconfig(paths.kube_proxy_kubeconfig, cp.node_server, ca.cert_file, client=client)
        paths.kube_proxy_config.write_text(node_config.kube_proxy_config(paths, self.name))
        args = [str(self.binaries.path("kube-proxy")), f"--config={paths.kube_proxy_config}", "--v=1"]
        process = self._spawn("kube-proxy", args)
        url = f"http://127.0.0.1:{node_config.KUBE_PROXY_HEALTHZ_PORT}/healthz"
        self._wait("kube-proxy", lambda: self.host.run(lambda: http_ok(url)), process)

    def start(self, archives: Sequence[tuple[Path, str]]) -> WorkerNode:
        try:
            self.start_containerd()
            self.import_images(archives)
            self.start_kubelet()
            self.start_kube_proxy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the daemons, then kill whatever of the node outlived them (pods, shims) and remove
        its mounts and cgroups. Safe to call twice."""
        for name in ("kube-proxy", "kubelet"):
            if name in self.processes:
                self.processes[name].stop(grace_seconds=5)
        host_state.kill_cgroup(self.cgroup_root)
        if "containerd" in self.processes:
            self.processes["containerd"].stop(grace_seconds=5)
        host_state.kill_pids(host_state.processes_mentioning(str(self.paths.containerd_socket)))
        host_state.unmount_all(self.workdir)

    def kill(self) -> None:
        """The machine losing power: SIGKILL the daemons and every pod process at once."""
        for process in self.processes.values():
            if process.running() and process.pid is not None:
                host_state.kill_pids([process.pid])
        self.stop()

    # ----------------------------------------------------------------- helpers
    def ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = ["/usr/bin/ctr", "--address", str(self.paths.containerd_socket), "--namespace", "k8s.io", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ComponentError(f"{self.name}: {' '.join(command)} failed: {result.stderr.strip()}")
        return result

    def logs(self, name: str, lines: int = 40) -> str:
        return self.processes[name].log_tail(lines)

    def _node_ready(self) -> bool:
        result = self.control_plane.kubectl("get", "node", self.name, "-o",
                                            "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return result.returncode == 0 and result.stdout.strip() == "True"

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
        }
        argv = ["/usr/bin/nsenter", f"--net=/run/netns/{self.host.namespace}", *args]
        log_dir = self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(f"{self.name}/{name}", argv, log_dir / f"{name}.log", env=env, cwd=self.workdir)
        self.processes[name] = process
        process.start()
        return process

    def _wait(
        self, name: str, probe: Callable[[], bool], process: ManagedProcess, timeout: float = DAEMON_READY_TIMEOUT
    ) -> None:
        start = time.monotonic()
        wait_until(probe, f"{self.name} {name} ready", timeout, watched=[process])
        self.startup_seconds[name] = time.monotonic() - start


def check_node_tools() -> list[str]:
    """What this machine lacks to run real nodes (empty when it has everything)."""
    missing = [tool for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "iptables",
                                 "conntrack") if shutil.which(tool) is None]
    missing += [str(p) for p in (node_config.CNI_BIN_DIR / "bridge", node_config.CNI_BIN_DIR / "host-local",
                                 node_config.CNI_BIN_DIR / "portmap") if not p.exists()]
    if os.geteuid() != 0:
        missing.append("root")
    return missing
