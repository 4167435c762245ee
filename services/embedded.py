"""Run Cairn services in this process: one (`cairn serve tracker`) or all (`cairn up`).

The embedded default runs every service that exists on loopback, on SQLite and a local
artifact folder under the data directory, so one command gives a laptop the whole stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from services.common.server import (
    GrpcService,
    ServiceSpec,
    serve_until_signal,
    start_metrics_endpoint,
)
from services.common.settings import ServiceName, Settings
from services.tracker import app as tracker_app

log = logging.getLogger(__name__)

SpecBuilder = Callable[[Settings], ServiceSpec]

# Every gRPC service that exists, in start order.
SERVICES: dict[str, SpecBuilder] = {"tracker": tracker_app.build_spec}
MIGRATORS: dict[str, Callable[[Settings], None]] = {"tracker": tracker_app.migrate}


def build_servers(settings: Settings, names: Sequence[str]) -> list[GrpcService]:
    servers = []
    for name in names:
        builder = SERVICES[name]
        port = settings.grpc_port(name)  # type: ignore[arg-type]
        servers.append(GrpcService(builder(settings), settings, host=settings.host, port=port))
    return servers


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
    # One process-wide Prometheus registry: the first service's metrics port serves it all.
    stop_metrics = start_metrics_endpoint(
        settings.metrics_host or settings.host, settings.metrics_port(names[0])
    )
    try:
        asyncio.run(
            serve_until_signal(
                build_servers(settings, names),
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
