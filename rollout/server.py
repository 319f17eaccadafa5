"""FastAPI app of one rollout replica.

    POST /v1/generate   {"requests": [GenerateRequest, ...]} -> NDJSON stream, one line per request as it
                        finishes: {"index": i, "result": GenerateResult} or {"index": i, "error": {...}}
    POST /v1/weights    {"action": "begin" | "commit" | "abort" | "load_checkpoint", ...}
    POST /v1/sleep      {"level": 1 | 2}        POST /v1/wake
    GET  /healthz (liveness)   /readyz (weights present and awake; body carries weight_version)
    GET  /v1/health (engine state)   /metrics (Prometheus)

With a control token (`create_app(control_token=...)`, from FORKRL_CONTROL_TOKEN), /v1/weights, /v1/sleep
and /v1/wake answer 401 unless the request carries `Authorization: Bearer <token>`, before reading the
body: a request without it changes nothing. Generation, health and metrics stay open (the job's
NetworkPolicy decides who reaches them).

Invalid input is answered before streaming starts with a 4xx whose body names every bad field:
{"error": ..., "fields": [{"field": "requests[0].sampling.top_p", "message": ...}]}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from forkrl.rollout.control_token import authorized
from forkrl.rollout.engine import EngineUnavailableError, RolloutEngine, WeightSyncConflictError
from forkrl.rollout.metrics import RolloutMetrics
from forkrl.rollout.service import RolloutService, ServiceConfig
from forkrl.rollout.types import GenerateRequest, RequestValidationError
from forkrl.rollout.weight_sync import WeightsAction


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[GenerateRequest] = Field(min_length=1, max_length=65536, description="Prompts to sample.")


class SleepBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: int = Field(1, ge=1, le=2, description="1: free KV memory; 2: also drop the weights.")



KEEPALIVE_S = 5.0
"""A blank line goes out on a generate stream after this many quiet seconds, so a client can tell a
long batch (keepalives arrive) from a replica it lost the connection to (nothing arrives)."""


async def with_keepalive(lines: AsyncIterator[str], interval_s: float) -> AsyncIterator[str]:
    """`lines`, with a blank line inserted whenever the next line takes longer than `interval_s`."""
    iterator = aiter(lines)
    next_line: asyncio.Future | None = None
    try:
        while True:
            next_line = asyncio.ensure_future(anext(iterator))
            while not (await asyncio.wait({next_line}, timeout=interval_s))[0]:
                yield "\n"
            try:
                line = next_line.result()
            except StopAsyncIteration:
                return
            yield line
    finally:  # the client went away: stop waiting for results nobody will read
        if next_line is not None and not next_line.done():
            next_line.cancel()


def field_path(loc: tuple | list) -> str:
    """("body", "requests", 0, "sampling", "top_p") -> "requests[0].sampling.top_p"."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union[")):
            continue  # pydantic's names for validator steps, not fields
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _error(status: int, message: str, fields: list[dict] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "fields": fields or []})


class Unauthorized(Exception):
    """A control request without the job's control token (answered 401 before its body is read)."""


def create_app(
    engine: RolloutEngine,
    *,
    service_config: ServiceConfig | None = None,
    metrics: RolloutMetrics | None = None,
    control_token: str | None = None,
) -> FastAPI:
    metrics = metrics or RolloutMetrics()
    service = RolloutService(engine, service_config or ServiceConfig(), metrics, control_token=control_token)

    def require_token(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), control_token):
            metrics.unauthorized(request.url.path)
            raise Unauthorized()

    control = [Depends(require_token)]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="forkrl rollout", lifespan=lifespan)
    app.state.service = service
    app.state.metrics = metrics

    @app.exception_handler(FastAPIValidationError)
    async def _invalid_body(_: Request, exc: FastAPIValidationError) -> JSONResponse:
        fields = [{"field": field_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        names = ", ".join(f["field"] for f in fields)
        return _error(422, f"invalid request: {names}", fields)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, __: Unauthorized) -> JSONResponse:
        response = _error(401, "this control endpoint needs the job's control token: Authorization: Bearer <token>",
                          [{"field": "Authorization", "message": "missing or wrong control token"}])
        response.headers["WWW-Authenticate"] = 'Bearer realm="forkrl-rollout"'
        return response

    @app.exception_handler(RequestValidationError)
    async def _unservable(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(exc.status_code, str(exc), [{"field": exc.field, "message": exc.message}])

    def _not_ready_reason() -> str:
        health = engine.health()
        if not service.running:
            return "scheduler not running"
        if health.sleeping:
            return "engine is sleeping"
        if health.weight_version is None:
            return "no weights loaded (stale replica: push weights)"
        return ""

    @app.post("/v1/generate")
    async def generate(body: GenerateBody) -> Response:
        reason = _not_ready_reason()
        if reason:
            return _error(503, reason)
        service.validate(body.requests)

        async def lines() -> AsyncIterator[str]:
            async for index, outcome in service.generate_as_completed(body.requests):
                if isinstance(outcome, BaseException):
                    error = {"type": type(outcome).__name__, "message": str(outcome)}
                    yield json.dumps({"index": index, "error": error}) + "\n"
                else:
                    yield json.dumps({"index": index, "result": outcome.to_dict()}) + "\n"

        return StreamingResponse(with_keepalive(lines(), KEEPALIVE_S), media_type="application/x-ndjson")

    @app.post("/v1/weights", dependencies=control)
    async def weights(action: Annotated[WeightsAction, Body()]) -> Response:
        try:
            health = await service.weights(action)
        except WeightSyncConflictError as exc:
            return _error(409, str(exc), [{"field": "version", "message": str(exc)}])
        except TimeoutError as exc:
            return _error(504, str(exc))
        except FileNotFoundError as exc:
            return _error(404, str(exc), [{"field": "path", "message": str(exc)}])
        except (ValueError, EngineUnavailableError) as exc:
            return _error(400, str(exc))
        except RuntimeError as exc:  # the receive failed: old weights keep serving
            return _error(409, str(exc))
        return JSONResponse({"weight_version": health["weight_version"], "health": health})

    @app.post("/v1/sleep", dependencies=control)
    async def sleep(body: SleepBody) -> dict:
        await service.sleep(body.level)
        return engine.health().to_dict()

    @app.post("/v1/wake", dependencies=control)
    async def wake() -> dict:
        await service.wake()
        return engine.health().to_dict()

    @app.get("/healthz")
    async def healthz() -> Response:
        if not service.running:
            return _error(503, "scheduler not running")
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        reason = _not_ready_reason()
        health = engine.health()
        body = {"ready": not reason, "weight_version": health.weight_version, "reason": reason, "model": health.model}
        return JSONResponse(body, status_code=503 if reason else 200)

    @app.get("/v1/health")
    async def health() -> dict:
        return engine.health().to_dict()

    @app.get("/metrics")
    async def prometheus() -> Response:
        health = await asyncio.to_thread(engine.health)
        metrics.kv_cache_usage.set(health.kv_cache_usage)
        metrics.weight_version.set(-1 if health.weight_version is None else health.weight_version)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
