"""Address plans of the test clusters and running code inside a host's network namespace.

Two plans:
- LOOPBACK: the kwok cluster. Every component on the root namespace's 127.0.0.1; Service, pod and
  node addresses are fake ones inside 127.0.0.0/8, so nothing dialled by mistake leaves the machine.
- real nodes (`real_nodes_network`): the control plane and every node are their own network
  namespace on one bridge (tests/multihost/netns.py), addresses from 198.18.0.0/15 (RFC 2544,
  reserved for network testing) that exist only inside those namespaces, with no default route:

      198.18.0.0/24      hosts: h0 = control plane (198.18.0.1), h1.. = nodes
      198.18.128.0/17    pods: node i (1-based) gets 198.18.(128+i).0/24 from its CNI config
      198.19.0.0/24      Service ClusterIPs (198.19.0.1 = `kubernetes`), DNATed by each node's kube-proxy
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class ClusterNetwork:
    """Where the control plane listens and which ranges the cluster hands out."""

    service_cidr: str
    pod_cidr: str
    apiserver_bind: str
    """kube-apiserver --bind-address inside its namespace."""
    advertise_address: str
    """The apiserver address published in the `kubernetes` Service's endpoints."""
    publish_endpoints: bool
    """Whether the apiserver keeps the `kubernetes` endpoints (needs an address pods can reach)."""

    @property
    def first_service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP (the serving certificate must name it)."""
        return str(ipaddress.ip_network(self.service_cidr).network_address + 1)


LOOPBACK = ClusterNetwork(
    service_cidr="127.128.0.0/24",
    pod_cidr="127.129.0.0/16",
    apiserver_bind="127.0.0.1",
    advertise_address="127.0.0.1",
    publish_endpoints=False,
)
REAL_SERVICE_CIDR = "198.19.0.0/24"
REAL_POD_CIDR = "198.18.128.0/17"
APISERVER_PORT = 6443
CLUSTER_DOMAIN = "cluster.local"


def real_nodes_network(control_plane_address: str) -> ClusterNetwork:
    return ClusterNetwork(
        service_cidr=REAL_SERVICE_CIDR,
        pod_cidr=REAL_POD_CIDR,
        apiserver_bind="0.0.0.0",
        advertise_address=control_plane_address,
        publish_endpoints=True,
    )


def node_pod_cidr(node_index: int) -> str:
    """The pod range of node `node_index` (1-based, as its host index in the harness)."""
    if not 1 <= node_index <= 126:
        raise ValueError(f"node_index: 1..126, got {node_index}")
    return f"198.18.{128 + node_index}.0/24"


def run_in_namespace(namespace: str, fn: Callable[[], T]) -> T:
    """Call `fn` on a short-lived thread that first joins network namespace `namespace`.

    setns(2) switches only the calling thread, and sockets belong to the namespace of the thread
    that creates them, so `fn` may open connections to addresses that exist only inside it.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@dataclass(frozen=True)
class NamespaceHost:
    """A network namespace a component runs in, with its address on the hosts' bridge."""

    namespace: str
    address: str

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace by `ip netns exec` (which also applies /etc/netns/<ns>/)."""
        return ["/usr/sbin/ip", "netns", "exec", self.namespace, *argv]

    def run(self, fn: Callable[[], T]) -> T:
        return run_in_namespace(self.namespace, fn)
