"""Pool workers and the resource tracker never outlive the pool's owner, whenever the owner is killed.

Issue 13: a SIGKILLed owner left workers (and the multiprocessing resource tracker, which lives as long as
any worker holds its pipe) behind. PR_SET_PDEATHSIG is armed only once a worker reaches its main function,
so an owner killed while a worker was still starting never signalled it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.orphans import describe, gone, kill_all, wait_gone

REPO = Path(__file__).resolve().parents[3]
STARTING_S = 60.0
"""How long a worker of the stand-in owner stays in spawn's bootstrap (unpickling its arguments)."""

OWNER = f"""
import sys, time
from forkrl.rollout.verifier.pool import WorkerPool
from tests.rollout.verifier.test_pool_lifeline import SlowToUnpickle, keep
pool = WorkerPool(2, keep, SlowToUnpickle({STARTING_S}), start_timeout_s=300)
pool.start()
print("started", flush=True)
time.sleep(600)
"""


def _slow_value(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class SlowToUnpickle:
    """An initializer argument whose unpickling in the worker takes `seconds` (a slow import, in effect)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple:
        return _slow_value, (self.seconds,)


def keep(_slot: int, _arg: object) -> dict:
    return {}


def test_workers_and_tracker_die_with_an_owner_killed_while_they_start() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    spawned: list[psutil.Process] = []
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both workers and the tracker exist, the workers still unpickling
            spawned = psutil.Process(owner.pid).children(recursive=True)
            lines = [" ".join(p.cmdline()) for p in spawned if not gone(p)]
            if sum("spawn_main" in line for line in lines) == 2 and any("resource_tracker" in line for line in lines):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"owner did not start 2 workers and a tracker: {describe(spawned)}")

        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        # Well before the workers would finish starting (STARTING_S) and notice the owner is gone.
        survivors = wait_gone(spawned, timeout_s=15)
        assert not survivors, f"outlived their owner: {describe(survivors)}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        kill_all(spawned)
