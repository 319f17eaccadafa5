"""Probing, once per worker, which isolation features this host grants the sandbox (each tried in a
throw-away child, so nothing it changes stays), and the interpreter the sandbox can run. What is missing is
recorded in `Isolation.notes`; `require` or `isolation: strict` turns a missing feature into an error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from forkrl.rollout.verifier.cgroup import probe_cgroup
from forkrl.rollout.verifier.config import SandboxConfig
from forkrl.rollout.verifier.isolation import (
    CGROUP_PROBE_LIMITS,
    CLONE_NEWNET,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_REC,
    PR_SET_NO_NEW_PRIVS,
    PRIVATE_VIEW,
    Isolation,
    SandboxUnavailable,
    cgroup_name,
    drop_privileges,
    mount,
    prctl,
    unshare,
)
from forkrl.rollout.verifier.pid_namespace import CLONE_NEWPID
from forkrl.rollout.verifier.seccomp import install_filter, supported_arch


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


def _in_child(probe_fn: Callable[[], Any]) -> Any:
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


def _probe_child(config: SandboxConfig, uid: int) -> dict[str, Any]:
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
    return found


def probe(config: SandboxConfig, uid: int) -> Isolation:
    """Try each enabled feature in a throw-away child and settle what this worker's sandbox uses."""
    try:
        found = _in_child(lambda: _probe_child(config, uid))
    except OSError as error:
        found = {"errors": [f"probe: {error}"]}
    notes = list(found["errors"])
    if config.cgroup != "off":  # here, not in the probe child: the cgroup stays for the runs
        try:
            found["cgroup"] = str(probe_cgroup(cgroup_name(uid), *CGROUP_PROBE_LIMITS).directories[0])
        except OSError as error:
            notes.append(f"cgroup: {error}")
    for key, toggle, label in (
        ("netns", config.network_namespace, "network_namespace"),
        ("mountns", config.mount_namespace, "mount_namespace"),
        ("pidns", config.pid_namespace, "pid_namespace"),
        ("seccomp", config.seccomp, "seccomp"),
        ("setuid", config.drop_privileges, "drop_privileges"),
        ("cgroup", config.cgroup, "cgroup"),
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
        cgroup=found.get("cgroup"),
        uid=uid if found.get("setuid") else None,
        gid=uid if found.get("setuid") else None,
        python=python,
        notes=tuple(notes + python_notes),
    )
