"""gRPC channels from the gateway to each backend service, opened for the app's lifetime."""

from __future__ import annotations

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.clients import open_channel
from services.common.settings import ServiceName, Settings

# Full gRPC service name -> the Cairn service that serves it.
SERVICE_OWNERS: dict[str, ServiceName] = {
    "cairn.tracker.v1.TrackerService": "tracker",
    "cairn.analytics.v1.AnalyticsService": "analytics",
    "cairn.scheduler.v1.SchedulerService": "scheduler",
    "cairn.logproxy.v1.LogProxyService": "logproxy",
}


class Backends:
    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.gateway_timeout_seconds
        self.addresses: dict[ServiceName, str] = {
            owner: settings.backend_address(owner) for owner in set(SERVICE_OWNERS.values())
        }
        self._channels: dict[ServiceName, grpc.aio.Channel] = {}

    async def open(self) -> None:
        for owner, address in self.addresses.items():
            self._channels[owner] = open_channel(address)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()

    def channel_for(self, grpc_service: str) -> grpc.aio.Channel:
        """The channel to the backend serving a fully qualified gRPC service name."""
        owner = SERVICE_OWNERS[grpc_service]
        if owner not in self._channels:
            raise RuntimeError("gateway backends are not open (app lifespan not started)")
        return self._channels[owner]

    async def health(self) -> dict[str, str]:
        """Each backend's gRPC health status name (SERVING, NOT_SERVING, UNAVAILABLE...)."""
        report: dict[str, str] = {}
        for owner, channel in self._channels.items():
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=min(self.timeout, 2.0)
                )
                report[owner] = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.aio.AioRpcError as error:
                report[owner] = error.code().name
        return report
