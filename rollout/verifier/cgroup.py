"""A cgroup per sandbox slot: one memory and one process-count limit for everything a program starts.

rlimits are per process (RLIMIT_AS) or per uid (RLIMIT_NPROC, which root ignores): a program that forks
16 children may use 16 times its address-space limit. The cgroup caps the sum, page cache and tmpfs
pages the program writes included, and the kernel's OOM killer ends it inside the cgroup instead of
anywhere on the node.

Created under the worker's own cgroup, in cgroup v2 (one directory) or v1 (one per controller), when
that is writable: as root on a host, or in a container given a writable cgroup. A container's cgroup
is usually mounted read-only, and then the probe records that the feature is unavailable.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids")


def _own_path(controller: str | None) -> str:
    """This process's cgroup path in the v2 hierarchy (controller None) or a v1 controller's."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (controller in controllers.split(",")):
            return path
    raise OSError(f"no {controller or 'v2'} cgroup in /proc/self/cgroup")


def _v2_usable(directory: Path) -> bool:
    controllers = (directory / "cgroup.subtree_control").read_text().split()
    return "memory" in controllers and "pids" in controllers


@dataclass
class SandboxCgroup:
    """The cgroup directories of one slot (v2: one; v1: memory and pids)."""

    directories: list[Path]
    version: int

    @classmethod
    def at(cls, name: str) -> SandboxCgroup:
        """Where `name` is (or would be) under this process's cgroups; creates nothing."""
        if (CGROUP_ROOT / "memory").is_dir() and (CGROUP_ROOT / "pids").is_dir():
            return cls([CGROUP_ROOT / c / _own_path(c).lstrip("/") / name for c in V1_CONTROLLERS], 1)
        return cls([CGROUP_ROOT / _own_path(None).lstrip("/") / name], 2)

    @classmethod
    def create(cls, name: str) -> SandboxCgroup:
        """Creates (or reuses) `name` under this process's cgroups; OSError where that is not possible."""
        group = cls.at(name)
        parent = group.directories[0].parent
        if group.version == 2 and not _v2_usable(parent):
            raise OSError(f"{parent}: memory and pids are not enabled for child cgroups (cgroup.subtree_control)")
        for directory in group.directories:
            directory.mkdir(exist_ok=True)
        return group

    def _file(self, controller: str, name: str) -> Path:
        if self.version == 2:
            return self.directories[0] / name
        return self.directories[V1_CONTROLLERS.index(controller)] / name

    def set_limits(self, memory_bytes: int, processes: int) -> None:
        if self.version == 2:
            self._file("memory", "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: nothing to cap
                self._file("memory", "memory.swap.max").write_text("0")
        else:
            self._file("memory", "memory.limit_in_bytes").write_text(str(memory_bytes))
        self._file("pids", "pids.max").write_text(str(processes))

    def enter(self) -> None:
        """Moves the calling process (and so everything it starts) into the cgroup."""
        for directory in self.directories:
            (directory / "cgroup.procs").write_text("0")

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer ended in this cgroup so far."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in self._file("memory", name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def members(self) -> list[int]:
        return [int(pid) for pid in self._file("pids", "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        """Removes the directories (the kernel refuses while a process is still in one: then it stays)."""
        for directory in self.directories:
            with contextlib.suppress(OSError):
                directory.rmdir()


def run_memory_cap(memory_bytes: int, disk_bytes: int) -> int:
    """The whole run's memory cap: a quarter over the per-process address-space limit plus the tmpfs home and
    64 MiB of page cache (the interpreter's files count too), so one process meets its own RLIMIT_AS (a
    MemoryError) first; the cgroup stops several processes that together go past it. At the limit itself the
    kernel reclaims page cache over and over, which would turn a clean MemoryError into a wall-clock timeout."""
    return memory_bytes + memory_bytes // 4 + disk_bytes + (64 << 20)


def remove_slot_cgroups(names: list[str]) -> None:
    """Removes the cgroups of these slots under this process's cgroups, where they exist (service shutdown)."""
    for name in names:
        with contextlib.suppress(OSError):
            SandboxCgroup.at(name).remove()


def probe_cgroup(name: str, memory_bytes: int, processes: int) -> SandboxCgroup:
    """Creates the slot's cgroup, sets limits and moves a throw-away child in and out: OSError if any fails."""
    group = SandboxCgroup.create(name)
    group.set_limits(memory_bytes, processes)
    pid = os.fork()
    if pid == 0:
        try:
            group.enter()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"cannot move a process into {group.directories[0]}")
    return group
