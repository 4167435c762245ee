"""gRPC handlers of cairn.logproxy.v1.LogProxyService: unpack, call the domain, pack."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

from cairn.logproxy.v1 import log_entry_pb2, logproxy_service_pb2_grpc
from cairn.logproxy.v1 import logproxy_service_pb2 as pb
from services.common.clients import CallOptions
from services.common.rpc import Context
from services.logproxy.service import LogProxyService, filters


def _since(request: pb.ListJobLogsRequest | pb.TailJobLogsRequest) -> dt.datetime | None:
    if not request.HasField("since"):
        return None
    return request.since.ToDatetime(tzinfo=dt.UTC)


class LogProxyServicer(logproxy_service_pb2_grpc.LogProxyServiceServicer):
    def __init__(self, service: LogProxyService, backend_timeout: float) -> None:
        self.service = service
        self.backend_timeout = backend_timeout

    async def ListJobLogs(
        self, request: pb.ListJobLogsRequest, context: Context
    ) -> pb.ListJobLogsResponse:
        entries, token = await self.service.list_logs(
            request.job,
            filters(request.component, request.min_severity, _since(request)),
            request.page_size,
            request.page_token,
            CallOptions.for_call(context, self.backend_timeout),
        )
        return pb.ListJobLogsResponse(entries=entries, next_page_token=token)

    async def TailJobLogs(
        self, request: pb.TailJobLogsRequest, context: Context
    ) -> AsyncIterator[log_entry_pb2.LogEntry]:
        # A follow outlives the caller's deadline: each scheduler lookup gets its own.
        forwarded = CallOptions.for_call(context, self.backend_timeout).metadata
        options = CallOptions(forwarded, self.backend_timeout)
        async for entry in self.service.tail_logs(
            request.job,
            filters(request.component, request.min_severity, _since(request)),
            request.limit,
            request.follow,
            options,
            context.cancelled,
        ):
            yield entry
