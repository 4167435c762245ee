"""The gateway's ASGI application: transcoded Cairn API, OpenAPI and docs, MLflow
compatibility, /healthz and /metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.common.settings import Settings
from services.gateway.backends import Backends
from services.gateway.bindings import all_bindings, registered_services
from services.gateway.errors import JSONLineResponse
from services.gateway.server import DrainState

HTTP_REQUESTS = Counter(
    "cairn_gateway_requests_total",
    "HTTP requests served by the gateway.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "cairn_gateway_request_seconds",
    "Time to serve an HTTP request (until the response starts).",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def create_app(settings: Settings, *, drain: DrainState | None = None) -> Starlette:
    """The gateway app; `drain` is shared with the HttpService serving it (/healthz turns
    NOT_SERVING once it drains)."""
    from services.gateway import mlflow, openapi, transcoding

    backends = Backends(settings)
    bindings = all_bindings(registered_services())
    state = drain if drain is not None else DrainState()

    async def healthz(request: Request) -> Response:
        report = await backends.health()
        draining = state.draining
        healthy = not draining and all(status == "SERVING" for status in report.values())
        body = {"status": "SERVING" if healthy else "NOT_SERVING", "backends": report}
        if draining:
            body["gateway"] = "DRAINING"
        return JSONLineResponse(body, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *openapi.routes(bindings),
        *mlflow.routes(backends, settings),
        # Last: everything else is matched against the google.api.http bindings.
        *transcoding.routes(bindings, backends),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backends.open()
        try:
            yield
        finally:
            await backends.close()

    middleware = [Middleware(_MetricsMiddleware)]
    origins = [o.strip() for o in settings.gateway_cors_origins.split(",") if o.strip()]
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=["authorization", "content-type", "x-request-id", "accept"],
                expose_headers=["x-request-id"],
            )
        )
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.backends = backends
    app.state.bindings = bindings
    return app


class _MetricsMiddleware:
    """Counts requests by method, route template (never the raw path) and status."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def send_and_record(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                route = scope.get("state", {}).get("route_label") or _route_label(scope)
                HTTP_LATENCY.labels(scope["method"], route).observe(time.perf_counter() - began)
                HTTP_REQUESTS.labels(scope["method"], route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_and_record)


def _route_label(scope: dict) -> str:  # type: ignore[type-arg]
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
