"""Serve the gateway's ASGI app with uvicorn inside Cairn's own event loop, with the same
start / drain / stop life as the gRPC services (so `cairn up` runs everything in one loop and
one signal handler owns SIGTERM)."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


class HttpService:
    def __init__(self, name: str, app: ASGIApp, *, host: str, port: int, grace: float) -> None:
        self.name = name
        self.host = host
        self.requested_port = port
        self.port = 0
        self.grace = grace
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=max(int(grace), 1),
        )
        self.server = uvicorn.Server(self.config)
        self._main: asyncio.Task[None] | None = None
        self.draining = False

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
        self.draining = True

    async def stop(self, grace: float | None = None) -> None:
        await self.mark_not_serving()
        if self._main is None:
            return
        self.server.should_exit = True
        await self._main
        await self.server.shutdown()
        self._main = None
        log.info("%s stopped", self.name)
