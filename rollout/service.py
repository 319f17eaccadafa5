"""`RolloutService`: queues requests from many callers into engine batches and serialises weight swaps.

One batch runs at a time on a worker thread. A weight install (sync commit, checkpoint load) or a sleep
first pauses the scheduler, then either lets the running batch finish on the old weights (`finish`) or
aborts it at the next decoding step (`abort_retry`: its requests are re-queued and regenerated on the
new weights; `abort`: they are returned with finish reason "abort"). Every sample therefore comes from
exactly one weight version. A batch that raises is re-run one request at a time, so one failing
request never takes the others down.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forkrl.rollout.engine import EngineUnavailableError, RolloutEngine
from forkrl.rollout.metrics import RolloutMetrics
from forkrl.rollout.types import GenerateRequest, GenerateResult, RequestValidationError
from forkrl.rollout.weight_sync import (
    WeightCheckpointLoad,
    WeightsAction,
    WeightSyncAbort,
    WeightSyncBegin,
    WeightSyncCommit,
)


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_requests: int = Field(1024, ge=1, description="Requests pulled from the queue into one batch.")
    in_flight_policy: Literal["finish", "abort_retry", "abort"] = Field(
        "finish", description="What a weight swap does to the running batch."
    )
    max_abort_retries: int = Field(3, ge=0, description="Re-queues per request under abort_retry.")


@dataclass
class _Pending:
    request: GenerateRequest
    future: asyncio.Future
    enqueued: float
    retries: int = 0


class RolloutService:
    def __init__(self, engine: RolloutEngine, config: ServiceConfig, metrics: RolloutMetrics,
                 control_token: str | None = None) -> None:
        """control_token: the job's token; weight syncs prove it to their senders and require it of them."""
        self.engine = engine
        self._control_token = control_token
        self.config = config
        self.metrics = metrics
        self._pending: deque[_Pending] = deque()
        self._paused = False
        self._current_abort: threading.Event | None = None
        self._task: asyncio.Task | None = None
        self._sync_started: float | None = None
        self.metrics.weight_version.set(-1 if engine.weight_version is None else engine.weight_version)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._exclusive_lock = asyncio.Lock()
        self._task = asyncio.create_task(self._run(), name="rollout-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(EngineUnavailableError("rollout service stopped"))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def busy(self) -> bool:
        """A batch is on the engine right now."""
        return self._task is not None and not self._idle.is_set()

    # Generation -------------------------------------------------------------------------------------

    def validate(self, requests: Sequence[GenerateRequest]) -> None:
        """Raises `RequestValidationError` with the field path (`requests[i].<field>`)."""
        for index, request in enumerate(requests):
            try:
                self.engine.validate_request(request)
            except RequestValidationError as exc:
                raise RequestValidationError(f"requests[{index}].{exc.field}", exc.message, exc.status_code) from exc

    def submit(self, requests: Sequence[GenerateRequest]) -> list[asyncio.Future]:
        self.validate(requests)
        now = time.perf_counter()
        futures = []
        for request in requests:
            future = self._loop.create_future()
            self._pending.append(_Pending(request, future, now))
            futures.append(future)
        self.metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        return futures

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        return list(await asyncio.gather(*self.submit(requests)))

    async def generate_as_completed(
        self, requests: Sequence[GenerateRequest]
    ) -> AsyncIterator[tuple[int, GenerateResult | BaseException]]:
        """Yields (index, result or the request's exception) in completion order."""
        futures = self.submit(requests)
        index_of = {id(f): i for i, f in enumerate(futures)}
        waiting = set(futures)
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: index_of[id(f)]):
                    yield index_of[id(future)], future.exception() or future.result()
        finally:
            for future in waiting:  # the caller went away: queued requests are skipped
                future.cancel()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._paused or not self._pending:
                self._wakeup.clear()
                continue
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.config.max_batch_requests))]
            batch = [p for p in batch if not p.future.done()]  # callers that went away
            self.metrics.queue_depth.set(len(self._pending))
            if not batch:
                continue
            self._idle.clear()
            try:
                await self._run_batch(batch, isolate_failures=True)
            finally:
                self._current_abort = None
                self.metrics.running_requests.set(0)
                self._idle.set()

    async def _run_batch(self, batch: list[_Pending], isolate_failures: bool) -> None:
        now = time.perf_counter()
        for pending in batch:
            self.metrics.observe_phase("queue", now - pending.enqueued)
        abort = threading.Event()
        self._current_abort = abort
        self.metrics.running_requests.set(len(batch))

        delivered: set[int] = set()

        def deliver(index: int, result: GenerateResult) -> None:
            if index not in delivered:  # early (on_result) and final deliveries of the same result
                delivered.add(index)
                self._deliver(batch[index], result)

        def on_result(index: int, result: GenerateResult) -> None:
            self._loop.call_soon_threadsafe(deliver, index, result)

        def on_phase(phase: str, seconds: float) -> None:
            self._loop.call_soon_threadsafe(self.metrics.observe_phase, phase, seconds)

        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(
                self.engine.generate,
                [p.request for p in batch],
                on_result=on_result,
                abort=abort,
                on_phase=on_phase,
            )
        except EngineUnavailableError as exc:
            for pending in batch:
                self._fail(pending, exc)
            return
        except Exception as exc:
            if not isolate_failures or len(batch) == 1:
                for pending in batch:
                    self._fail(pending, exc)
                return
            for pending in batch:
                await self._run_batch([pending], isolate_failures=False)
            return
        self.metrics.observe_phase("generate", time.perf_counter() - started)
        for index, result in enumerate(results):
            deliver(index, result)

    def _deliver(self, pending: _Pending, result: GenerateResult) -> None:
        if pending.future.done():
            return
        aborted = any(s.finish_reason == "abort" for s in result.samples)
        if aborted:
            self.metrics.aborted_requests.inc()
            if self.config.in_flight_policy == "abort_retry" and pending.retries < self.config.max_abort_retries:
                pending.retries += 1
                self._pending.appendleft(pending)
                self.metrics.queue_depth.set(len(self._pending))
                self._wakeup.set()
                return
        result.queue_seconds = max(0.0, time.perf_counter() - pending.enqueued)
        self.metrics.observe_result(result, pending.request.sampling.dual_temperature is not None)
        self.metrics.request_done("aborted" if aborted else "ok")
        pending.future.set_result(result)

    def _fail(self, pending: _Pending, exc: BaseException) -> None:
        if not pending.future.done():
            self.metrics.request_done("error")
            pending.future.set_exception(exc)

    # Exclusive operations (weights, sleep) ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Pauses the scheduler and waits for the running batch to end (aborting it if configured)."""
        async with self._exclusive_lock:
            self._paused = True
            try:
                if self.config.in_flight_policy != "finish" and self._current_abort is not None:
                    self._current_abort.set()
                await self._idle.wait()
                yield
            finally:
                self._paused = False
                self._wakeup.set()
                version = self.engine.weight_version
                self.metrics.weight_version.set(-1 if version is None else version)

    async def weights(self, action: WeightsAction) -> dict:
        if isinstance(action, WeightSyncBegin):
            await asyncio.to_thread(self.engine.begin_weight_sync, action, self._control_token)
            self._sync_started = time.perf_counter()
        elif isinstance(action, WeightSyncCommit):
            try:
                async with self.exclusive():
                    started = time.perf_counter()
                    await asyncio.to_thread(self.engine.commit_weight_sync, action.version, action.timeout_s)
                    self.metrics.observe_phase("weight_apply", time.perf_counter() - started)
            except Exception:
                self.metrics.weight_sync_done("failed")
                raise
            total = time.perf_counter() - self._sync_started if self._sync_started else None
            self.metrics.weight_sync_done("ok", total)
        elif isinstance(action, WeightSyncAbort):
            await asyncio.to_thread(self.engine.abort_weight_sync)
        elif isinstance(action, WeightCheckpointLoad):
            async with self.exclusive():
                started = time.perf_counter()
                await asyncio.to_thread(self.engine.load_checkpoint, action.path, action.version)
                self.metrics.weight_sync_done("ok", time.perf_counter() - started)
        return self.engine.health().to_dict()

    async def sleep(self, level: int) -> None:
        async with self.exclusive():
            await asyncio.to_thread(self.engine.sleep, level)
        self.metrics.sleeping.set(1)

    async def wake(self) -> None:
        async with self.exclusive():
            await asyncio.to_thread(self.engine.wake)
        self.metrics.sleeping.set(0)
