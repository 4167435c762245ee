"""Run Cairn services in this process: one (`cairn serve tracker`) or all (`cairn up`).

The embedded default runs every service that exists on loopback, on SQLite and a local
artifact folder under the data directory, so one command gives a laptop the whole stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from services.analytics import app as analytics_app
from services.common.server import (
    GrpcService,
    Runnable,
    ServiceSpec,
    serve_until_signal,
    start_metrics_endpoint,
)
from services.common.settings import ServiceName, Settings
from services.logproxy import app as logproxy_app
from services.scheduler import app as scheduler_app
from services.tracker import app as tracker_app

log = logging.getLogger(__name__)

SpecBuilder = Callable[[Settings], ServiceSpec]

# The gRPC services that exist, in start order; the gateway starts after them.
GRPC_SERVICES: dict[str, SpecBuilder] = {
    "tracker": tracker_app.build_spec,
    "scheduler": scheduler_app.build_spec,
    "analytics": analytics_app.build_spec,
    "logproxy": logproxy_app.build_spec,
}
SERVICES: tuple[ServiceName, ...] = ("tracker", "scheduler", "analytics", "logproxy", "gateway")
MIGRATORS: dict[str, Callable[[Settings], None]] = {
    "tracker": tracker_app.migrate,
    "scheduler": scheduler_app.migrate,
}


def build_service(
    settings: Settings, name: str, *, host: str | None = None, port: int | None = None
) -> Runnable:
    """One service, bound to host:port (default: its CAIRN_* setting; 0 = ephemeral)."""
    bind = host if host is not None else settings.host
    if name == "gateway":
        from services.gateway.app import create_app
        from services.gateway.server import DrainState, HttpService

        drain = DrainState()
        return HttpService(
            "gateway",
            create_app(settings, drain=drain),
            host=bind,
            port=settings.gateway_port if port is None else port,
            grace=settings.shutdown_grace_seconds,
            drain=drain,
        )
    if name not in GRPC_SERVICES:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    spec = GRPC_SERVICES[name](settings)
    grpc_port = settings.grpc_port(name) if port is None else port  # type: ignore[arg-type]
    return GrpcService(spec, settings, host=bind, port=grpc_port)


def serve(
    settings: Settings,
    names: Sequence[ServiceName],
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve the named services until SIGTERM/SIGINT (blocking)."""
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise ValueError(f"unknown services: {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    ordered = [n for n in SERVICES if n in names]
    # One process-wide Prometheus registry: the first gRPC service's metrics port serves it
    # all (the gateway also serves it on its own /metrics).
    grpc_names = [n for n in ordered if n in GRPC_SERVICES]
    stop_metrics = (
        start_metrics_endpoint(
            settings.metrics_host or settings.host, settings.metrics_port(grpc_names[0])
        )
        if grpc_names
        else None
    )
    try:
        asyncio.run(
            serve_until_signal(
                [build_service(settings, name) for name in ordered],
                drain_delay=settings.drain_delay_seconds,
                ready=ready,
            )
        )
    finally:
        if stop_metrics is not None:
            stop_metrics()


def migrate(settings: Settings, names: Sequence[str] | None = None) -> list[str]:
    done = []
    for name in names or list(MIGRATORS):
        MIGRATORS[name](settings)
        done.append(name)
    return done
