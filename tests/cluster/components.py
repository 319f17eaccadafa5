"""Command lines of the control-plane components (pure functions: paths and ports in, argv out).

Components listen on 127.0.0.1 of the namespace they run in; the apiserver binds and advertises
what its ClusterNetwork says (tests/cluster/network.py). In the kwok cluster's LOOPBACK plan even
Service, pod and node addresses are fake ones in the loopback block, so a component that dials one
by mistake never sends a packet off this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.cluster.network import LOOPBACK, ClusterNetwork
from tests.cluster.pki import ClientCredentials

# The kwok cluster's fake networks inside 127.0.0.0/8 (see the module docstring).
SERVICE_CIDR = LOOPBACK.service_cidr
POD_CIDR = LOOPBACK.pod_cidr
NODE_IP = "127.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The annotation kwok selects the nodes it simulates by.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
HEALTH_PATHS = "/healthz,/readyz,/livez,/metrics"


@dataclass(frozen=True)
class PkiFiles:
    """The files every component needs from the control plane's PKI."""

    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    service_account_key: Path
    service_account_pub: Path
    admin: ClientCredentials
    front_proxy_ca_cert: Path
    front_proxy_client: ClientCredentials
    kubelet_client: ClientCredentials
    """How the apiserver authenticates to kubelets (logs, exec, port-forward)."""


def etcd_args(binary: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(binary),
        "--name=forkrl-test",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=forkrl-test={peer}",
        "--initial-cluster-state=new",
        # Test data is thrown away: durability only costs time.
        "--unsafe-no-fsync=true",
        "--snapshot-count=10000",
        "--quota-backend-bytes=1073741824",
        "--log-level=warn",
    ]


def apiserver_args(
    binary: Path,
    pki: PkiFiles,
    etcd_port: int,
    secure_port: int,
    cert_dir: Path,
    network: ClusterNetwork = LOOPBACK,
) -> list[str]:
    # The default endpoint reconciler publishes the advertise address in the `kubernetes` Service;
    # Endpoints validation rejects 127.0.0.1, and in the kwok cluster nothing routes through it.
    reconciler = [] if network.publish_endpoints else ["--endpoint-reconciler-type=none"]
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--bind-address={network.apiserver_bind}",
        f"--advertise-address={network.advertise_address}",
        f"--secure-port={secure_port}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.apiserver_cert}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_cert}",
        # Node for kubelet-style identities, RBAC for everyone else (what `kubectl auth can-i` checks).
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={network.service_cidr}",
        # Dial kubelets (logs, exec) at their node IP: node names resolve nowhere (as on kind).
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--kubelet-client-certificate={pki.kubelet_client.cert_file}",
        f"--kubelet-client-key={pki.kubelet_client.key_file}",
        "--allow-privileged=true",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        *reconciler,
        # Request-header (front-proxy) authentication: without it every delegating component
        # (controller manager, scheduler) logs a missing CA bundle over and over.
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={pki.front_proxy_client.user}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert_file}",
        f"--proxy-client-key-file={pki.front_proxy_client.key_file}",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--event-ttl=15m",
    ]


def _kubeconfig_flags(kubeconfig: Path) -> list[str]:
    # The delegated authn/authz kubeconfigs let the component check callers of its own
    # endpoints against the apiserver instead of logging a failure per request.
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--authorization-always-allow-paths={HEALTH_PATHS}",
    ]


ENDPOINT_CONTROLLERS = ("endpoint", "endpointslice", "endpointslicemirroring")
"""Controllers that publish pod IPs as Service endpoints."""


def controller_manager_args(
    binary: Path, pki: PkiFiles, kubeconfig: Path, secure_port: int, cert_dir: Path,
    network: ClusterNetwork = LOOPBACK,
) -> list[str]:
    # Every controller that is on by default: garbage collector, namespace, serviceaccount (+ token),
    # deployment/replicaset/job, ttl-after-finished, ... and the endpoint controllers where pods have
    # addresses Endpoints may hold. kwok's pods get fake loopback addresses, which Endpoints validation
    # rejects: those controllers would retry every Service's write forever (a 422 loop that cost the kwok
    # apiserver about an eighth of its requests).
    controllers = ["*"] if network.publish_endpoints else ["*", *(f"-{name}" for name in ENDPOINT_CONTROLLERS)]
    return [
        str(binary),
        *_kubeconfig_flags(kubeconfig),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
        f"--cert-dir={cert_dir}",
        f"--controllers={','.join(controllers)}",
        f"--root-ca-file={pki.ca_cert}",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        "--use-service-account-credentials=false",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--profiling=false",
    ]


def scheduler_args(binary: Path, kubeconfig: Path, secure_port: int, cert_dir: Path) -> list[str]:
    return [
        str(binary),
        *_kubeconfig_flags(kubeconfig),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
        f"--cert-dir={cert_dir}",
        "--profiling=false",
    ]


def kwok_args(binary: Path, kubeconfig: Path, stage_files: list[Path], server_port: int) -> list[str]:
    if not stage_files:
        raise ValueError("kwok needs at least one stage config (node and pod stages); none were given")
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        *[f"--config={path}" for path in stage_files],
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--cidr={POD_CIDR}",
        f"--node-ip={NODE_IP}",
        f"--server-address=127.0.0.1:{server_port}",
        "--node-lease-duration-seconds=40",
    ]


def kuberay_args(binary: Path, metrics_port: int, probe_port: int) -> list[str]:
    return [
        str(binary),
        f"--metrics-addr=127.0.0.1:{metrics_port}",
        f"--health-probe-bind-address=127.0.0.1:{probe_port}",
        "--enable-leader-election=false",
        "--log-stdout-encoder=console",
    ]
