"""google.rpc.Status <-> HTTP: the one error mapping of the gateway (transcoded API and the
MLflow layer alike).

An error response body is the google.rpc.Status in proto3 JSON, as Google APIs return it:

    {"code": 5, "message": "run 'abc' not found",
     "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                  "reason": "RUN_NOT_FOUND", "domain": "cairn.dev", "metadata": {...}}]}

with the HTTP status of the code (the table in google/rpc/code.proto) and the request id in
the X-Request-Id header. Backend statuses pass through unchanged (their ErrorInfo included);
errors the gateway raises itself carry an ErrorInfo in the same domain, and, like the
backends' own, the request id in its metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from starlette.responses import JSONResponse

from services.common.errors import ERROR_DOMAIN

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_HEADER = "X-Request-Id"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# google.rpc.Code number -> grpc.StatusCode (grpc.StatusCode.X.value is (number, "name")).
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

# What a client sees when the channel itself fails (no status from a Cairn server): the
# channel's own text names internal addresses and resolver details, which go to the log.
_CHANNEL_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the backend service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the backend service did not answer in time",
}


def grpc_code(code: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN for numbers out of range)."""
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


def http_status(code: int) -> int:
    """The HTTP status of a google.rpc.Code number."""
    return HTTP_STATUS.get(grpc_code(code), 500)


def make_status(
    code: grpc.StatusCode, message: str, reason: str, **metadata: str
) -> status_pb2.Status:
    """A google.rpc.Status with one ErrorInfo in Cairn's domain."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def invalid_argument(message: str, field: str) -> status_pb2.Status:
    """A gateway-side request error (bad JSON, unknown query parameter...) naming the field."""
    return make_status(grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_ARGUMENT", field=field)


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a backend reported (grpc-status-details-bin trailer), as
    grpc_status.rpc_status.from_call reads it; for a status without details (the channel
    failed, or a server aborted with a bare code) one is built from the code and details."""
    code = error.code()
    for key, value in _pairs(error):
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # a corrupt trailer: fall back to the code below
            log.warning("unparseable %s trailer from the backend", STATUS_DETAILS_KEY)
            break
        if status.code == code.value[0]:
            return status
        log.warning(
            "status details (code %s) disagree with the call's code %s", status.code, code.name
        )
        break
    details = error.details() or ""
    if code in _CHANNEL_MESSAGES and _from_channel(error):
        log.warning("backend call failed: %s: %s", code.name, details)
        return make_status(code, _CHANNEL_MESSAGES[code], code.name)
    return make_status(code, details or code.name.lower().replace("_", " "), code.name)


def _from_channel(error: grpc.aio.AioRpcError) -> bool:
    """True when no Cairn server produced the status: every Cairn reply carries x-request-id
    in its trailers."""
    return not any(key == "x-request-id" for key, _ in _pairs(error))


def _pairs(error: grpc.aio.AioRpcError) -> Iterable[tuple[str, Any]]:
    """The trailing metadata of a failed call as (key, value) pairs."""
    return cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ())


def status_json(status: status_pb2.Status) -> dict[str, object]:
    """The proto3 JSON form of a google.rpc.Status (details whose type this process does not
    know are dropped rather than failing the error response)."""
    try:
        return json_format.MessageToDict(status)
    except (json_format.Error, TypeError, KeyError):
        known = [
            detail for detail in status.details if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
        ]
        trimmed = status_pb2.Status(code=status.code, message=status.message, details=known)
        return json_format.MessageToDict(trimmed)


class JSONLineResponse(JSONResponse):
    """JSON ending in a newline, so shell users (curl) get one document per line."""

    def render(self, content: object) -> bytes:
        return super().render(content) + b"\n"


def error_response(
    status: status_pb2.Status,
    request_id: str | None = None,
    *,
    http_status_code: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONLineResponse:
    """The HTTP response for a google.rpc.Status: its proto3 JSON as the body, the HTTP status
    of its code (or `http_status_code`, for 405/413/415 which no code maps to) and the request
    id echoed in X-Request-Id."""
    response_headers = dict(headers or {})
    if request_id:
        response_headers[REQUEST_ID_HEADER] = request_id
        status = _with_request_id(status, request_id)
    if status.code == code_pb2.UNAUTHENTICATED:
        response_headers.setdefault("WWW-Authenticate", 'Bearer realm="cairn"')
    return JSONLineResponse(
        status_json(status),
        status_code=http_status_code or http_status(status.code),
        headers=response_headers,
    )


def _with_request_id(status: status_pb2.Status, request_id: str) -> status_pb2.Status:
    """The status with request_id in its Cairn ErrorInfo metadata, as the backends report it
    (a copy; statuses that already carry one, or have no Cairn ErrorInfo, are unchanged)."""
    for index, detail in enumerate(status.details):
        if not detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            continue
        info = error_details_pb2.ErrorInfo()
        detail.Unpack(info)
        if info.domain != ERROR_DOMAIN or "request_id" in info.metadata:
            return status
        info.metadata["request_id"] = request_id
        copy = status_pb2.Status()
        copy.CopyFrom(status)
        copy.details[index].Pack(info)
        return copy
    return status


def status_text(status: status_pb2.Status) -> str:
    """A google.rpc.Status as one line of compact JSON (server-sent events, NDJSON)."""
    return json.dumps(status_json(status), ensure_ascii=False, separators=(",", ":"))
