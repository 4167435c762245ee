"""Serve the gateway's ASGI app with uvicorn inside Cairn's own event loop, with the same
start / drain / stop life as the gRPC services (so `cairn up` runs everything in one loop and
one signal handler owns SIGTERM).

Connection limits: the h11 protocol with a bounded incomplete-event buffer (a request line
plus headers that arrive incomplete past MAX_HEADER_BYTES are answered 400 and the
connection closed, so a huge header cannot grow memory), at most MAX_CONNECTIONS
concurrent connections or requests (uvicorn answers 503 beyond), and idle keep-alive
connections closed after KEEP_ALIVE_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 << 10
MAX_CONNECTIONS = 512
KEEP_ALIVE_SECONDS = 5


@dataclass
class DrainState:
    """Shared between the HTTP service (which sets it on SIGTERM) and its app (whose
    /healthz reports NOT_SERVING from then on)."""

    draining: bool = False


class HttpService:
    def __init__(
        self,
        name: str,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        grace: float,
        drain: DrainState | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.requested_port = port
        self.port = 0
        self.grace = grace
        self.drain = drain if drain is not None else DrainState()
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            http="h11",
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=_whole_seconds(grace),
        )
        self.server = uvicorn.Server(self.config)
        self._main: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self.drain.draining

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        # uvicorn's serve() would install its own signal handlers; run its phases instead.
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        try:
            await self.server.startup()
        except SystemExit:
            raise OSError(
                f"{self.name}: cannot start on {self.host}:{self.requested_port}"
            ) from None
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self._main = asyncio.create_task(self.server.main_loop(), name=f"{self.name}-http")
        log.info("%s serving on http://%s", self.name, self.address)

    async def mark_not_serving(self) -> None:
        # /healthz reports 503 from now on; requests in flight and new ones still work until
        # stop(), which load balancers stop sending before.
        self.drain.draining = True

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: requests in flight get `grace` seconds (default: the service's
        grace), as GrpcService.stop gives its calls; then they are cancelled."""
        await self.mark_not_serving()
        if self._main is None:
            return
        seconds = self.grace if grace is None else grace
        if seconds <= 0:
            # No grace: cancel what is in flight now (uvicorn's own zero timeout would log
            # an error even with nothing running).
            for task in list(self.server.server_state.tasks):
                task.cancel()
        self.config.timeout_graceful_shutdown = _whole_seconds(seconds)
        self.server.should_exit = True
        await self._main
        await self.server.shutdown()
        self._main = None
        log.info("%s stopped", self.name)


def _whole_seconds(grace: float) -> int:
    return max(math.ceil(grace), 1)
