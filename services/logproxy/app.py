"""Wires the log proxy together from Settings: a channel to the scheduler (which knows where
each job's logs are) and the servicer. Stateless: no database."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import grpc

from cairn.logproxy.v1 import logproxy_service_pb2, logproxy_service_pb2_grpc
from services.common.clients import open_channel
from services.common.paging import PageTokenCodec
from services.common.server import ServiceSpec
from services.common.settings import Settings
from services.logproxy.service import LogProxyService
from services.logproxy.servicer import LogProxyServicer

if TYPE_CHECKING:
    from services.logproxy.sources.cloud_logging import CloudLogs
    from services.logproxy.sources.kubernetes import KubernetesLogs

SERVICE: Final = "logproxy"
GRPC_SERVICE_NAME = logproxy_service_pb2.DESCRIPTOR.services_by_name["LogProxyService"].full_name


def build_spec(
    settings: Settings,
    *,
    kubernetes_api: Any | None = None,
    cloud_logging_channel: Callable[[], grpc.aio.Channel] | None = None,
) -> ServiceSpec:
    """The log proxy as a ServiceSpec. Pod logs are read with the scheduler's cluster
    configuration (its kubeconfig and context; none: the in-cluster service account), or
    through `kubernetes_api` (a kubernetes.client.ApiClient: tests point it at a fake API
    server). Cloud Logging is read at logging.googleapis.com with Application Default
    Credentials, or over the channel `cloud_logging_channel` makes (tests: to a local
    server; it is called in the server's event loop, to which an aio channel is bound)."""
    servicer: LogProxyServicer | None = None
    service: LogProxyService | None = None
    channel: grpc.aio.Channel | None = None

    def pod_logs() -> KubernetesLogs:
        # Imported here: the kubernetes client (the k8s extra) is only needed for pod logs.
        from services.logproxy.sources.kubernetes import KubernetesLogs

        kubeconfig = settings.scheduler_k8s_kubeconfig
        return KubernetesLogs(
            kubernetes_api,
            kubeconfig=str(kubeconfig) if kubeconfig else None,
            context=settings.scheduler_k8s_context,
            request_timeout_seconds=settings.backend_timeout_seconds,
        )

    async def cloud_logs() -> CloudLogs:
        # Imported here: google-cloud-logging (the gcp extra) is only needed for Vertex AI.
        from services.logproxy.sources.cloud_logging import CloudLogs

        return await CloudLogs.connect(
            cloud_logging_channel() if cloud_logging_channel is not None else None,
            request_timeout_seconds=settings.backend_timeout_seconds,
        )

    async def start() -> None:
        nonlocal servicer, service, channel
        channel = open_channel(settings.backend_address("scheduler"))
        service = LogProxyService(
            channel,
            settings.backend_timeout_seconds,
            PageTokenCodec(settings.page_token_secret),
            kubernetes=pod_logs,
            cloud_logging=cloud_logs,
        )
        servicer = LogProxyServicer(service, settings.backend_timeout_seconds)

    def register(server: grpc.aio.Server) -> None:
        assert servicer is not None, "register runs after the start hook"
        logproxy_service_pb2_grpc.add_LogProxyServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server
        )

    async def stop() -> None:
        if service is not None:
            await service.close()
        if channel is not None:
            await channel.close(grace=None)

    return ServiceSpec(
        name=SERVICE,
        service_names=[GRPC_SERVICE_NAME],
        register=register,
        on_start=[start],
        on_stop=[stop],
    )
