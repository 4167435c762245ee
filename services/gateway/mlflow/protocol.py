"""MLflow's REST protocol as mlflow.server.handlers speaks it: error bodies and their HTTP
statuses, request decoding and the field checks with MLflow's messages.

An MLflow error is ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "..."}`` with the
HTTP status mlflow.exceptions.ERROR_CODE_TO_HTTP_STATUS gives the code. The MLflow client
retries 429, 500, 502, 503 and 504, so only transient failures may use those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.gateway import limits
from services.gateway.errors import status_from_rpc_error

INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
INTERNAL_ERROR = "INTERNAL_ERROR"
TEMPORARILY_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"

# mlflow.exceptions.ERROR_CODE_TO_HTTP_STATUS, for every code this layer answers with.
HTTP_STATUS: dict[str, int] = {
    INTERNAL_ERROR: 500,
    "DATA_LOSS": 500,
    NOT_IMPLEMENTED: 501,
    TEMPORARILY_UNAVAILABLE: 503,
    "DEADLINE_EXCEEDED": 504,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "ABORTED": 409,
    ENDPOINT_NOT_FOUND: 404,
    RESOURCE_DOES_NOT_EXIST: 404,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "BAD_REQUEST": 400,
    RESOURCE_ALREADY_EXISTS: 400,
    INVALID_PARAMETER_VALUE: 400,
}

# Cairn's canonical codes -> MLflow's error codes. FAILED_PRECONDITION (a deleted run, a
# terminal status) is what MLflow reports as INVALID_PARAMETER_VALUE ("must be in the
# 'active' state").
_FROM_GRPC: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: INVALID_PARAMETER_VALUE,
    grpc.StatusCode.OUT_OF_RANGE: INVALID_PARAMETER_VALUE,
    grpc.StatusCode.FAILED_PRECONDITION: INVALID_PARAMETER_VALUE,
    grpc.StatusCode.NOT_FOUND: RESOURCE_DOES_NOT_EXIST,
    grpc.StatusCode.ALREADY_EXISTS: RESOURCE_ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: "PERMISSION_DENIED",
    grpc.StatusCode.UNAUTHENTICATED: "UNAUTHENTICATED",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    grpc.StatusCode.ABORTED: "ABORTED",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    grpc.StatusCode.UNAVAILABLE: TEMPORARILY_UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED: NOT_IMPLEMENTED,
    grpc.StatusCode.CANCELLED: "CANCELLED",
    grpc.StatusCode.DATA_LOSS: "DATA_LOSS",
}

# Request bodies are JSON documents of at most the gateway's limit for unary JSON bodies
# (8 MiB; a full log-batch of 100 params of 6,000 characters and 100 tags of 8,000 is about
# 1.5 MB); larger ones are refused with 413.
MAX_JSON_BYTES = limits.MAX_JSON_BODY_BYTES
# Client values echoed in error messages are cut to this many characters, and the tracker's
# messages passed through to this many.
MAX_SHOWN_CHARACTERS = 200
MAX_PASSED_MESSAGE = 500
API_DOCS_HINT = " See the API docs for more information about request parameters."


class MlflowError(Exception):
    """An error answered in MLflow's format. `reason` and `metadata` carry the backend's
    google.rpc.ErrorInfo, when the error came from one, so handlers can rephrase it."""

    def __init__(
        self,
        error_code: str,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        """MLflow's status for the code, unless the error names its own (413, 408)."""
        return self._http_status or HTTP_STATUS.get(self.error_code, 500)

    def response(self, request_id: str) -> JSONResponse:
        return error_response(self.error_code, self.message, request_id, self.http_status)


def error_response(
    error_code: str, message: str, request_id: str, http_status: int | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error_code": error_code, "message": message},
        status_code=http_status or HTTP_STATUS.get(error_code, 500),
        headers={"X-Request-Id": request_id} if request_id else None,
    )


def from_input_error(error: limits.GatewayInputError) -> MlflowError:
    """Refused client input (the shared limits): INVALID_PARAMETER_VALUE, with the status
    the gateway gives it everywhere (400, or 413 for a body over its limit)."""
    return MlflowError(INVALID_PARAMETER_VALUE, error.message, http_status=error.http_status)


def from_idle_timeout(error: limits.IdleTimeoutError) -> MlflowError:
    """A stalled transfer: 408 when the client stopped sending, 504 when the tracker did."""
    return MlflowError("DEADLINE_EXCEEDED", error.message, http_status=error.http_status)


def invalid_parameter(message: str) -> MlflowError:
    return MlflowError(INVALID_PARAMETER_VALUE, message)


def does_not_exist(message: str) -> MlflowError:
    return MlflowError(RESOURCE_DOES_NOT_EXIST, message)


def from_rpc_error(error: grpc.aio.AioRpcError) -> MlflowError:
    """The MLflow error for a failed tracker call. Messages pass through (Cairn's servers
    never put tracebacks or SQL in them); internal failures get a fixed text."""
    status = status_from_rpc_error(error)
    code = error.code()
    reason = ""
    metadata: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
            break
    error_code = _FROM_GRPC.get(code, INTERNAL_ERROR)
    message = status.message
    if len(message) > MAX_PASSED_MESSAGE:  # a tracker message quoting a long input
        message = message[: MAX_PASSED_MESSAGE - 3] + "..."
    if error_code == INTERNAL_ERROR:
        message = "internal error in the tracker" + (
            f" (request id {metadata['request_id']})" if "request_id" in metadata else ""
        )
    return MlflowError(error_code, message, reason=reason, metadata=metadata)


# ---------------------------------------------------------------------- requests


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a request body ({} when empty), as MLflow's server reads it
    (including the double-encoded JSON strings of old clients). Read and parsed by the
    gateway's shared limits (size cap, idle timeout, big bodies parsed off the event loop);
    every malformation is INVALID_PARAMETER_VALUE."""
    idle = getattr(request.state, "idle_seconds", None)
    try:
        raw = await limits.read_body(request, limit=MAX_JSON_BYTES, idle_seconds=idle)
        if not raw.strip():
            return {}
        data = await limits.offload(len(raw), _decode_object, raw)
    except limits.GatewayInputError as error:
        raise from_input_error(error) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise invalid_parameter("the request body must be a JSON object")
    return data


def _decode_object(raw: bytes) -> Any:
    data = limits.parse_json(raw)
    if isinstance(data, str):  # double-encoded by old clients
        data = limits.parse_json(data)
    if b"\\u" in raw:
        # JSON escapes can spell lone surrogates, which no protobuf string can hold.
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeError:
            raise limits.GatewayInputError(
                "body", "invalid body: a string is not valid Unicode (a lone surrogate)"
            ) from None
        except RecursionError:
            raise limits.GatewayInputError("body", "invalid body: nested too deeply") from None
    return data


def query_fields(request: Request, repeated: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Query parameters as a JSON-like dict: repeated fields as lists, others as the value."""
    params = request.query_params
    fields: dict[str, Any] = {}
    for name in params:
        fields[name] = params.getlist(name) if name in repeated else params.get(name)
    return fields


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def shown(value: object, limit: int = MAX_SHOWN_CHARACTERS) -> str:
    """A client's value for an error message: a string as it is (MLflow's messages quote
    names that way), anything else as JSON, cut to `limit` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[: limit - 3]}..."
    return limits.shorten(value, limit)


def _type_error(name: str, value: object) -> MlflowError:
    return invalid_parameter(
        f"Invalid value {shown(value)} for parameter '{name}' supplied. "
        f"Hint: Value was of type '{type(value).__name__}'.{API_DOCS_HINT}"
    )


class Fields:
    """Typed access to the fields of a request, with MLflow's validation messages. Fields
    are found by their proto name or its lowerCamelCase JSON name."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def has(self, name: str) -> bool:
        return self.raw(name) is not None

    def raw(self, name: str) -> Any:
        if name in self.data:
            return self.data[name]
        return self.data.get(_camel(name))

    def string(self, name: str, *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise _type_error(name, value)
        if required and value == "":
            raise invalid_parameter(
                f"Missing value for required parameter '{name}'.{API_DOCS_HINT}"
            )
        return value

    def run_id(self) -> str:
        """run_id, or run_uuid from older clients."""
        value = self.string("run_id") or self.string("run_uuid")
        if not value:
            raise invalid_parameter(
                f"Missing value for required parameter 'run_id'.{API_DOCS_HINT}"
            )
        return value

    def integer(self, name: str) -> int | None:
        """An int64 field: a JSON number or a decimal string (proto3 JSON); None if absent."""
        value = self.raw(name)
        return None if value is None else int64(value, name)

    def strings(self, name: str) -> list[str]:
        value = self.raw(name)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(name, value)
        return value

    def objects(self, name: str) -> list[Mapping[str, Any]]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise _type_error(name, value)
        return value


def int64(value: Any, name: str) -> int:
    """An int64 in proto3 JSON (a number or a decimal string), range-checked."""
    try:
        return limits.to_int64(value, name)
    except limits.GatewayInputError as error:
        raise from_input_error(error) from None


def timestamp_ms(value: int, name: str) -> int:
    """Epoch milliseconds a google.protobuf.Timestamp can hold (years 1 to 9999)."""
    try:
        return limits.to_timestamp_ms(value, name)
    except limits.GatewayInputError as error:
        raise from_input_error(error) from None


def double(value: Any, path: str) -> float:
    """A double in proto3 JSON: a number, or "NaN", "Infinity", "-Infinity" or a numeric
    string (an integer literal beyond the largest double is refused)."""
    try:
        return limits.to_double(value, path)
    except limits.GatewayInputError:
        raise invalid_parameter(
            f"Invalid value {shown(value)} for parameter '{path}' supplied: "
            "Please specify value as a valid double (64-bit floating point)"
        ) from None


def json_double(value: float) -> float | str:
    """A double as proto3 JSON writes it: NaN and the infinities as strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value
