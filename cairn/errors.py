"""Exceptions the SDK raises: one class per canonical status, carrying the server's reason.

try:
    tracker.log_params({"lr": 0.02})
except cairn.AlreadyExistsError as error:
    print(error.reason, error.metadata["old_value"])
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status


class CairnError(Exception):
    """A request Cairn refused or could not serve."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}


class InvalidArgumentError(CairnError, ValueError):
    pass


class NotFoundError(CairnError, LookupError):
    pass


class AlreadyExistsError(CairnError):
    pass


class FailedPreconditionError(CairnError):
    pass


class UnauthenticatedError(CairnError):
    pass


class PermissionDeniedError(CairnError):
    pass


class UnavailableError(CairnError, ConnectionError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[CairnError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> CairnError:
    """Translate a gRPC error (with its google.rpc.ErrorInfo, when present)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason, metadata = "", {}
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not reason:
        message = (
            f"the Cairn tracker did not answer ({message}): is it running (`cairn up`) and "
            "does CAIRN_TRACKING_URI point at it?"
        )
    return _BY_CODE.get(code, CairnError)(
        message or str(code), code=code, reason=reason, metadata=metadata
    )
