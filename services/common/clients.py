"""Calling another Cairn service from inside an RPC: one channel per backend, the caller's
credentials and request id passed on, the caller's deadline respected, and the backend's
status kept (a bad filter stays INVALID_ARGUMENT with its ErrorInfo, not an INTERNAL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from services.common.errors import CairnError, StatusCode
from services.common.logs import request_id_var
from services.common.rpc import Context

# Large messages both ways: run tables and metric histories pass through.
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.keepalive_time_ms", 30_000),
)
_FORWARDED_HEADERS = ("authorization",)
_REQUEST_ID_KEY = "x-request-id"


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))


@dataclass(frozen=True)
class CallOptions:
    """What every backend call made on behalf of one incoming RPC carries."""

    metadata: tuple[tuple[str, str], ...]
    timeout: float

    @classmethod
    def for_call(cls, context: Context | None, default_timeout: float) -> CallOptions:
        """Forwards the caller's bearer token and request id; the deadline is the caller's
        remaining time when it has one, capped by default_timeout."""
        metadata: list[tuple[str, str]] = []
        if context is not None:
            for key, value in context.invocation_metadata() or ():
                if key in _FORWARDED_HEADERS and isinstance(value, str):
                    metadata.append((key, value))
        request_id = request_id_var.get()
        if request_id:
            metadata.append((_REQUEST_ID_KEY, request_id))
        timeout = default_timeout
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            timeout = max(min(timeout, remaining), 0.001)
        return cls(tuple(metadata), timeout)


class BackendError(CairnError):
    """A backend's error status, passed on with its code, message and ErrorInfo."""

    def __init__(
        self,
        code: StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason or code.name, metadata=metadata)
        self.code = code


# Backend failures worth retrying later (the backend is down, slow or briefly conflicted);
# any other refusal is final.
RETRYABLE_CODES = frozenset(
    {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.ABORTED, StatusCode.INTERNAL}
)

_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE: (StatusCode.UNAVAILABLE, "is unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (StatusCode.DEADLINE_EXCEEDED, "did not answer in time"),
}


def backend_error(error: grpc.aio.AioRpcError, backend: str) -> CairnError:
    """The CairnError to raise for a failed backend call."""
    code = error.code()
    # The channel's own text names internal addresses; the caller gets the service's name.
    unreachable = _UNREACHABLE.get(code)
    if unreachable is not None:
        status, what = unreachable
        return BackendError(status, f"the {backend} service {what}", metadata={"backend": backend})
    try:
        mapped = StatusCode(code.value[0])
    except ValueError:
        mapped = StatusCode.INTERNAL
    reason: str | None = None
    metadata: dict[str, str] = {}
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
                metadata = {k: v for k, v in info.metadata.items() if k != "request_id"}
                break
    return BackendError(mapped, error.details() or code.name, reason=reason, metadata=metadata)
