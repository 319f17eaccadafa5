"""Simulated hosts: one Linux network namespace per host, joined by veth pairs on a bridge.

    with Hosts.create(4) as hosts:          # h0..h3 at 198.18.0.1..4
        hosts[1].popen(["python", "-m", ...])
        hosts[2].cut_link(); hosts[2].restore_link()
        hosts[3].kill_all()                  # the host "disappears"

Layout (nothing touches the root namespace's interfaces or routes):

    netns frkmh<pid>x<set>-br:  br0 (bridge) + vh0..vhN-1 (veth ends)
    netns frkmh<pid>x<set>-h<i>: lo (its own 127.0.0.1) + eth0 198.18.0.<i+1>/24 (the other veth end)

Addresses come from 198.18.0.0/15 (RFC 2544, reserved for network testing) and exist only on
interfaces inside these namespaces; no namespace has a default route, so nothing can leave the
machine. Namespace names carry the creating process's PID: `cleanup_stale()` removes those of
processes that are gone (a crashed earlier run), killing whatever still runs inside them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "frkmh"
SUBNET_PREFIX = "198.18.0."
PREFIX_LEN = 24
_NAME = re.compile(rf"^{PREFIX}(\d+)(x\d+)?-(br|h\d+)$")
_sets_made = itertools.count()


class HarnessUnavailable(RuntimeError):
    """Network namespaces cannot be made here (no root, no `ip`, or a kernel that refuses)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def list_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    out = _ip("netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a PID file's owner, a namespace's creator)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(name: str) -> None:
    """Kill every process inside `name`, then delete it (its veth ends go with it)."""
    for _ in range(50):
        pids = namespace_pids(name)
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    shutil.rmtree(f"/tmp/{name}-ray", ignore_errors=True)  # a Ray node's session dir (ray_cluster.py)


def cleanup_stale() -> list[str]:
    """Delete the namespaces of harness runs whose process is gone. Returns the names removed."""
    removed = []
    for name in list_namespaces():
        match = _NAME.match(name)
        if match and not pid_alive(int(match.group(1))):
            delete_namespace(name)
            removed.append(name)
    return removed


def check_available() -> None:
    """Raise HarnessUnavailable with the reason when namespaces cannot be created here."""
    if shutil.which("ip") is None:
        raise HarnessUnavailable("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        raise HarnessUnavailable("network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    probe = f"{PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        raise HarnessUnavailable(f"`ip netns add` failed: {result.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


@dataclass
class Host:
    """One simulated host: a network namespace with its own loopback and one address on the bridge."""

    index: int
    namespace: str
    address: str
    bridge_namespace: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def bridge_port(self) -> str:
        return f"vh{self.index}"

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, argv: Sequence[str], timeout: float = 120.0, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=check,
                              env={**os.environ, **(env or {})})

    def popen(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        """Start `argv` on this host in the background (its own session), output to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(self.command(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                       env={**os.environ, **(env or {})}, start_new_session=True)
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        return namespace_pids(self.namespace)

    def kill_all(self) -> None:
        """SIGKILL every process on this host (the machine losing power), and reap our own children."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            _kill_pids(pids)
            time.sleep(0.1)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()

    def cut_link(self) -> None:
        """Pull the host's cable: its bridge port goes down, packets to and from it are dropped."""
        _ip("-n", self.bridge_namespace, "link", "set", self.bridge_port, "down")

    def restore_link(self) -> None:
        _ip("-n", self.bridge_namespace, "link", "set", self.bridge_port, "up")


@dataclass
class Hosts:
    """N hosts on one bridge; a context manager that deletes everything it made."""

    tag: str
    hosts: list[Host]
    bridge_namespace: str

    @classmethod
    def create(cls, count: int) -> Hosts:
        if not 1 <= count <= 200:
            raise ValueError(f"count: 1..200 hosts, got {count}")
        check_available()
        cleanup_stale()
        tag = f"{PREFIX}{os.getpid()}x{next(_sets_made)}"  # several sets may live in one process
        bridge = f"{tag}-br"
        made = cls(tag, [], bridge)
        try:
            _ip("netns", "add", bridge)
            _ip("-n", bridge, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", bridge, "link", "set", "br0", "up")
            for index in range(count):
                made.hosts.append(made._add_host(index))
        except BaseException:
            made.delete()
            raise
        return made

    def _add_host(self, index: int) -> Host:
        namespace = f"{self.tag}-h{index}"
        address = f"{SUBNET_PREFIX}{index + 1}"
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        # The veth pair is born in the bridge namespace; its peer moves straight into the host's.
        _ip("-n", self.bridge_namespace, "link", "add", f"vh{index}", "type", "veth", "peer", "name", "eth0",
            "netns", namespace)
        _ip("-n", self.bridge_namespace, "link", "set", f"vh{index}", "master", "br0")
        _ip("-n", self.bridge_namespace, "link", "set", f"vh{index}", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        # Each host resolves its own name to its own address (what a real node's /etc/hosts says).
        etc = Path(f"/etc/netns/{namespace}")
        etc.mkdir(parents=True, exist_ok=True)
        hosts_file = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        (etc / "hosts").write_text(f"{hosts_file.rstrip()}\n{address} h{index}\n")
        return Host(index, namespace, address, self.bridge_namespace)

    def add_host(self) -> Host:
        """One more host on the same bridge (a fresh machine joining)."""
        host = self._add_host(max(h.index for h in self.hosts) + 1)
        self.hosts.append(host)
        return host

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        for host in self.hosts:
            host.kill_all()
        for name in list_namespaces():
            if name.startswith(f"{self.tag}-"):
                delete_namespace(name)
        self.hosts.clear()
