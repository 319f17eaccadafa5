"""Child processes that end with the process that started them, whatever ends it (SIGKILL and OOM too).

The parent makes a pipe, keeps the write end and never writes to it; the child gets the read end and a
daemon thread that blocks reading it. The kernel closes the write end when the parent exits for any
reason, so the read returns EOF and the child SIGKILLs itself, or its whole process group when it leads
one (a service started in its own session takes its pool workers, resource tracker and engine workers
along). Closing the write end on purpose ends the child the same way.

Why not PR_SET_PDEATHSIG alone: it fires when the *thread* that created the child exits (a service
restarted from a short-lived helper thread would be killed as soon as that thread returns), it is only
armed once the child has run far enough to call prctl (a parent that dies while a spawned child is still
importing never signals it), it is cleared by a credential change, and it does not reach processes the
child starts (multiprocessing's resource tracker). A pipe's EOF belongs to the process, not a thread,
and it is level-triggered: a child that starts watching after its parent is already gone sees EOF at once.

The pipe is created non-inheritable (PEP 446) and passed to exactly one child (`pass_fds`), so no other
child of the parent holds the write end open. Only a child created with a bare `fork()` copies it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading

ENV_VAR = "FORKRL_LIFELINE_FD"
"""Names the read end of the child's lifeline (a file descriptor number) in a service's environment."""


class Lifeline:
    """The parent's side of one child's lifeline.

    Give the child `read_fd` (`pass_fds=lifeline.pass_fds`, `env={**env, **lifeline.env}`), call
    `release_child_end` once the child is started, and `close` when the child should end (or has ended).
    """

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self._read_open = self._write_open = True

    @property
    def pass_fds(self) -> tuple[int]:
        return (self.read_fd,)

    @property
    def env(self) -> dict[str, str]:
        return {ENV_VAR: str(self.read_fd)}

    def release_child_end(self) -> None:
        """The parent's copy of the read end (the started child holds its own)."""
        if self._read_open:
            self._read_open = False
            os.close(self.read_fd)

    def close(self) -> None:
        """Cut the lifeline: a child still alive kills itself (and the group it leads)."""
        self.release_child_end()
        if self._write_open:
            self._write_open = False
            os.close(self._write_fd)

    @property
    def closed(self) -> bool:
        return not self._write_open


def _die(group: bool) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"forkrl: pid {os.getpid()}: the process that started it is gone; exiting\n".encode())
    pid = os.getpid()
    # Only a group this process leads: in a group it merely joined, killpg would hit its parent's siblings.
    if group and os.getpgrp() == pid:
        os.killpg(pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def _watch(fd: int, group: bool) -> None:
    # Process-directed signals (the verifier's SIGALRM timeouts, SIGTERM) must keep going to the main
    # thread, as in a single-threaded process.
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    while True:
        try:
            if not os.read(fd, 1):
                break
        except OSError:
            break
    _die(group)


def watch(fd: int, *, group: bool) -> threading.Thread:
    """Kill this process (with `group`, the process group it leads) once `fd` reads EOF.

    The caller keeps `fd` open; it is made non-inheritable so this process's own children do not hold it.
    """
    os.set_inheritable(fd, False)
    thread = threading.Thread(target=_watch, args=(fd, group), name="forkrl-lifeline", daemon=True)
    thread.start()
    return thread


def watch_from_env() -> bool:
    """For service entry points: watch the lifeline named by FORKRL_LIFELINE_FD, if there is one.

    The variable is removed so the service's own children never act on a descriptor number that means
    something else to them. A number that is not an open pipe (a variable copied into a shell by hand) is
    ignored: treating it as EOF would kill the service at once.
    """
    raw = os.environ.pop(ENV_VAR, None)
    if not raw:
        return False
    try:
        fd = int(raw)
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (ValueError, OSError):
        is_pipe = False
    if not is_pipe:
        with contextlib.suppress(OSError):
            os.write(2, f"forkrl: {ENV_VAR}={raw} is not an open pipe; not watching a parent\n".encode())
        return False
    watch(fd, group=True)
    return True
