"""Linux isolation primitives for the sandbox: namespaces, a private filesystem view, privilege drop,
and sweeping every process of a sandbox uid.

Each worker slot owns one uid, so concurrent sandboxes cannot signal each other, their RLIMIT_NPROC
counts are separate, and `kill(-1)` run *as that uid* removes anything a program left behind (even
processes that left its process group). What the kernel refuses (no CAP_SYS_ADMIN, not root) is
probed once per worker (probe.py) and recorded in `Isolation.notes`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

from forkrl.rollout.verifier.config import SandboxConfig

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
# With the private filesystem view also a private System V IPC / POSIX message-queue namespace, so
# concurrent programs cannot talk to each other (or to the host) through shared memory or queues.
PRIVATE_VIEW = CLONE_NEWNS | CLONE_NEWIPC
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SANDBOX_HOME = "/tmp/sandbox"
_DERIVED_UID_BASE = 200_000
_UIDS_PER_POOL = 1024
# Pool slots use uid_base + slot (slot < 512); in-process library use takes the block's last uid.
LIBRARY_UID_OFFSET = _UIDS_PER_POOL - 1


class SandboxUnavailable(RuntimeError):
    """A `require`d isolation feature is not available on this host."""


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    result = _libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(result, f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc().prctl(ctypes.c_int(option), ctypes.c_ulong(value), 0, 0, 0), "prctl")


def derive_uid_base(owner_pid: int) -> int:
    """A uid block per pool owner, so two services on one host never sweep each other's programs."""
    return _DERIVED_UID_BASE + (owner_pid % 100_000) * _UIDS_PER_POOL


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"privilege drop to uid {uid} did not take effect")


def _alive_processes_of(uid: int) -> bool:
    """Whether a process owned by `uid` (other than the caller) exists and is not a zombie."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            return True
    return False


def sweep_uid(uid: int, timeout_s: float = 2.0) -> None:
    """SIGKILL every process owned by `uid` and wait until none is left alive (the caller must be root).

    Repeats while any is alive: a fork bomb may still be creating processes while the first kill runs,
    and SIGKILL takes effect asynchronously. Zombies are left for their parent (the worker) to reap.
    """
    pid = os.fork()
    if pid == 0:
        try:
            drop_privileges(uid, uid)
            # Only after the drop is verified: kill(-1) as root would hit every process on the host.
            deadline = time.monotonic() + timeout_s
            while True:
                os.kill(-1, signal.SIGKILL)  # ProcessLookupError: nothing left at all
                if not _alive_processes_of(uid) or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def become_subreaper() -> None:
    """Orphans of sandboxed programs re-parent to this process (not PID 1, which may never reap them)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_orphans(uid: int) -> int:
    """Reap exited children owned by `uid` (orphans re-parented here); returns how many were reaped."""
    reaped = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as handle:
                children = [int(pid) for pid in handle.read().split()]
        except OSError:
            continue
        for pid in children:
            try:
                with open(f"/proc/{pid}/status") as handle:
                    owner = next(line.split()[1] for line in handle if line.startswith("Uid:"))
                if int(owner) == uid and os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
            except (OSError, StopIteration, ChildProcessError):
                continue
    return reaped


def write_files(directory: str, files: dict[str, bytes], uid: int | None, gid: int | None) -> None:
    for name, content in files.items():
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content)
            if uid is not None and gid is not None:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)


def build_private_home(
    files: dict[str, bytes], uid: int | None, gid: int | None, disk_bytes: int, config: SandboxConfig
) -> str:
    """Inside a fresh mount namespace: /tmp becomes a read-only tmpfs holding only the program's own
    writable tmpfs home (SANDBOX_HOME, `disk_bytes`), and every world-writable or hidden directory is
    covered by an empty read-only tmpfs. Everything vanishes with the namespace's last process."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    os.mkdir(SANDBOX_HOME, 0o700)
    owner = f",uid={uid},gid={gid}" if uid is not None else ""
    mount("tmpfs", SANDBOX_HOME, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_bytes},mode=0700{owner}")
    write_files(SANDBOX_HOME, files, uid, gid)
    mount("tmpfs", "/tmp", "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for path in [*config.writable_masks, *config.hide_paths]:
        if os.path.isdir(path) and not os.path.realpath(path).startswith("/tmp"):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755")
    return SANDBOX_HOME


@dataclass(frozen=True)
class Isolation:
    """What this worker's sandbox actually gets (reported by the service's /v1/info)."""

    network_namespace: bool
    mount_namespace: bool
    uid: int | None
    gid: int | None
    python: str
    notes: tuple[str, ...]
    pid_namespace: bool = False
    seccomp: str | None = None
    """The architecture the seccomp filter was built for; None: no filter."""
    cgroup: str | None = None
    """The slot's cgroup (its first directory); None: no cgroup limits."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def features(self) -> dict[str, bool]:
        """Each isolation feature and whether this sandbox has it (FEATURES order)."""
        return features_of(self.as_dict())


def features_of(isolation: dict[str, Any]) -> dict[str, bool]:
    """Each isolation feature and whether an `Isolation.as_dict()` (a worker's /v1/info entry) has it."""
    got = {"network_namespace": bool(isolation.get("network_namespace")),
           "mount_namespace": bool(isolation.get("mount_namespace")),
           "pid_namespace": bool(isolation.get("pid_namespace")),
           "seccomp": isolation.get("seccomp") is not None,
           "drop_privileges": isolation.get("uid") is not None,
           "cgroup": isolation.get("cgroup") is not None}
    return {name: got[name] for name in FEATURES}


FEATURES = ("network_namespace", "mount_namespace", "pid_namespace", "seccomp", "drop_privileges", "cgroup")
CGROUP_PROBE_LIMITS = (1 << 30, 64)
"""Memory bytes and processes the probe sets; every run sets its own before it starts."""


def cgroup_name(uid: int) -> str:
    return f"forkrl-sandbox-{uid}"
