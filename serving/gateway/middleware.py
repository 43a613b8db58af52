"""Per-request bookkeeping at the edge of the gateway: an id echoed as ``X-Request-ID``, the time of receipt,
and route/status metrics for every request (matched or not)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.gateway.metrics import GatewayMetrics

REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True)
class RequestClock:
    """When a request arrived: wall-clock time for the inference log, a ``perf_counter`` reading for timings."""

    received_at: dt.datetime
    started: float

    @classmethod
    def now(cls) -> RequestClock:
        return cls(dt.datetime.now(dt.UTC), time.perf_counter())


class RequestIdMiddleware:
    """Gives every request an id (echoed as ``X-Request-ID``) and a clock, and records route/status metrics."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], GatewayMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        clock = RequestClock.now()
        scope.setdefault("state", {}).update(request_id=request_id, clock=clock)
        status_holder = [500]
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                status = str(status_holder[0])
                metrics.requests.labels(path, status).inc()
                metrics.latency.labels(path, status).observe(time.perf_counter() - clock.started)


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request (a fresh one if it did not run)."""
    request_id = request.scope.get("state", {}).get("request_id")
    return request_id if isinstance(request_id, str) and request_id else str(uuid.uuid4())


def clock_of(request: Request) -> RequestClock:
    """When the middleware saw this request arrive (now, if it did not run)."""
    clock = request.scope.get("state", {}).get("clock")
    return clock if isinstance(clock, RequestClock) else RequestClock.now()
