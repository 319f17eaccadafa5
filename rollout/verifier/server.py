"""FastAPI app of the verifier service: batched `POST /v1/verify`, health, readiness, metrics, info."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from forkrl.rollout.verifier.cgroup import remove_slot_cgroups
from forkrl.rollout.verifier.config import VerifierConfig
from forkrl.rollout.verifier.isolation import cgroup_name, derive_uid_base, features_of
from forkrl.rollout.verifier.metrics import CONTENT_TYPE, VerifierMetrics
from forkrl.rollout.verifier.pool import ItemTimedOut, WorkerCrashed, WorkerPool
from forkrl.rollout.verifier.schemas import Reason, VerifyRequest, VerifyResponse, VerifyResult
from forkrl.rollout.verifier.scoring import ItemOutcome, error_result, init_worker, item_timeout, score_in_worker

_KNOWN_ROUTES = {"/v1/verify", "/v1/info", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}
_ERROR_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}


class _Service:
    """The pieces one app instance owns: config, worker pool, metrics and its shutdown state."""

    def __init__(self, config: VerifierConfig) -> None:
        self.config = config
        self.metrics = VerifierMetrics(config.run, config.replica)
        self.uid_base = config.sandbox.uid_base or derive_uid_base(os.getpid())
        memory = config.worker_memory_mb << 20 if config.worker_memory_mb else None
        self.pool = WorkerPool(
            config.workers,
            init_worker,
            (config, self.uid_base),
            start_timeout_s=config.worker_start_timeout_s,
            memory_bytes=memory,
            on_restart=self.metrics.restart,
        )
        self.metrics.bind_pool(lambda: self.pool.queued, lambda: self.pool.inflight, lambda: self.pool.live_workers)
        self.metrics.bind_isolation(lambda: [features_of(w["isolation"]) for w in self.pool.workers()
                                             if w.get("isolation") and w.get("alive", True)])
        self.draining = False
        self.item_seconds_ewma = 0.05  # per-item time, for the Retry-After estimate

    def retry_after_s(self, excess_items: int) -> int:
        """Seconds until about `excess_items` queue slots free up (1..60)."""
        per_second = self.pool.size / max(self.item_seconds_ewma, 1e-3)
        return int(min(60, max(1, math.ceil(excess_items / per_second))))

    def result_of(self, item: Any, outcome: Any) -> tuple[VerifyResult, int]:
        if isinstance(outcome, ItemOutcome):
            return outcome.result, outcome.sandbox_kills
        timeout = item_timeout(item, self.config)
        if isinstance(outcome, ItemTimedOut):
            result = error_result(item, self.config, Reason.timeout, str(outcome))
            return result.model_copy(update={"latency_s": timeout}), 0
        if isinstance(outcome, WorkerCrashed):
            return error_result(item, self.config, Reason.internal_error, f"worker crashed: {outcome}"), 0
        return error_result(item, self.config, Reason.internal_error, f"{type(outcome).__name__}: {outcome}"), 0


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def create_app(config: VerifierConfig | None = None) -> FastAPI:
    """The service app; its lifespan starts the worker pool and, on shutdown, drains it."""
    service = _Service(config or VerifierConfig())
    config = service.config

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.pool.start()
        yield
        service.draining = True  # readyz turns 503; new batches are refused; in-flight ones finish
        await asyncio.to_thread(service.pool.close, config.shutdown_grace_s)
        remove_slot_cgroups([cgroup_name(service.uid_base + slot) for slot in range(config.workers)])

    app = FastAPI(
        title="forkrl reward verifier",
        version="1.0",
        description="Math (math-verify) and sandboxed code rewards for RLVR rollouts.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > config.max_body_mb << 20:
            response: Response = JSONResponse(
                {"detail": f"body: larger than max_body_mb={config.max_body_mb}"}, status_code=413
            )
        else:
            response = await call_next(request)
        route = request.url.path if request.url.path in _KNOWN_ROUTES else "other"
        service.metrics.request(route, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        fields = [_field_path(entry.get("loc", ())) for entry in errors]
        message = "; ".join(f"{path}: {entry.get('msg')}" for path, entry in zip(fields, errors, strict=True))
        detail = [
            {"loc": list(entry.get("loc", ())), "msg": entry.get("msg"), "type": entry.get("type")} for entry in errors
        ]
        return JSONResponse({"detail": detail, "fields": fields, "message": message}, status_code=422)

    @app.post(
        "/v1/verify",
        response_model=VerifyResponse,
        summary="Score a batch of items; results come back in request order.",
        responses={
            413: {"description": "Batch larger than the whole queue.", **_ERROR_BODY},
            429: {"description": "Queue full; retry after the Retry-After header.", **_ERROR_BODY},
            503: {"description": "Draining for shutdown; retry elsewhere.", **_ERROR_BODY},
        },
    )
    async def verify(request: VerifyRequest) -> VerifyResponse:
        if service.draining:
            raise HTTPException(503, "verifier is shutting down", headers={"Retry-After": "1"})
        count = len(request.items)
        if count > config.max_queue_items:
            raise HTTPException(413, f"items: {count} items exceed max_queue_items={config.max_queue_items}")
        excess = service.pool.pending + count - config.max_queue_items
        if excess > 0:
            service.metrics.rejected(count)
            retry_after = service.retry_after_s(excess)
            detail = f"queue full ({service.pool.pending} items pending, limit {config.max_queue_items})"
            raise HTTPException(429, detail, headers={"Retry-After": str(retry_after)})
        futures = [
            asyncio.wrap_future(service.pool.submit(score_in_worker, item, item_timeout(item, config)))
            for item in request.items
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        results = []
        for item, outcome in zip(request.items, outcomes, strict=True):
            result, kills = service.result_of(item, outcome)
            service.metrics.item(result.task, result.reason.value, result.latency_s, kills)
            service.item_seconds_ewma = 0.99 * service.item_seconds_ewma + 0.01 * result.latency_s
            results.append(result)
        return VerifyResponse(results=results)

    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: workers are up and the service is not draining.",
        responses={503: {"description": "Starting or draining.", **_ERROR_BODY}},
    )
    async def readyz() -> JSONResponse:
        live = service.pool.live_workers
        if service.draining or live == 0 or not service.pool.started:
            status = "draining" if service.draining else "starting"
            return JSONResponse({"status": status, "workers": live}, status_code=503)
        return JSONResponse({"status": "ready", "workers": live})

    @app.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/info", summary="Configuration, worker slots and the sandbox isolation each one got.")
    async def info() -> dict[str, Any]:
        return {
            "config": config.model_dump(mode="json"),
            "uid_base": service.uid_base,
            "workers": service.pool.workers(),
            "queued": service.pool.queued,
            "inflight": service.pool.inflight,
        }

    return app
