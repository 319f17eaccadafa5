"""Runs the sandboxed program in a PID namespace of its own, so it sees (and can signal) only its own
processes: `/proc/1/cmdline` is the namespace's init, not the host's, and the worker's pid means nothing.

    worker -> sandbox child (outside, waits) -> init (PID 1: reaps, reports) -> program (PID 2, execs)

The program is PID 2, not PID 1, because the kernel ignores signals without a handler sent to a
namespace's init (its own SIGXCPU or SIGTERM among them), which would change how programs end. When the
program ends, init reports its wait status through a pipe and exits, and the kernel kills whatever the
program left behind in the namespace. The sandbox child then ends the way the program did (same exit
code, or the same signal), so the worker classifies the outcome exactly as without the namespace.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from typing import NoReturn

from forkrl.rollout.verifier.isolation import MS_NODEV, MS_NOEXEC, MS_NOSUID, PR_SET_PDEATHSIG, mount, prctl, unshare

CLONE_NEWPID = 0x20000000
_STD_FDS = 5  # stdin, stdout, stderr, the launcher's channel, the exec-error pipe


def _close_program_fds() -> None:
    """Drop the program's pipes, so the worker sees them close when the program's side does."""
    for fd in range(_STD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)


def end_like(status: int) -> NoReturn:
    """Exit with the exit code of wait status `status`, or die of its signal (no core file)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if the signal did not end us
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _run_init(program: int, report_fd: int) -> NoReturn:
    """PID 1: reap every process of the namespace until the program ends, report its status, exit."""
    _close_program_fds()
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == program:
            os.write(report_fd, str(status).encode())
            os._exit(0)


def enter_pid_namespace(remount_proc: bool) -> None:
    """Called in the sandbox child before it limits and execs: returns only in the program process (PID 2 of
    a new PID namespace). With `remount_proc` (the child has a private mount namespace) /proc shows only
    the namespace's processes."""
    unshare(CLONE_NEWPID)
    report_read, report_write = os.pipe()
    init = os.fork()
    if init:  # outside the namespace: end the way the program ends
        os.close(report_write)
        _close_program_fds()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # with the worker; init follows (its own PDEATHSIG)
        _, init_status = os.waitpid(init, 0)
        with os.fdopen(report_read, "rb") as report:
            reported = report.read()
        end_like(int(reported) if reported else init_status)
    os.close(report_read)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if remount_proc:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    program = os.fork()
    if program:
        _run_init(program, report_write)
    os.close(report_write)
