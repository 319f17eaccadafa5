"""Address and interface selection for cross-host traffic."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from forkrl.rollout.network import (
    LOCAL_BIND_HOST,
    interface_of,
    resolve,
    socket_ifname_env,
    source_address_towards,
)


def _table() -> dict[str, list]:
    v4 = socket.AF_INET

    def entry(family: int, address: str) -> SimpleNamespace:
        return SimpleNamespace(family=family, address=address)

    return {
        "lo": [entry(v4, "127.0.0.1"), entry(socket.AF_INET6, "::1")],
        "eth0": [entry(v4, "198.18.0.3"), entry(socket.AF_INET6, "fe80::1")],
        "ib0": [entry(v4, "198.19.4.1")],
    }


def test_interface_is_the_one_holding_the_address() -> None:
    assert interface_of("198.18.0.3", _table()) == "eth0"
    assert interface_of("198.19.4.1", _table()) == "ib0"
    assert interface_of("127.0.0.1", _table()) == "lo"
    assert interface_of("198.18.0.99", _table()) is None


def test_socket_ifname_follows_the_address_unless_the_operator_set_it() -> None:
    assert socket_ifname_env("198.18.0.3", {}, _table()) == {"GLOO_SOCKET_IFNAME": "eth0",
                                                              "NCCL_SOCKET_IFNAME": "eth0"}
    # A cluster that pins NCCL to its InfiniBand interface keeps that choice; gloo still follows the address.
    assert socket_ifname_env("198.18.0.3", {"NCCL_SOCKET_IFNAME": "ib0"}, _table()) == {"GLOO_SOCKET_IFNAME": "eth0"}
    assert socket_ifname_env("198.18.0.99", {}, _table()) == {}


def test_the_local_source_address_towards_loopback_is_loopback() -> None:
    assert source_address_towards(LOCAL_BIND_HOST) == LOCAL_BIND_HOST
    assert interface_of(LOCAL_BIND_HOST) is not None  # this machine's real table has its loopback


def test_resolve_keeps_literals_and_names_unknown_hosts() -> None:
    assert resolve("198.18.0.7") == "198.18.0.7"
    with pytest.raises(OSError):
        resolve("no-such-host.invalid")
