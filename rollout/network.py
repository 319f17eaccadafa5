"""Addresses and interfaces for traffic between hosts (learner rendezvous, weight sync).

Nothing here assumes a shared loopback: a rank advertises the address other hosts reach it at (its
pod IP, its Ray node IP), and a receiver binds its collective transport to the local address that
routes to the sender. gloo and NCCL pick an interface from the hostname unless told otherwise, which
on a multi-homed node (or a container whose hostname resolves to 127.0.1.1) is the wrong one, so the
interface is derived from the address and exported as GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME unless
the operator of the cluster has already set them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence

import psutil

LOCAL_BIND_HOST = "127.0.0.1"
"""Where services that forkrl starts on one machine listen by default (embedded mode, `--host` flags).
Every cross-host address comes from the spec, the Ray node IP or the pod IP instead."""
POD_IP_ENV = "FORKRL_POD_IP"
"""Set from the downward API (status.podIP) in every pod the operator creates."""
RENDEZVOUS_PORT_ENV = "FORKRL_RENDEZVOUS_PORT"
"""Port of the learner world's TCP store on rank 0 (unset or 0: any free port)."""
WEIGHT_SYNC_PORT_ENV = "FORKRL_WEIGHT_SYNC_PORT"
"""Base port of the weight-sync stores: stage s listens on base + s (unset or 0: any free port)."""
SOCKET_IFNAME_ENVS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve(host: str) -> str:
    """An IPv4 literal for `host` (a literal stays as it is, a name is resolved once)."""
    if _is_ip(host):
        return host
    return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def source_address_towards(remote: str, port: int = 9) -> str:
    """The local address the kernel would use to reach `remote` (a UDP connect sends no packet)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        sock.connect((resolve(remote), port))
        return str(sock.getsockname()[0])


def interface_of(address: str, interfaces: Mapping[str, Sequence] | None = None) -> str | None:
    """The name of the local interface holding `address` (None when no interface has it).

    interfaces: psutil.net_if_addrs()-shaped mapping (tests pass their own).
    """
    table = psutil.net_if_addrs() if interfaces is None else interfaces
    for name, addresses in table.items():
        for entry in addresses:
            if getattr(entry, "family", None) == socket.AF_INET and entry.address == address:
                return name
    return None


def socket_ifname_env(address: str, environ: Mapping[str, str] | None = None,
                      interfaces: Mapping[str, Sequence] | None = None) -> dict[str, str]:
    """GLOO/NCCL_SOCKET_IFNAME for the interface holding `address`; variables already set win."""
    env = os.environ if environ is None else environ
    name = interface_of(address, interfaces)
    if name is None:
        return {}
    return {key: name for key in SOCKET_IFNAME_ENVS if not env.get(key)}


def export_socket_ifname(address: str) -> dict[str, str]:
    """Set (in this process) the socket interface variables for `address`; returns what was set."""
    chosen = socket_ifname_env(address)
    os.environ.update(chosen)
    return chosen


def pod_address() -> str | None:
    """The pod IP given by the downward API, when running in a pod the operator made."""
    value = os.environ.get(POD_IP_ENV, "").strip()
    return value or None


def bind_port(address: str, port: int = 0) -> int:
    """Check that `address:port` can be bound here and return the port (port 0: a free one).

    Only for ports that something else opens right after and that a race would not harm; prefer
    letting the listener bind port 0 itself (as the TCP stores here do) where that is possible.
    """
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((address, port))
        return int(sock.getsockname()[1])
