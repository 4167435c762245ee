"""Server bootstrap shared by every service: grpc.aio with health, reflection, the common
interceptors, a Prometheus endpoint and a graceful SIGTERM drain.

A service describes itself with a ServiceSpec (its gRPC registrations plus start/stop hooks);
`GrpcService` runs one spec; `serve_until_signal` runs one or several (the embedded stack)
until SIGTERM/SIGINT and then drains: health NOT_SERVING, optional delay so load balancers
notice, in-flight calls get the grace period, then hooks stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.interceptors import default_interceptors
from services.common.run_tokens import run_token_secret
from services.common.settings import Settings

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class Runnable(Protocol):
    """What serve_until_signal runs: a gRPC service or the HTTP gateway."""

    name: str

    @property
    def address(self) -> str: ...

    async def start(self) -> None: ...

    async def mark_not_serving(self) -> None: ...

    async def stop(self, grace: float | None = None) -> None: ...


@dataclass
class ServiceSpec:
    """What one Cairn service contributes to a gRPC server."""

    name: str
    # Fully qualified gRPC service names, for health and reflection.
    service_names: Sequence[str]
    # Adds the service's handlers; called after the on_start hooks, before serving.
    register: Callable[[grpc.aio.Server], None]
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)


class GrpcService:
    """One gRPC server for one ServiceSpec, on host:port (port 0 picks a free one)."""

    def __init__(self, spec: ServiceSpec, settings: Settings, *, host: str, port: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.host = host
        self.requested_port = port
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]

    def _create_server(self) -> grpc.aio.Server:
        # grpc.aio binds a server to the running event loop, so it is made in start().
        max_bytes = self.settings.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=default_interceptors(
                self.settings.tokens, run_token_secret(self.settings)
            ),
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        return server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        # Hooks first (they open databases, run migrations), then the handlers they enable.
        for hook in self.spec.on_start:
            await hook()
        server = self.server = self._create_server()
        self.spec.register(server)
        self.port = server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if self.port == 0:
            raise OSError(f"{self.spec.name}: cannot bind {self.host}:{self.requested_port}")
        await server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on %s", self.spec.name, self.address)

    async def mark_not_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        await self.mark_not_serving()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        for hook in reversed(self.spec.on_stop):
            await hook()
        log.info("%s stopped", self.spec.name)

    async def _set_health(self, status: Any) -> None:
        await self.health.set("", status)
        for name in self.spec.service_names:
            await self.health.set(name, status)


def start_metrics_endpoint(host: str, port: int) -> Callable[[], None] | None:
    """Serve Prometheus /metrics (process-wide registry) on host:port; returns a stopper."""
    if port == 0:
        return None
    server, thread = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


async def serve_until_signal(
    services: Sequence[Runnable],
    *,
    drain_delay: float = 0.0,
    extra_stops: Sequence[Hook] = (),
    ready: Callable[[], None] | None = None,
) -> None:
    """Start every service, wait for SIGTERM/SIGINT, then drain and stop them all."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    started: list[Runnable] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        if ready is not None:
            ready()
        await stopping.wait()
        log.info("shutting down: draining in-flight calls")
        for service in started:
            await service.mark_not_serving()
        if drain_delay:
            await asyncio.sleep(drain_delay)
    finally:
        await asyncio.gather(*(service.stop() for service in started), return_exceptions=True)
        for hook in extra_stops:
            await hook()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
