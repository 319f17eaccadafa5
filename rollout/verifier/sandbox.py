"""Runs one untrusted program in a fresh child process with hard limits and classifies how it ended.

Containment (the OS, not Python, enforces it): a new session/process group; an empty network
namespace; mount and IPC namespaces with a private tmpfs home and read-only masks (isolation.py); a PID
namespace with a private /proc (pid_namespace.py); a seccomp filter (seccomp.py); a cgroup capping the
memory and processes of the whole run (cgroup.py); rlimits on
CPU time, address space, file size, processes, open files and core dumps; a dedicated unprivileged uid
with no_new_privs; a minimal environment; PDEATHSIG so it dies with its worker. The parent enforces
the wall-clock and output limits, and afterwards SIGKILLs the process group and every process of the
sandbox uid. How a finished run's outcome is decided: outcome.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from forkrl.rollout.verifier import launcher
from forkrl.rollout.verifier.cgroup import SandboxCgroup, run_memory_cap
from forkrl.rollout.verifier.config import CodeRewardConfig, SandboxConfig
from forkrl.rollout.verifier.isolation import (
    CLONE_NEWNET,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    PRIVATE_VIEW,
    Isolation,
    become_subreaper,
    build_private_home,
    cgroup_name,
    drop_privileges,
    prctl,
    reap_orphans,
    sweep_uid,
    unshare,
    write_files,
)
from forkrl.rollout.verifier.outcome import Outcome, SandboxRun, classify, parse_records
from forkrl.rollout.verifier.pid_namespace import enter_pid_namespace
from forkrl.rollout.verifier.probe import probe
from forkrl.rollout.verifier.seccomp import install_filter

LAUNCHER_SOURCE = Path(launcher.__file__).read_text()
_STDERR_KEEP = 64 * 1024
_READ_CHUNK = 65536
_DRAIN_S = 0.2


class SandboxError(RuntimeError):
    """The sandbox itself failed to start a program (not the program's fault)."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float
    cpu_s: float
    memory_bytes: int
    file_bytes: int
    processes: int
    open_files: int
    output_bytes: int
    disk_bytes: int

    @classmethod
    def for_code(cls, config: CodeRewardConfig, wall_s: float) -> SandboxLimits:
        return cls(
            wall_s=wall_s,
            cpu_s=wall_s,
            memory_bytes=config.memory_mb << 20,
            file_bytes=config.file_size_kib << 10,
            processes=config.max_processes,
            open_files=config.max_open_files,
            output_bytes=config.output_kib << 10,
            disk_bytes=config.disk_kib << 10,
        )


def _high_fd(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 10)


def _set_limits(limits: SandboxLimits) -> None:
    cpu = max(1, int(limits.cpu_s + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Sandbox:
    """One worker's sandbox: probes isolation once, then runs programs one at a time."""

    def __init__(self, config: SandboxConfig, uid: int, *, subreaper: bool = False) -> None:
        """`uid`: this sandbox's own uid (unique per concurrent sandbox). `subreaper`: adopt and reap
        orphaned program processes (workers do; a library caller may not want to adopt orphans)."""
        self.config = config
        self.isolation: Isolation = probe(config, uid)
        self.cgroup = SandboxCgroup.create(cgroup_name(uid)) if self.isolation.cgroup else None
        missing = [name for name, present in self.isolation.features().items() if not present]
        if missing:  # isolation: auto went on without them (strict would have raised)
            print(f"forkrl verifier: WARNING: the sandbox of uid {uid} runs WITHOUT {', '.join(missing)}: "
                  f"{'; '.join(self.isolation.notes)}", file=sys.stderr, flush=True)
        self.kills = 0  # programs killed for a wall-clock or output limit
        if subreaper:
            become_subreaper()
        if self.isolation.uid is not None:
            sweep_uid(self.isolation.uid)  # leftovers of a previous worker on this slot

    def _child(
        self,
        fds: tuple[int, int, int, int, int],
        argv: list[str],
        files: dict[str, bytes],
        host_dir: str | None,
        limits: SandboxLimits,
    ) -> None:
        """Runs in the forked child: isolate, limit, drop privileges, exec. Never returns."""
        error_fd = 4
        try:
            os.setsid()
            if self.cgroup is not None:  # first: every process of the run is counted, init included
                self.cgroup.enter()
            high = [_high_fd(fd) for fd in fds]
            for target, source in enumerate(high):
                os.dup2(source, target)
            os.set_inheritable(4, False)
            os.closerange(5, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            iso = self.isolation
            if iso.network_namespace:
                unshare(CLONE_NEWNET)
            if iso.mount_namespace:
                unshare(PRIVATE_VIEW)
                workdir = build_private_home(files, iso.uid, iso.gid, limits.disk_bytes, self.config)
            else:
                workdir = host_dir or "/"
            if iso.pid_namespace:
                enter_pid_namespace(remount_proc=iso.mount_namespace)  # from here on: the program, PID 2
            _set_limits(limits)
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            if iso.uid is not None and iso.gid is not None:
                drop_privileges(iso.uid, iso.gid)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if iso.seccomp is not None:
                install_filter(iso.seccomp)  # last: nothing after it but chdir and exec
            os.chdir(workdir)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
            os.execve(argv[0], argv, env)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.write(error_fd, f"{type(error).__name__}: {error}".encode())
        os._exit(127)

    def close(self) -> None:
        """Removes the slot's cgroup (it is recreated by the next sandbox of this uid)."""
        if self.cgroup is not None:
            self.cgroup.remove()

    def _host_dir(self, files: dict[str, bytes]) -> str:
        root = self.config.workdir_root or tempfile.gettempdir()
        path = tempfile.mkdtemp(prefix="forkrl-sandbox-", dir=root)
        iso = self.isolation
        write_files(path, files, iso.uid, iso.gid)
        if iso.uid is not None and iso.gid is not None:
            os.chown(path, iso.uid, iso.gid)
        return path

    def run(self, program: str, *, mode: str, stdin: bytes, limits: SandboxLimits, fn_name: str = "") -> SandboxRun:
        """Run `program` as `solution.py` under the launcher (`mode` "stdio" or "call")."""
        files = {"solution.py": program.encode("utf-8", "surrogatepass")}
        host_dir = None if self.isolation.mount_namespace else self._host_dir(files)
        audit = "audit" if self.config.audit_hook else "noaudit"
        argv = [self.isolation.python, "-I", "-B", "-c", LAUNCHER_SOURCE, mode, fn_name or "-", audit]
        pipes = [os.pipe() for _ in range(5)]  # stdin, stdout, stderr, channel, exec error
        child_ends = (pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1], pipes[4][1])
        oom_before = 0
        if self.cgroup is not None:
            memory = run_memory_cap(limits.memory_bytes, limits.disk_bytes)
            self.cgroup.set_limits(memory, limits.processes + 2)  # + the sandbox child and the namespace's init
            oom_before = self.cgroup.oom_kills()
        started = time.monotonic()
        try:
            pid = os.fork()
            if pid == 0:
                self._child(child_ends, argv, files, host_dir, limits)
            for fd in child_ends:
                os.close(fd)
            with os.fdopen(pipes[4][0], "rb") as exec_errors:
                failure = exec_errors.read()
            if failure:
                os.waitpid(pid, 0)
                for fd in (pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]):
                    os.close(fd)
                raise SandboxError(f"sandbox failed to start the program: {failure.decode(errors='replace')}")
            run = self._supervise(pid, started, stdin, limits, (pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]))
            if self.cgroup is not None and self.cgroup.oom_kills() > oom_before:
                run.oom_killed = True
                run.outcome, run.detail = classify(run, limits)
            return run
        finally:
            if host_dir is not None:
                shutil.rmtree(host_dir, ignore_errors=True)

    def _supervise(
        self, pid: int, started: float, stdin: bytes, limits: SandboxLimits, fds: tuple[int, int, int, int]
    ) -> SandboxRun:
        stdin_fd, stdout_fd, stderr_fd, channel_fd = fds
        buffers = {stdout_fd: bytearray(), stderr_fd: bytearray(), channel_fd: bytearray()}
        pidfd = os.pidfd_open(pid)
        selector = selectors.DefaultSelector()
        selector.register(pidfd, selectors.EVENT_READ)
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        os.set_blocking(stdin_fd, False)
        pending = memoryview(stdin)
        stdin_open = True
        if pending:
            selector.register(stdin_fd, selectors.EVENT_WRITE)

        def close_stdin() -> None:
            nonlocal stdin_open
            if stdin_open:
                if pending is not None and selector.get_map().get(stdin_fd) is not None:
                    selector.unregister(stdin_fd)
                os.close(stdin_fd)
                stdin_open = False

        if not pending:
            close_stdin()
        deadline = started + limits.wall_s
        killed_for: str | None = None
        exited = False
        total = 0
        while not exited and killed_for is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed_for = "wall_timeout"
                break
            for key, _ in selector.select(remaining):
                fd = key.fd
                if fd == pidfd:
                    exited = True
                elif fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:_READ_CHUNK]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        close_stdin()
                else:
                    chunk = os.read(fd, _READ_CHUNK)
                    if not chunk:
                        selector.unregister(fd)
                        continue
                    buffers[fd] += chunk
                    total += len(chunk)
                    if total > limits.output_bytes:
                        killed_for = "output_limit"
                        break
        if killed_for is not None:
            self.kills += 1
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        if self.isolation.uid is not None:
            sweep_uid(self.isolation.uid)  # whatever left the process group, too
        close_stdin()
        selector.unregister(pidfd)
        if killed_for is None:  # collect what the program printed before it exited
            drain_until = time.monotonic() + _DRAIN_S
            while selector.get_map() and time.monotonic() < drain_until:
                for key, _ in selector.select(max(0.0, drain_until - time.monotonic())):
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if chunk and total + len(chunk) <= limits.output_bytes:
                        buffers[key.fd] += chunk
                        total += len(chunk)
                    else:
                        selector.unregister(key.fd)
        if self.isolation.uid is not None:
            reap_orphans(self.isolation.uid)  # zombies of processes that outlived the program
        wall_s = time.monotonic() - started
        selector.close()
        for fd in (pidfd, stdout_fd, stderr_fd, channel_fd):
            os.close(fd)
        stderr = bytes(buffers[stderr_fd][-_STDERR_KEEP:])
        channel = bytes(buffers[channel_fd])
        run = SandboxRun(
            outcome=Outcome.exited,
            exit_code=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
            term_signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            stdout=bytes(buffers[stdout_fd]),
            stderr=stderr,
            channel=channel,
            wall_s=wall_s,
            cpu_s=usage.ru_utime + usage.ru_stime,
            killed_for=killed_for,
            records=parse_records(channel),
        )
        run.outcome, run.detail = classify(run, limits)
        return run
