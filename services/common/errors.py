"""Domain errors: what went wrong, in the domain's words, with a canonical status.

Services and stores raise these; they never import grpc. One interceptor
(services.common.interceptors.ErrorMappingInterceptor) turns them into gRPC statuses with a
google.rpc.ErrorInfo detail, so every RPC reports failures the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

ERROR_DOMAIN = "cairn.dev"


class StatusCode(enum.Enum):
    """The canonical google.rpc.Code values a domain error can carry (no grpc import)."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CairnError(Exception):
    """Base of every error that is the caller's to see.

    `reason` is a stable UPPER_SNAKE identifier for machines (google.rpc.ErrorInfo.reason);
    `metadata` carries the specifics (the offending field, key, values).
    """

    code: StatusCode = StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}


class InvalidArgument(CairnError):
    code = StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        merged = dict(metadata or {})
        if field is not None:
            merged.setdefault("field", field)
        super().__init__(message, reason=reason, metadata=merged)
        self.field = field


class NotFound(CairnError):
    code = StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CairnError):
    code = StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CairnError):
    code = StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(CairnError):
    code = StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(CairnError):
    code = StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(CairnError):
    code = StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Aborted(CairnError):
    code = StatusCode.ABORTED
    default_reason = "ABORTED"


class DataLoss(CairnError):
    code = StatusCode.DATA_LOSS
    default_reason = "DATA_LOSS"


class Unavailable(CairnError):
    code = StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ConfigurationError(Exception):
    """Invalid CAIRN_* settings: raised at start-up, before any server binds."""
