"""Checking that processes are gone (a zombie counts: it no longer runs), and killing the ones a test left."""

from __future__ import annotations

import contextlib
import time

import psutil


def gone(process: psutil.Process) -> bool:
    try:  # is_running() is False too once the pid names a newer process
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still alive (not zombies) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in processes if not gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def describe(processes: list[psutil.Process]) -> list[str]:
    out = []
    for process in processes:
        try:
            out.append(f"{process.pid} (ppid {process.ppid()}): {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            out.append(f"{process.pid}: (gone)")
    return out


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL whatever of `processes` is still there (psutil checks the pid still names the same process)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
