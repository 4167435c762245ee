"""Wires analytics together from Settings: a channel to the tracker, the servicer."""

from __future__ import annotations

from typing import Final

import grpc

from cairn.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from services.analytics.service import AnalyticsService
from services.analytics.servicer import AnalyticsServicer
from services.analytics.tracker_reader import TrackerReader
from services.common.clients import open_channel
from services.common.concurrency import BlockingRunner
from services.common.server import ServiceSpec
from services.common.settings import Settings

SERVICE: Final = "analytics"
GRPC_SERVICE_NAME = analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name


def build_spec(settings: Settings) -> ServiceSpec:
    """Analytics as a ServiceSpec; the tracker channel opens on start (inside the loop)."""
    # The optuna statistics are CPU-bound: a few threads are plenty.
    runner = BlockingRunner(min(settings.worker_threads, 4), "analytics")
    channel: grpc.aio.Channel | None = None
    servicer: AnalyticsServicer | None = None

    async def start() -> None:
        nonlocal channel, servicer
        channel = open_channel(settings.backend_address("tracker"))
        service = AnalyticsService(TrackerReader(channel), runner.run)
        servicer = AnalyticsServicer(service, settings.backend_timeout_seconds)

    def register(server: grpc.aio.Server) -> None:
        assert servicer is not None, "register runs after the start hook"
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server
        )

    async def stop() -> None:
        if channel is not None:
            await channel.close(grace=None)
        runner.shutdown()

    return ServiceSpec(
        name=SERVICE,
        service_names=[GRPC_SERVICE_NAME],
        register=register,
        on_start=[start],
        on_stop=[stop],
    )
