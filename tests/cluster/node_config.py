"""Configuration files of a real worker node and of the cluster DNS (pure functions, text out).

A node is containerd + kubelet + kube-proxy inside the node's network namespace, each with its own
directories under the node's workdir, so several nodes share one machine without sharing state:
containerd's root/state/socket and runc root, the kubelet's root dir, pod log dir and cgroup root,
the CNI config and IPAM store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.cluster.network import CLUSTER_DOMAIN, REAL_POD_CIDR

CNI_BIN_DIR = Path("/usr/lib/cni")
"""Debian's containernetworking-plugins."""
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
COREDNS_HEALTH_PORT = 8080
COREDNS_READY_PORT = 8181


@dataclass(frozen=True)
class NodePaths:
    """Every path one node writes, under its own directory."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "containerd" / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy-config.yaml"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.root / "kube-proxy.kubeconfig"


def containerd_config(paths: NodePaths, sandbox_image: str) -> str:
    """containerd 1.6 config (version 2): everything under the node's directory, CRI on, cgroupfs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{paths.containerd_root}"',
            f'state = "{paths.containerd_state}"',
            # Snapshotters this machine lacks only log errors at start.
            'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
            ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
            "[grpc]",
            f'  address = "{paths.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{paths.containerd_socket}.ttrpc"',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{paths.root / "containerd" / "opt"}"',
            f"[{cri}]",
            f'  sandbox_image = "{sandbox_image}"',
            # No CAP_SYS_RESOURCE on this VM: never lower a container's oom_score_adj below containerd's.
            "  restrict_oom_score_adj = true",
            # Pod network namespaces under the node's state dir, not the shared /run/netns.
            "  netns_mounts_under_state_dir = true",
            '  stream_server_address = "127.0.0.1"',
            "  enable_selinux = false",
            "  disable_apparmor = true",
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{paths.cni_conf_dir}"',
            "  max_conf_num = 1",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            # runc's state of this node's containers only (the default /run/containerd/runc is shared).
            f'  Root = "{paths.runc_root}"',
            "",
        ]
    )


def cni_config(node_name: str, pod_cidr: str, paths: NodePaths) -> str:
    """A bridge network with host-local IPAM on the node's pod range (its own IPAM store)."""
    gateway = pod_cidr.rsplit(".", 1)[0] + ".1"
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": f"forkrl-{node_name}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Pod-to-Service traffic that lands back on the same bridge must be DNATed and
                    # un-DNATed by this node's kube-proxy rules.
                    "hairpinMode": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": pod_cidr, "gateway": gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(paths.cni_data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(
    paths: NodePaths, node_ip: str, dns_ip: str, ca_file: Path, cert_file: Path, key_file: Path, cgroup_root: str
) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(cert_file),
        "tlsPrivateKeyFile": str(key_file),
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        # cgroup v1 (hybrid) hosts: kubelet >= 1.35 refuses them unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        # Each node's pods under their own cgroup tree: a kubelet removes pod cgroups it does not know.
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "clusterDNS": [dns_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(paths.resolv_conf),
        "podLogsDir": str(paths.pod_logs),
        # A shared, busy test machine: evict only when it is really out of memory or disk.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "mergeDefaultEvictionSettings": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 40,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "enableServer": True,
        "registerNode": True,
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_config(paths: NodePaths, node_name: str) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.kube_proxy_kubeconfig)},
        "hostnameOverride": node_name,
        "mode": "iptables",
        "clusterCIDR": REAL_POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        # 0 leaves the (machine-wide) conntrack table size and timeouts as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "1s"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def corefile(kubeconfig: Path, listen_address: str) -> str:
    """Cluster DNS for cluster.local from the API, nothing forwarded (there is no upstream)."""
    return "\n".join(
        [
            ".:53 {",
            f"    bind {listen_address}",
            "    errors",
            f"    health 127.0.0.1:{COREDNS_HEALTH_PORT}",
            f"    ready 127.0.0.1:{COREDNS_READY_PORT}",
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
            f"        kubeconfig {kubeconfig}",
            "        pods insecure",
            "        fallthrough in-addr.arpa ip6.arpa",
            "        ttl 5",
            "    }",
            "    cache 5",
            "}",
            "",
        ]
    )


def pod_resolv_conf(dns_ip: str) -> str:
    """The node resolv.conf the kubelet builds pods' from (cluster DNS, cluster search domains)."""
    return f"nameserver {dns_ip}\nsearch {CLUSTER_DOMAIN}\noptions ndots:5\n"
