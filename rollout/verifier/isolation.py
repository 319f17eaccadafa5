"""Linux isolation primitives for the sandbox: namespaces, a private filesystem view, privilege drop,
and sweeping every process of a sandbox uid.

Each worker slot owns one uid, so concurrent sandboxes cannot signal each other, their RLIMIT_NPROC
counts are separate, and `kill(-1)` run *as that uid* removes anything a program left behind (even
processes that left its process group). What the kernel refuses (no CAP_SYS_ADMIN, not root) is
probed once per worker and recorded in `Isolation.notes`; `require` turns a refusal into an error.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
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
           "drop_privileges": isolation.get("uid") is not None}
    return {name: got[name] for name in FEATURES}


FEATURES = ("network_namespace", "mount_namespace", "pid_namespace", "seccomp", "drop_privileges")


def _world_executable(path: str) -> bool:
    real = os.path.realpath(path)
    if not os.path.isfile(real) or not os.stat(real).st_mode & 0o001:
        return False
    parent = os.path.dirname(real)
    while True:
        if not os.stat(parent).st_mode & 0o001:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def _python_candidates(config: SandboxConfig) -> list[str]:
    if config.python:
        return [config.python]
    found = [getattr(sys, "_base_executable", ""), sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"]
    found.append(shutil.which("python3") or "")
    resolved = [os.path.realpath(path) for path in found if path and os.path.exists(path)]
    return list(dict.fromkeys(resolved))


def _pick_python(config: SandboxConfig, dropping: bool, masking: bool) -> tuple[str, list[str]]:
    notes: list[str] = []
    hidden = [os.path.realpath(path) + os.sep for path in config.hide_paths]
    for candidate in _python_candidates(config):
        if masking and any(candidate.startswith(prefix) for prefix in hidden):
            notes.append(f"{candidate}: under a hidden path")
        elif dropping and not _world_executable(candidate):
            notes.append(f"{candidate}: not executable by the sandbox uid")
        else:
            return candidate, notes
    raise SandboxUnavailable("no Python interpreter usable inside the sandbox: " + "; ".join(notes))


def _in_child(probe_fn: Callable[[], str]) -> str:
    """`probe_fn()` in a forked child (whatever it changes stays there); its result, or OSError with its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            message = json.dumps({"ok": probe_fn()})
        except BaseException as error:
            message = json.dumps({"error": str(error)})
        os.write(write_fd, message.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        raw = reader.read()
    os.waitpid(pid, 0)
    answer = json.loads(raw or b'{"error": "the probe died"}')
    if "error" in answer:
        raise OSError(answer["error"])
    return answer["ok"]


def _probe_pid_namespace(remount_proc: bool) -> None:
    """In a new PID namespace the first child is PID 1 and, after a /proc remount, sees itself there."""
    from forkrl.rollout.verifier.pid_namespace import CLONE_NEWPID

    unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        ok = os.getpid() == 1
        if ok and remount_proc:
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                ok = os.readlink("/proc/self") == "1"
            except OSError:
                ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError("the first process of the new PID namespace is not PID 1 in its /proc")


def _probe_seccomp() -> str:
    """Installs the filter (the probe child's last act) and checks that a denied call is refused."""
    from forkrl.rollout.verifier.seccomp import install_filter, supported_arch

    arch = supported_arch()
    if arch is None:
        raise OSError(f"no seccomp filter for this architecture ({os.uname().machine})")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    install_filter(arch)
    try:
        unshare(0)  # a no-op the filter must refuse
    except OSError:
        return arch
    raise OSError("the seccomp filter was installed but did not refuse unshare(2)")


def _probe_child(config: SandboxConfig, uid: int, write_fd: int) -> None:
    found: dict = {"netns": False, "mountns": False, "pidns": False, "setuid": False, "seccomp": None, "errors": []}
    if config.network_namespace != "off":
        try:
            unshare(CLONE_NEWNET)
            found["netns"] = True
        except OSError as error:
            found["errors"].append(f"network namespace: {error}")
    if config.mount_namespace != "off":
        try:
            unshare(PRIVATE_VIEW)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k")
            found["mountns"] = True
        except OSError as error:
            found["errors"].append(f"mount namespace: {error}")
    if config.seccomp != "off":  # in a child: the filter would refuse the namespaces probed below
        try:
            found["seccomp"] = _in_child(_probe_seccomp)
        except OSError as error:
            found["errors"].append(f"seccomp: {error}")
    if config.pid_namespace != "off":
        try:
            _probe_pid_namespace(found["mountns"])
            found["pidns"] = True
        except OSError as error:
            found["errors"].append(f"PID namespace: {error}")
    if config.drop_privileges != "off":
        try:
            drop_privileges(uid, uid)
            found["setuid"] = True
        except OSError as error:
            found["errors"].append(f"privilege drop: {error}")
    os.write(write_fd, json.dumps(found).encode())


def probe(config: SandboxConfig, uid: int) -> Isolation:
    """Try each enabled feature in a throw-away child and settle what this worker's sandbox uses."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            _probe_child(config, uid, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        raw = reader.read()
    os.waitpid(pid, 0)
    found = json.loads(raw or b'{"errors": ["probe died"]}')
    notes = list(found["errors"])
    for key, toggle, label in (
        ("netns", config.network_namespace, "network_namespace"),
        ("mountns", config.mount_namespace, "mount_namespace"),
        ("pidns", config.pid_namespace, "pid_namespace"),
        ("seccomp", config.seccomp, "seccomp"),
        ("setuid", config.drop_privileges, "drop_privileges"),
    ):
        required = toggle == "require" or (config.isolation == "strict" and toggle != "off")
        if required and not found.get(key):
            why = "required" if toggle == "require" else "required by isolation: strict"
            raise SandboxUnavailable(f"sandbox.{label} is {why} but unavailable: {'; '.join(notes)}")
        if toggle == "auto" and not found.get(key):
            notes.append(f"{label} unavailable: falling back")
    python, python_notes = _pick_python(config, bool(found.get("setuid")), bool(found.get("mountns")))
    return Isolation(
        network_namespace=bool(found.get("netns")),
        mount_namespace=bool(found.get("mountns")),
        pid_namespace=bool(found.get("pidns")),
        seccomp=found.get("seccomp"),
        uid=uid if found.get("setuid") else None,
        gid=uid if found.get("setuid") else None,
        python=python,
        notes=tuple(notes + python_notes),
    )
