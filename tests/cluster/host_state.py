"""What real nodes change on the machine itself, recorded before and put back after, even after a crash.

The kubelet writes a few machine-wide kernel settings (it tunes vm.overcommit_memory and the panic
settings as a production node wants), creates /var/lib/kubelet/device-plugins (a fixed path), and a
node's pods live in cgroups and mounts outside any network namespace. Before the first node starts,
`HostState.record()` writes the original values to a file named by this process's PID; `restore()`
puts them back and removes it. A later run calls `restore_stale()` first: files and cgroups left by a
process that is gone (a crashed run) are restored and removed then.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.multihost.netns import pid_alive

STATE_DIR = Path(os.environ.get("FORKRL_TEST_STATE", Path.home() / ".cache" / "forkrl" / "tests" / "host-state"))
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
)
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "frkn"
"""Node cgroup roots are /<hierarchy>/frkn<pid>-<node>: the PID says whose they are."""
WORKDIR_PREFIX = "frknodes"
"""Node workdirs are /tmp/frknodes<pid>-*."""
_OWNED = re.compile(rf"^(?:{CGROUP_PREFIX}|{WORKDIR_PREFIX})(\d+)-")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str:
    return _sysctl_path(name).read_text().strip()


@dataclass
class HostState:
    """The machine-wide settings real nodes may change, as they were before the first node started."""

    owner_pid: int
    sysctls: dict[str, str]
    kubelet_dir_existed: bool

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.owner_pid}.json"

    @classmethod
    def record(cls) -> HostState:
        restore_stale()
        state = cls(
            owner_pid=os.getpid(),
            sysctls={name: read_sysctl(name) for name in SYSCTLS if _sysctl_path(name).exists()},
            kubelet_dir_existed=DEVICE_PLUGIN_DIR.exists(),
        )
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state.path.write_text(json.dumps(state.__dict__, indent=2))
        return state

    def changed(self) -> dict[str, tuple[str, str]]:
        """Settings that differ now: name -> (before, now)."""
        now = {name: read_sysctl(name) for name in self.sysctls}
        return {name: (self.sysctls[name], now[name]) for name in self.sysctls if now[name] != self.sysctls[name]}

    def restore(self) -> None:
        for name, value in self.sysctls.items():
            with contextlib.suppress(OSError):
                _sysctl_path(name).write_text(value)
        if not self.kubelet_dir_existed:
            shutil.rmtree(DEVICE_PLUGIN_DIR, ignore_errors=True)
        remove_root_namespace_kube_chains()
        self.path.unlink(missing_ok=True)


def remove_root_namespace_kube_chains() -> list[str]:
    """Delete KUBE-* chains from the root namespace's iptables (nodes keep theirs in their own
    namespaces; this catches anything that escaped). Returns the chains removed."""
    if shutil.which("iptables-save") is None:
        return []
    removed = []
    for table in ("filter", "nat", "mangle"):
        dump = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
        chains = [line[1:].split()[0] for line in dump.splitlines() if line.startswith(":KUBE-")]
        for line in dump.splitlines():
            # Jumps from built-in chains into KUBE-* chains go first, or the chains cannot be deleted.
            if line.startswith("-A ") and " -j KUBE-" in line and not line.split()[1].startswith("KUBE-"):
                subprocess.run(["iptables", "-t", table, "-D", *line.split()[1:]], capture_output=True, check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in chains:
            if subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False).returncode == 0:
                removed.append(f"{table}/{chain}")
    return removed


# ----------------------------------------------------------------- cgroups, mounts, stray processes
def cgroup_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies mounted under /sys/fs/cgroup (not the v2 `unified` one)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and p.name != "unified" and (p / "tasks").exists())


def make_cgroup_root(name: str) -> None:
    """/<name> in every v1 hierarchy; cpuset needs its cpus and mems copied from the parent."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((hierarchy / knob).read_text())


def _cgroup_dirs(top: Path) -> list[Path]:
    """Every cgroup below and including `top`, deepest first. Cgroups vanish while we walk (the kubelet
    and containerd remove theirs): os.walk skips what is gone instead of failing."""
    return [Path(root) for root, _, _ in os.walk(top, topdown=False)]


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        for directory in _cgroup_dirs(hierarchy / name):
            with contextlib.suppress(OSError):
                pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    return pids


def kill_cgroup(name: str, timeout_s: float = 20.0) -> None:
    """SIGKILL every process in cgroup tree /<name> until none is left, then remove the tree."""
    deadline = time.monotonic() + timeout_s
    while (pids := cgroup_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    for hierarchy in cgroup_hierarchies():
        for path in _cgroup_dirs(hierarchy / name):
            with contextlib.suppress(OSError):
                path.rmdir()


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first (the order to unmount them)."""
    prefix = str(directory).rstrip("/")
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(directory: Path) -> None:
    for _ in range(3):
        points = mounts_under(directory)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (e.g. containerd shims serving one node's socket)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def restore_stale() -> list[str]:
    """Undo what runs whose process is gone left behind: host settings, node cgroups, node workdirs
    (their mounts and containerd shims). Returns what was cleaned, for the log."""
    cleaned: list[str] = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        if path.stem.isdigit() and not pid_alive(int(path.stem)):
            HostState(**json.loads(path.read_text())).restore()
            cleaned.append(f"host settings of run {path.stem}")
    for hierarchy in cgroup_hierarchies()[:1]:
        for group in hierarchy.iterdir():
            match = _OWNED.match(group.name)
            if match and group.is_dir() and not pid_alive(int(match.group(1))):
                kill_cgroup(group.name)
                cleaned.append(f"cgroup /{group.name}")
    for workdir in Path("/tmp").glob(f"{WORKDIR_PREFIX}*"):
        match = _OWNED.match(workdir.name)
        if match and not pid_alive(int(match.group(1))):
            kill_pids(processes_mentioning(str(workdir)))
            unmount_all(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
            cleaned.append(str(workdir))
    return cleaned
