"""Worker pool: results in order, crashes and overruns replace only their own worker, draining on close."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from forkrl.rollout.verifier.pool import ItemTimedOut, WorkerCrashed, WorkerPool, WorkerTaskError


# Task functions run inside spawned workers, so they live at module level.
def square(value: int) -> int:
    return value * value


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault(_: object) -> None:
    ctypes.string_at(0)


def fail(message: str) -> None:
    raise ValueError(message)


def refuse_to_start(slot: int, _: object) -> dict:
    raise RuntimeError(f"slot {slot} cannot start")


class _Restarts:
    def __init__(self) -> None:
        self.causes: list[str] = []

    def __call__(self, cause: str) -> None:
        self.causes.append(cause)


@pytest.fixture(scope="module")
def restarts() -> _Restarts:
    return _Restarts()


@pytest.fixture(scope="module")
def pool(restarts: _Restarts) -> Iterator[WorkerPool]:
    workers = WorkerPool(2, start_timeout_s=60, on_restart=restarts)
    workers.start()
    assert workers.wait_ready(90)
    yield workers
    workers.close(5)


def _results(futures: list[Future], timeout_s: float = 60) -> list[object]:
    out: list[object] = []
    for future in futures:
        try:
            out.append(future.result(timeout_s))
        except Exception as error:
            out.append(error)
    return out


def test_results_in_order(pool: WorkerPool) -> None:
    futures = [pool.submit(square, value, 10) for value in range(12)]
    assert _results(futures) == [value * value for value in range(12)]
    assert pool.pending == 0


@pytest.mark.parametrize(("func", "payload"), [(exit_hard, 3), (segfault, None)])
def test_crash_is_an_error_for_that_item_only(
    pool: WorkerPool, restarts: _Restarts, func: object, payload: object
) -> None:
    before = len(restarts.causes)
    futures = [pool.submit(square, 2, 10), pool.submit(func, payload, 10), pool.submit(square, 3, 10)]
    futures += [pool.submit(square, value, 10) for value in range(4, 10)]
    results = _results(futures)
    assert isinstance(results[1], WorkerCrashed)
    assert [results[0], *results[2:]] == [4, 9, *[value * value for value in range(4, 10)]]
    assert restarts.causes[before:] == ["crash"]
    deadline = time.monotonic() + 60
    while pool.live_workers < 2 and time.monotonic() < deadline:  # the replacement comes up
        time.sleep(0.1)
    assert pool.live_workers == 2


def test_overrun_is_killed_and_does_not_block_the_batch(pool: WorkerPool, restarts: _Restarts) -> None:
    before = len(restarts.causes)
    started = time.monotonic()
    slow = pool.submit(pid_after, 30.0, 2.5)
    quick = [pool.submit(square, value, 10) for value in range(6)]
    assert _results(quick) == [value * value for value in range(6)]
    quick_done = time.monotonic() - started
    with pytest.raises(ItemTimedOut):
        slow.result(30)
    slow_done = time.monotonic() - started
    assert quick_done < 2.5  # all done on the other worker before the slow item's deadline
    assert 2.5 <= slow_done < 12.0  # killed at its own 2.5 s deadline (plus kill and scheduling slack)
    assert restarts.causes[before:] == ["timeout"]


def test_task_exception_keeps_the_worker(pool: WorkerPool, restarts: _Restarts) -> None:
    deadline = time.monotonic() + 60
    while pool.live_workers < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    before = len(restarts.causes)
    pids_before = {row["pid"] for row in pool.workers()}
    with pytest.raises(WorkerTaskError, match="ValueError: boom"):
        pool.submit(fail, "boom", 10).result(30)
    assert _results([pool.submit(pid_after, 0.0, 10) for _ in range(4)])
    assert {row["pid"] for row in pool.workers()} == pids_before
    assert restarts.causes[before:] == []


def test_close_drains_queued_work() -> None:
    workers = WorkerPool(1, start_timeout_s=60)
    workers.start()
    assert workers.wait_ready(90)
    futures = [workers.submit(pid_after, 0.2, 10) for _ in range(4)]
    workers.close(drain_timeout_s=30)
    pids = _results(futures)
    assert all(isinstance(pid, int) for pid in pids) and len(set(pids)) == 1
    assert workers.live_workers == 0


def test_initializer_failure_is_reported() -> None:
    workers = WorkerPool(1, refuse_to_start, start_timeout_s=60)
    workers.start()
    try:
        assert workers.wait_ready(90) is False
        assert "slot 0 cannot start" in (workers.workers()[0]["error"] or "")
    finally:
        workers.close(0)
