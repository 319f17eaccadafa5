"""Worker processes with a per-item deadline and replacement of crashed or stuck workers.

Each slot is one worker process (spawned; tasks run in its main thread, and its only other thread, the
lifeline watcher, blocks every signal, so math-verify's SIGALRM timeouts work) driven by one
supervising thread in the owner. A slot takes the next job from a shared queue only
while it has a live worker, sends it over a pipe and waits at most the job's timeout. A job whose
worker dies fails with WorkerCrashed, one that overruns fails with ItemTimedOut; either way that
worker is killed and replaced and no other job is affected. A Python exception inside the task comes
back as WorkerTaskError and the worker is kept. A worker never outlives the owner, however the owner
ends (see `forkrl.rollout.lifeline`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from forkrl.rollout.lifeline import watch
from forkrl.rollout.verifier.isolation import PR_SET_PDEATHSIG, prctl

log = logging.getLogger(__name__)
_STOP = object()
_RESPAWN_BACKOFF_MAX_S = 30.0


class WorkerCrashed(RuntimeError):
    """The worker process died while running the job."""


class ItemTimedOut(TimeoutError):
    """The job overran its timeout; its worker was killed and replaced."""


class WorkerTaskError(RuntimeError):
    """The task raised a Python exception inside the worker (the worker is kept)."""


class WorkerStartError(RuntimeError):
    """A worker process failed to start or to run its initializer."""


class PoolClosed(RuntimeError):
    """The pool was closed before the job ran."""


class _WatchedLifeline:
    """Pickles as the read end of a worker's lifeline; unpickling it in the worker starts the watch.

    Never outlive the owner. PR_SET_PDEATHSIG alone was not enough: the worker arms it only in
    `_worker_main`, after spawn's bootstrap has imported the owner's main module and unpickled the
    arguments (the initializer's imports: seconds), so an owner killed meanwhile never signals it and it
    lives on through its initializer; and the resource tracker the owner started lives as long as any
    worker holds its pipe. The watch starts while the arguments are unpickled (they come after this one,
    so their imports are covered too), and the lifeline's EOF is seen however late it starts.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __reduce__(self) -> tuple[Callable[[Connection], Connection], tuple[Connection]]:
        return _watch_on_arrival, (self.conn,)


def _watch_on_arrival(conn: Connection) -> Connection:
    watch(conn.fileno(), group=False)  # only this worker: it shares the owner's process group
    return conn


def _worker_main(conn: Connection, lifeline: Connection, slot: int, initializer: Callable | None, init_arg: Any,
                 memory: int | None) -> None:
    # `lifeline` is already watched (see _WatchedLifeline); it stays referenced here, as closing it would
    # read as EOF. PDEATHSIG stays too: it needs no thread to be scheduled, while a task holding the GIL
    # in C code delays the watcher.
    with contextlib.suppress(OSError):
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The owner handles Ctrl-C and SIGTERM (drain, then close the pipes); a worker ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        info = initializer(slot, init_arg) if initializer is not None else {}
    except BaseException as error:
        conn.send(("init_error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            func, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", func(payload))
        except Exception as error:
            reply = ("error", f"{type(error).__name__}: {error}")
        try:
            conn.send(reply)
        except Exception as error:  # an unpicklable result
            conn.send(("error", f"result could not be sent: {type(error).__name__}: {error}"))


class _Worker:
    def __init__(self, pool: WorkerPool, slot: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe(duplex=True)
        # Never written: the worker kills itself when this end closes (this process died, or kill/stop).
        child_lifeline, self._lifeline = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_worker_main,
            # The lifeline comes before the initializer and its argument: it is watched before they load.
            args=(child_conn, _WatchedLifeline(child_lifeline), slot, pool.initializer, pool.init_arg,
                  pool.memory_bytes),
            name=f"forkrl-verifier-worker-{slot}",
            daemon=True,
        )
        try:
            self.process.start()
        except BaseException:
            self._lifeline.close()
            raise
        finally:
            child_conn.close()
            child_lifeline.close()
        try:
            if not self.conn.poll(pool.start_timeout_s):
                raise WorkerStartError(f"worker {slot} did not start within {pool.start_timeout_s:g}s")
            status, info = self.conn.recv()
        except (EOFError, OSError) as error:
            self.kill()
            raise WorkerStartError(f"worker {slot} exited during start (code {self.process.exitcode})") from error
        except WorkerStartError:
            self.kill()
            raise
        if status != "ready":
            self.kill()
            raise WorkerStartError(f"worker {slot} initializer failed: {info}")
        self.info: dict[str, Any] = info

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def run(self, func: Callable, payload: Any, timeout_s: float) -> Any:
        try:
            self.conn.send((func, payload))
        except (BrokenPipeError, ConnectionResetError, EOFError) as error:
            self.kill()
            raise WorkerCrashed(f"worker process died (exit code {self.process.exitcode})") from error
        try:
            ready = self.conn.poll(timeout_s)
            if ready:
                status, value = self.conn.recv()
        except (EOFError, OSError) as error:
            self.kill()
            raise WorkerCrashed(f"worker process died (exit code {self.process.exitcode})") from error
        if not ready:
            self.kill()
            raise ItemTimedOut(f"item exceeded its {timeout_s:g}s timeout; worker killed and replaced")
        if status == "error":
            raise WorkerTaskError(value)
        return value

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(10)
        self.conn.close()
        self._lifeline.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.conn.close()  # the worker's recv() sees EOF and returns
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self._lifeline.close()


@dataclass
class _Job:
    func: Callable
    payload: Any
    timeout_s: float
    future: Future


class WorkerPool:
    """`size` worker processes; `submit` returns a concurrent Future (wrap it for asyncio)."""

    def __init__(
        self,
        size: int,
        initializer: Callable[[int, Any], dict[str, Any]] | None = None,
        init_arg: Any = None,
        *,
        start_timeout_s: float = 120.0,
        memory_bytes: int | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"size: must be >= 1, got {size}")
        self.size = size
        self.initializer, self.init_arg = initializer, init_arg
        self.start_timeout_s, self.memory_bytes = start_timeout_s, memory_bytes
        self._on_restart = on_restart
        self._queue: queue.Queue[_Job | object] = queue.Queue()
        self._lock = threading.Lock()
        self._inflight = 0
        self._workers: dict[int, _Worker] = {}
        self._start_errors: dict[int, str] = {}
        self._started = threading.Event()
        self._first_start: dict[int, threading.Event] = {slot: threading.Event() for slot in range(size)}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._closing = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the slot threads (each spawns its worker); returns at once, see `wait_ready`."""
        if self._threads:
            return
        for slot in range(self.size):
            thread = threading.Thread(target=self._slot_loop, args=(slot,), name=f"verifier-slot-{slot}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """True once every slot made its first start attempt and at least one worker is up."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for event in self._first_start.values():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining):
                return False
        return self.live_workers > 0

    def close(self, drain_timeout_s: float = 0.0) -> None:
        """Let queued and running jobs finish (up to `drain_timeout_s`), then stop every worker."""
        self.drain(drain_timeout_s)
        self._closed = True
        self._closing.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(PoolClosed("verifier pool closed before the item ran"))
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(30)

    def drain(self, timeout_s: float) -> bool:
        """Wait until no job is queued or running; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.pending == 0

    # -- work ----------------------------------------------------------------------------------
    def submit(self, func: Callable[[Any], Any], payload: Any, timeout_s: float) -> Future:
        """Run `func(payload)` (a module-level function) in a worker within `timeout_s` seconds."""
        if self._closed:
            raise PoolClosed("verifier pool is closed")
        future: Future = Future()
        self._queue.put(_Job(func, payload, timeout_s, future))
        return future

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def pending(self) -> int:
        return self.queued + self.inflight

    @property
    def started(self) -> bool:
        """Every slot has made its first start attempt."""
        return all(event.is_set() for event in self._first_start.values())

    @property
    def live_workers(self) -> int:
        return len(self._workers)

    def workers(self) -> list[dict[str, Any]]:
        rows = []
        for slot in range(self.size):
            worker = self._workers.get(slot)
            row: dict[str, Any] = {"slot": slot, "pid": worker.pid if worker else None, "alive": worker is not None}
            row.update(worker.info if worker else {"error": self._start_errors.get(slot)})
            rows.append(row)
        return rows

    def _spawn(self, slot: int) -> _Worker | None:
        try:
            worker = _Worker(self, slot)
        except WorkerStartError as error:
            self._start_errors[slot] = str(error)
            log.error("verifier worker %d failed to start: %s", slot, error)
            return None
        finally:
            self._first_start[slot].set()
        self._start_errors.pop(slot, None)
        self._workers[slot] = worker
        return worker

    def _replace(self, slot: int, cause: str) -> None:
        self._workers.pop(slot, None)
        if self._on_restart is not None:
            self._on_restart(cause)

    def _slot_loop(self, slot: int) -> None:
        worker: _Worker | None = None
        failures = 0
        while True:
            if worker is not None and not worker.process.is_alive():  # died while idle
                worker.kill()
                worker = None
                self._replace(slot, "crash")
            if worker is None and not self._closed:
                worker = self._spawn(slot)
                if worker is None:
                    failures += 1
                    self._closing.wait(min(_RESPAWN_BACKOFF_MAX_S, 0.5 * 2**failures))
                    continue
                failures = 0
            job = self._queue.get()
            if job is _STOP:
                break
            assert isinstance(job, _Job)
            if not job.future.set_running_or_notify_cancel():
                continue
            if worker is None:
                job.future.set_exception(PoolClosed("verifier pool closed before the item ran"))
                continue
            with self._lock:
                self._inflight += 1
            try:
                job.future.set_result(worker.run(job.func, job.payload, job.timeout_s))
            except (WorkerCrashed, ItemTimedOut) as error:
                job.future.set_exception(error)
                worker = None
                self._replace(slot, "crash" if isinstance(error, WorkerCrashed) else "timeout")
            except BaseException as error:
                job.future.set_exception(error)
            finally:
                with self._lock:
                    self._inflight -= 1
        if worker is not None:
            self._workers.pop(slot, None)
            worker.stop()
