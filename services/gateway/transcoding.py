"""REST/JSON <-> gRPC transcoding from the google.api.http annotations (google.api.HttpRule).

Every Binding is compiled once, at app creation, into a CompiledBinding that knows its
request/response classes, which request fields the URL path, the body and the query string
fill, and how to call its backend. Two routes serve them all: one matches method + path
against the bindings (most specific first), the other answers what nothing matched with a
google.rpc.Status 404. No route is written by hand.

Requests
- Path: matched on the raw path (scope["raw_path"]) as google/api/http.proto specifies
  (services.gateway.templates): split on "/", the verb split off at the last unencoded ":",
  a single-segment variable fully percent-decoded, a multi-segment one decoded except
  "%2F". So "/v1/experiments%2Fabc" is one segment and does NOT match
  "/v1/{name=experiments/*}". Variables may name nested fields ("experiment.name",
  "metadata.run"). HEAD is answered wherever GET is, without a body.
- body "*": the JSON body is the request; body "<field>": the body is that field's JSON value
  (object, array or scalar); no body: every non-path field comes from the query string. An
  empty body is an empty message. Path variables win over the body, but a body that sets the
  same field to something else is a 400 (the two must agree).
- Query parameters: the field path of any field not bound by the path or the body, in
  original or lowerCamel spelling per segment ("page_size", "pageSize", "a.b_c"): nested
  singular messages, repeated fields as repeated parameters ("ids=a&ids=b"; commas are not
  split), enums by name or number, bools true/false, 64-bit integers as decimal strings,
  well-known types in their JSON string form (Timestamp RFC 3339, Duration "3.5s"). A
  FieldMask takes comma-separated paths in either spelling ("runName,note" or
  "run_name,note"), and may repeat. `alt` is a system parameter: "json" (the default) or
  "media" (raw bytes download). Anything else is a 400 naming the parameter.
- JSON is parsed with google.protobuf.json_format (proto3 JSON mapping): lowerCamel and
  original field names are both accepted; unknown fields, wrong types and malformed JSON are
  400 INVALID_ARGUMENT naming the field. A body on a JSON binding must be JSON (application/
  json or any +json type; a missing Content-Type is taken as JSON), otherwise 415.
- Limits (services.gateway.limits): a JSON body is at most 8 MiB (413 otherwise), parsed
  off the event loop above 256 KiB; bad UTF-8, malformed or too deeply nested JSON and
  numbers out of range are 400s, never 5xx.
- Client-streaming RPCs: the body is a JSON array of request messages, or one message (a
  stream of one); path variables apply to every message. The array is parsed as it arrives
  (at most 64 MiB and 10,000 messages per request, 413 beyond); arrays up to 8 MiB of JSON
  are validated whole before the backend sees a message, a bigger one streams to the
  backend as it is parsed, so an error in a later element ends the stream after the
  earlier messages were sent (as with any gRPC client stream). A client-streaming request
  whose message is a oneof of a header message and bytes (UploadArtifact) also takes a raw
  body (any non-JSON Content-Type, or none): the first message is the header built from
  path + query parameters, then the body follows in 1 MiB chunks as it arrives (never
  buffered whole). Its query parameters (metadata.*) also apply, like path variables, to
  the header messages of a JSON stream.

Responses
- proto3 JSON with lowerCamel names (json_format's default, as Google APIs answer), fields at
  their default value omitted, 64-bit integers as strings, enums by name, Timestamps in RFC
  3339. response_body selects one field of the response.
- Server-streaming RPCs: newline-delimited JSON (application/x-ndjson), one message a line,
  streamed as messages arrive; with `Accept: text/event-stream`, server-sent events
  ("data: <json>" per message). A failure after the first message ends the stream with
  `{"error": <google.rpc.Status>}` (NDJSON) or `event: error` (SSE). A header+bytes stream
  (DownloadArtifact) with `?alt=media` is sent as the raw bytes (application/octet-stream,
  Content-Length, X-Cairn-Sha256, Content-Disposition); a failure mid-way, or content
  whose sha256 is not the announced one (the last chunk is held back until the digest is
  checked), aborts the connection, so the client sees a short body rather than a silently
  truncated or corrupted file.
- Errors (backend or gateway) are google.rpc.Status JSON with the HTTP status of the code
  (services.gateway.errors); 405 carries an Allow header. Every response echoes X-Request-Id
  (the client's, or one the gateway makes), which is also sent to the backend.

Backend calls go through generic multicallables on the backend's channel, forwarding
Authorization and X-Request-Id as gRPC metadata. Unary calls have a deadline
(settings.gateway_timeout_seconds). Streaming transfers (uploads, downloads, JSON streams)
have an idle timeout of the same length instead, so a transfer that keeps moving is never
cut however long it takes: a client that sends nothing for that long gets 408, a backend
that answers nothing 504 (before the response started; after, the stream ends with an
error event, or the raw download's connection is cut). There is no wait_for_ready: a
backend that is down is a 503 at once.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import grpc.aio
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2  # type: ignore[import-untyped]
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from services.common.request_ids import new_request_id
from services.gateway.backends import Backends
from services.gateway.bindings import Binding
from services.gateway.errors import (
    REQUEST_ID_HEADER,
    error_response,
    invalid_argument,
    make_status,
    status_from_rpc_error,
    status_json,
    status_text,
)
from services.gateway.limits import (
    MAX_JSON_BODY_BYTES,
    MAX_STREAM_BODY_BYTES,
    DigestMismatch,
    GatewayInputError,
    IdleDeadline,
    IdleTimeoutError,
    JsonItem,
    JsonStreamReader,
    check_content_length,
    content_disposition,
    offload,
    parse_json,
    read_body,
    rechunk,
    valid_request_id,
    verify_sha256,
    with_idle_timeout,
    within,
)

log = logging.getLogger(__name__)

# Longest reason quoted from a json_format error (it echoes values, however long).
MAX_REASON_CHARS = 200
# JSON text of a client stream validated whole before the backend call starts.
PREFETCH_JSON_BYTES = MAX_JSON_BODY_BYTES
# How deep query parameters reach into nested messages ("a.b.c.d").
MAX_QUERY_DEPTH = 4

JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
MEDIA_TYPE = "application/octet-stream"
# The end-of-stream marker of grpc.aio reads (absent from the type stubs).
EOF_MARK: Any = grpc.aio.EOF  # type: ignore[attr-defined]
SHA256_HEADER = "X-Cairn-Sha256"

# Well-known message types whose JSON form is a single string or scalar: query parameters
# and path variables set them whole.
_SCALAR_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
# Well-known types a query string cannot express.
_OPAQUE_MESSAGES = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Empty",
    }
)


class GatewayError(Exception):
    """A request the gateway refuses before (or instead of) calling a backend."""

    def __init__(
        self,
        status: status_pb2.Status,
        *,
        http_status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status.message)
        self.status = status
        self.http_status_code = http_status_code
        self.headers = headers


def _bad_request(message: str, field: str) -> GatewayError:
    return GatewayError(invalid_argument(message, field))


def gateway_error(error: GatewayInputError | IdleTimeoutError) -> GatewayError:
    """The google.rpc.Status form of the shared limits' errors."""
    if isinstance(error, IdleTimeoutError):
        return GatewayError(
            make_status(grpc.StatusCode.DEADLINE_EXCEEDED, error.message, error.reason),
            http_status_code=error.http_status,
        )
    if error.http_status == 400 and error.reason == "INVALID_ARGUMENT":
        return GatewayError(invalid_argument(error.message, error.field))
    return GatewayError(
        make_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            error.message,
            error.reason,
            field=error.field,
            **error.metadata,
        ),
        http_status_code=error.http_status,
    )


# =====================================================================================
# Field paths: where a path variable or query parameter lands in a request message.
# =====================================================================================


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _leaf_kind(leaf: FieldDescriptor) -> str:
    """How text becomes the leaf's value: "string" (as is), "bool" (true/false),
    "field_mask" (comma-separated paths) or "json" (through json_format, from its JSON text
    form: numbers, enums, bytes, Timestamp, Duration, wrappers)."""
    message_type = leaf.message_type
    if message_type is not None:
        if message_type.full_name == "google.protobuf.FieldMask" and not _is_repeated(leaf):
            return "field_mask"
        return "bool" if message_type.full_name == "google.protobuf.BoolValue" else "json"
    if leaf.type == FieldDescriptor.TYPE_BOOL:
        return "bool"
    return "string" if leaf.type == FieldDescriptor.TYPE_STRING else "json"


@dataclass(frozen=True, eq=False)
class FieldPath:
    """A leaf field reached through singular message fields, e.g. experiment.name; made
    once per binding, with everything a request needs to set it."""

    fields: tuple[FieldDescriptor, ...]
    name: str  # the lowerCamel dotted spelling, as clients see fields in JSON
    kind: str  # see _leaf_kind
    repeated: bool

    @classmethod
    def of(cls, fields: tuple[FieldDescriptor, ...]) -> FieldPath:
        leaf = fields[-1]
        return cls(
            fields=fields,
            name=".".join(field.json_name for field in fields),
            kind=_leaf_kind(leaf),
            repeated=_is_repeated(leaf),
        )

    @property
    def leaf(self) -> FieldDescriptor:
        return self.fields[-1]

    def parent(self, message: Message) -> Message:
        """The message holding the leaf, created (set) along the way."""
        for field in self.fields[:-1]:
            message = getattr(message, field.name)
        return message

    def current(self, message: Message) -> Any:
        """The leaf's value, without setting anything."""
        value: Any = message
        for field in self.fields:
            value = getattr(value, field.name)
        return value

    def blocked(self, message: Message) -> bool:
        """True when setting this path would displace another member of a oneof (a path
        variable in metadata.run is not set on the stream's chunk messages)."""
        for field in self.fields:
            oneof = field.containing_oneof
            if oneof is not None:
                chosen = message.WhichOneof(oneof.name)
                if chosen is not None and chosen != field.name:
                    return True
            if field is not self.leaf:
                if field.message_type is not None and not message.HasField(field.name):
                    return False
                message = getattr(message, field.name)
        return False

    def assign(self, message: Message, values: Sequence[str], source: str) -> None:
        """Set the leaf from text (a path segment or query values), as its JSON form."""
        parent = self.parent(message)
        leaf = self.leaf
        kind = self.kind
        if kind == "string":
            if self.repeated:
                getattr(parent, leaf.name).extend(values)
            else:
                setattr(parent, leaf.name, values[-1])
            return
        if kind == "field_mask":
            paths = [
                ".".join(
                    segment if "_" in segment else _snake_case(segment)
                    for segment in path.strip().split(".")
                )
                for value in values
                for path in value.split(",")
                if path.strip()
            ]
            getattr(parent, leaf.name).paths.extend(paths)
            return
        converted = [self._json_value(value, source) for value in values]
        try:
            json_format.ParseDict(
                {leaf.name: converted if self.repeated else converted[-1]}, parent
            )
        except json_format.ParseError as error:
            _, reason = _describe_parse_error(error)
            raise _bad_request(f"invalid {source} '{self.name}': {reason}", self.name) from None

    def _json_value(self, text: str, source: str) -> Any:
        if self.kind != "bool":
            return text  # json_format reads numbers, enums and well-known types from text
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise _bad_request(
            f"invalid {source} '{self.name}': expected true or false, got {text!r}", self.name
        )


def resolve_field_path(descriptor: Descriptor, dotted: str) -> FieldPath:
    """The FieldPath of "a.b.c" (original field names) in a message type."""
    fields = []
    current: Descriptor | None = descriptor
    for name in dotted.split("."):
        if current is None or name not in current.fields_by_name:
            raise ValueError(f"{descriptor.full_name} has no field path {dotted!r}")
        field = current.fields_by_name[name]
        fields.append(field)
        current = field.message_type
    path = FieldPath.of(tuple(fields))
    if path.repeated or (
        path.leaf.message_type is not None
        and path.kind == "json"
        and path.leaf.message_type.full_name not in _SCALAR_MESSAGES
    ):
        raise ValueError(f"{descriptor.full_name}.{dotted} cannot be bound to a path variable")
    return path


def _query_leaves(
    descriptor: Descriptor,
    prefix: tuple[FieldDescriptor, ...] = (),
    seen: frozenset[str] = frozenset(),
) -> Iterable[FieldPath]:
    """Every field a query parameter may set: scalars, repeated scalars, scalar-like
    well-known types, and the leaves of singular nested messages (no maps, no repeated
    messages, no recursion beyond MAX_QUERY_DEPTH or into a type already on the path)."""
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        path = (*prefix, field)
        message_type = field.message_type
        if message_type is None or message_type.full_name in _SCALAR_MESSAGES:
            yield FieldPath.of(path)
            continue
        if (
            _is_map(field)
            or _is_repeated(field)
            or message_type.full_name in _OPAQUE_MESSAGES
            or message_type.full_name in seen
            or len(path) >= MAX_QUERY_DEPTH
        ):
            continue
        yield from _query_leaves(message_type, path, seen)


def _spellings(path: FieldPath) -> Iterable[str]:
    """Every accepted spelling of a query parameter: original or lowerCamel per segment."""
    choices = [sorted({field.name, field.json_name}) for field in path.fields]
    for combination in itertools.product(*choices):
        yield ".".join(combination)


def _query_index(
    descriptor: Descriptor, excluded: Callable[[FieldPath], bool]
) -> dict[str, FieldPath]:
    index: dict[str, FieldPath] = {}
    for path in _query_leaves(descriptor):
        if excluded(path):
            continue
        for spelling in _spellings(path):
            index.setdefault(spelling, path)
    return index


# =====================================================================================
# JSON bodies
# =====================================================================================

_PARSE_PREFIX = re.compile(r"Failed to parse (\S+) field: ")
_UNKNOWN_FIELD = re.compile(r'Message type "[^"]+" has no field named "([^"]+)" at "([^"]*)"')
_PARSE_AT = re.compile(r"\s+at ([A-Za-z_][\w.\[\]]*?)\.*$")
_REASONS = (
    (re.compile(r"expected string or bytes-like object, got '(\w+)'"), "expected a string"),
    (re.compile(r"invalid literal for int\(\) with base 10: (.*)"), r"expected an integer, got \1"),
    (re.compile(r"repeated field \S+ must be in \[\].*"), "expected a JSON array"),
    (re.compile(r"Expected true or false without quotes"), "expected true or false"),
)


def _describe_parse_error(error: json_format.ParseError) -> tuple[list[str], str]:
    """(the field path, the reason) of a json_format.ParseError, whose text nests
    'Failed to parse X field: ...' prefixes around the cause and often ends with the path."""
    text = str(error).strip()
    names: list[str] = []
    while (prefix := _PARSE_PREFIX.match(text)) is not None:
        names.append(prefix.group(1))
        text = text[prefix.end() :]
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown is not None:
        return [*unknown.group(2).split(".")[1:], unknown.group(1)], "unknown field"
    at = _PARSE_AT.search(text)
    path = names
    if at is not None:
        path = at.group(1).split(".")[1:] or names
        text = text[: at.start()]
    reason = text.strip().rstrip(".") or "invalid value"
    for pattern, replacement in _REASONS:
        if pattern.fullmatch(reason):
            reason = pattern.sub(replacement, reason)
            break
    if len(reason) > MAX_REASON_CHARS:  # json_format echoes the value, however long
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return path, reason


def _parse_json_into(value: Any, message: Message, *, location: str = "", strip: int = 0) -> None:
    """json_format.ParseDict with a 400 naming the offending field on failure. `strip`
    drops leading path components the client did not write (a body field's own name)."""
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as error:
        path, reason = _describe_parse_error(error)
        field = ".".join(path[strip:])
        where = f"{location}.{field}" if location and field else location or field
        target = f"field '{where}'" if where else "body"
        raise _bad_request(f"invalid request body: {target}: {reason}", where or "body") from None
    except RecursionError:
        raise _bad_request("invalid request body: JSON nested too deeply", "body") from None
    except OverflowError:  # an integer literal too large for a double (1e400 spelled out)
        where = f" {location}" if location else ""
        raise _bad_request(
            f"invalid request body{where}: a number is out of range", location or "body"
        ) from None
    except (TypeError, ValueError, AttributeError) as error:  # not an object where one belongs
        where = f" {location}" if location else ""
        raise _bad_request(
            f"invalid request body{where}: {str(error)[:200]}", location or "body"
        ) from None


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _media_type(headers: Headers) -> str | None:
    content_type = headers.get("content-type")
    if content_type is None:
        return None
    return content_type.partition(";")[0].strip().lower()


def _is_json(media_type: str | None) -> bool:
    return media_type is None or media_type == JSON_TYPE or media_type.endswith("+json")


def _decode_json(raw: bytes) -> Any:
    """The JSON of a request body; client mistakes are 400s naming the body."""
    try:
        return parse_json(raw, field="request body")
    except GatewayInputError as error:
        raise GatewayError(invalid_argument(error.message, "body")) from None


def _message_json(message: Message) -> Any:
    return json_format.MessageToDict(message)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# =====================================================================================
# Compiled bindings
# =====================================================================================


@dataclass(frozen=True)
class MediaParts:
    """A message that is a oneof of exactly one header message and one bytes field (upload
    and download streams)."""

    header: FieldDescriptor
    chunk: FieldDescriptor


def media_parts(descriptor: Descriptor) -> MediaParts | None:
    for oneof in descriptor.oneofs:
        headers = [f for f in oneof.fields if f.message_type is not None]
        chunks = [f for f in oneof.fields if f.type == FieldDescriptor.TYPE_BYTES]
        if len(oneof.fields) == 2 and len(headers) == 1 and len(chunks) == 1:
            return MediaParts(headers[0], chunks[0])
    return None


@dataclass
class CallContext:
    """Per-request values the backend call needs."""

    request_id: str
    metadata: tuple[tuple[str, str], ...]


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def call_context(request: Request) -> CallContext:
    """The request id (the client's when usable under the one rule of
    services.common.request_ids, else a new one) and the metadata forwarded to the backend
    (authorization and x-request-id)."""
    request_id = valid_request_id(request.headers.get("x-request-id"))
    metadata = [("x-request-id", request_id)]
    authorization = request.headers.get("authorization")
    if authorization is not None:
        if not _printable_ascii(authorization):
            raise _bad_request("the Authorization header must be printable ASCII", "Authorization")
        metadata.append(("authorization", authorization))
    return CallContext(request_id, tuple(metadata))


def _trailing_request_id(metadata: Any, fallback: str) -> str:
    """The x-request-id a backend echoed in its trailers (grpc.aio.Metadata or pairs)."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value
    return fallback


def _unique_paths(index: dict[str, FieldPath]) -> list[FieldPath]:
    """The distinct field paths of a query index, in field order."""
    return list(dict.fromkeys(index.values()))


class BindingShape:
    """What a binding accepts and answers, derived once from its descriptors: the single
    source of truth for the transcoder (CompiledBinding) and the OpenAPI document."""

    def __init__(self, binding: Binding) -> None:
        self.binding = binding
        method = binding.method
        self.request_class: type[Message] = message_factory.GetMessageClass(method.input_type)
        self.response_class: type[Message] = message_factory.GetMessageClass(method.output_type)
        request_type: Descriptor = method.input_type
        self.path_fields: dict[str, FieldPath] = {
            variable.field_path: resolve_field_path(request_type, variable.field_path)
            for variable in binding.template.variables
        }
        path_bound = {tuple(f.name for f in p.fields) for p in self.path_fields.values()}
        self.path_spellings = {
            spelling for path in self.path_fields.values() for spelling in _spellings(path)
        }

        def bound_by_path(path: FieldPath) -> bool:
            return tuple(f.name for f in path.fields) in path_bound

        self.body_field: FieldDescriptor | None = None
        if binding.body and binding.body != "*":
            if binding.body not in request_type.fields_by_name:
                raise ValueError(f"{binding.grpc_path}: no body field {binding.body!r}")
            self.body_field = request_type.fields_by_name[binding.body]
        body_field = self.body_field
        # The JSON kind a body field's value must have (None: json_format decides, e.g. a
        # scalar or a Timestamp string).
        self.body_json_kind: str | None = None
        if body_field is not None:
            if _is_map(body_field):
                self.body_json_kind = "object"
            elif _is_repeated(body_field):
                self.body_json_kind = "array"
            elif body_field.message_type is not None and (
                body_field.message_type.full_name not in _SCALAR_MESSAGES | _OPAQUE_MESSAGES
            ):
                self.body_json_kind = "object"

        if binding.body == "*":
            self.query_index: dict[str, FieldPath] = {}
        else:
            self.query_index = _query_index(
                request_type,
                lambda p: (
                    bound_by_path(p) or (body_field is not None and p.fields[0] == body_field)
                ),
            )

        # Raw uploads: a client stream of header-or-bytes messages takes any non-JSON body;
        # its query parameters set the header (and the header messages of a JSON stream).
        self.upload = media_parts(request_type) if binding.client_streaming else None
        self.upload_query_index: dict[str, FieldPath] = {}
        if self.upload is not None:
            upload = self.upload
            self.upload_query_index = _query_index(
                request_type, lambda p: bound_by_path(p) or p.fields[0] == upload.chunk
            )
        # alt=media downloads: a server stream of header-then-bytes messages.
        self.download = media_parts(method.output_type) if binding.server_streaming else None
        self.response_field: FieldDescriptor | None = None
        if binding.response_body:
            if binding.response_body not in method.output_type.fields_by_name:
                raise ValueError(
                    f"{binding.grpc_path}: no response field {binding.response_body!r}"
                )
            self.response_field = method.output_type.fields_by_name[binding.response_body]

    @property
    def query_paths(self) -> list[FieldPath]:
        """The fields query parameters set (with a JSON body or none)."""
        return _unique_paths(self.query_index)

    @property
    def upload_query_paths(self) -> list[FieldPath]:
        """The fields query parameters set next to an upload (raw or JSON)."""
        return _unique_paths(self.upload_query_index)

    @property
    def json_stream_query_index(self) -> dict[str, FieldPath]:
        """Query parameters of a client-streaming JSON body."""
        return self.upload_query_index if self.upload is not None else self.query_index


@functools.cache
def binding_shape(binding: Binding) -> BindingShape:
    return BindingShape(binding)


class CompiledBinding(BindingShape):
    """One google.api.http binding, ready to serve: request building, the backend call and
    the response, with every descriptor lookup done once here."""

    def __init__(self, binding: Binding, backends: Backends) -> None:
        super().__init__(binding)
        self.backends = backends
        self._callable: tuple[grpc.aio.Channel, Any] | None = None

    @property
    def idle_seconds(self) -> float:
        """The idle timeout of streaming transfers (and the deadline of unary calls)."""
        return self.backends.timeout

    # --- requests ---------------------------------------------------------------------

    async def build_request(self, request: Request) -> Message:
        """The request message of a unary-request call (path, body, query)."""
        message = self.request_class()
        if self.binding.body:
            await self._apply_body(request, message)
        self._apply_query(message, request, self.query_index)
        self._apply_path(message, request.path_params)
        return message

    async def build_stream(
        self, request: Request, failures: list[BaseException], deadline: IdleDeadline
    ) -> AsyncIterator[Message]:
        """The request messages of a client-streaming call, from a JSON body (parsed as it
        arrives) or a raw upload. Errors after the call started land in `failures` (and
        cancel the call); errors in the first PREFETCH_JSON_BYTES of a JSON body are raised
        here, before any message reaches the backend."""
        media_type = _media_type(request.headers)
        if self.upload is not None and not (media_type is not None and _is_json(media_type)):
            return self._upload_stream(request, failures, deadline)
        if not _is_json(media_type):
            raise self._unsupported_media_type(media_type)
        query = self._parse_query(request, self.json_stream_query_index)
        try:
            check_content_length(request, limit=MAX_STREAM_BODY_BYTES)
        except GatewayInputError as error:
            raise gateway_error(error) from None
        parsed = self._json_stream(request, query, deadline)
        prefetched: list[Message] = []
        size = 0
        while size <= PREFETCH_JSON_BYTES:
            try:
                message, item_size = await anext(parsed)
            except StopAsyncIteration:
                return _replay(prefetched, None, failures)
            except GatewayInputError as error:
                raise gateway_error(error) from None
            except IdleTimeoutError as error:
                raise gateway_error(error) from None
            prefetched.append(message)
            size += item_size
        return _replay(prefetched, parsed, failures)

    async def _json_stream(
        self, request: Request, query: dict[FieldPath, list[str]], deadline: IdleDeadline
    ) -> AsyncIterator[tuple[Message, int]]:
        chunks = with_idle_timeout(
            request.stream(), self.idle_seconds, side="client", deadline=deadline
        )
        reader = JsonStreamReader(chunks)
        async for item in reader:
            yield await self._stream_message(item, bool(reader.is_array), query, request), item.size
        if reader.blank:  # an empty body is one empty message
            yield await self._stream_message(JsonItem(0, {}, 0), False, query, request), 0

    async def _stream_message(
        self,
        item: JsonItem,
        in_array: bool,
        query: dict[FieldPath, list[str]],
        request: Request,
    ) -> Message:
        location = f"[{item.index}]" if in_array else ""
        if not isinstance(item.value, dict):
            raise _bad_request(
                f"invalid request body{' ' + location if location else ''}: expected a JSON "
                f"object for {self.request_class.DESCRIPTOR.name}, got {_json_kind(item.value)}",
                location or "body",
            )
        message = self.request_class()
        await offload(
            item.size, functools.partial(_parse_json_into, location=location), item.value, message
        )
        self._apply_bound(message, query, "query parameter")
        self._apply_path(message, request.path_params)
        return message

    def _upload_stream(
        self, request: Request, failures: list[BaseException], deadline: IdleDeadline
    ) -> AsyncIterator[Message]:
        assert self.upload is not None
        header = self.request_class()
        getattr(header, self.upload.header.name).SetInParent()
        self._apply_query(header, request, self.upload_query_index)
        self._apply_path(header, request.path_params)
        chunk_field = self.upload.chunk.name
        request_class = self.request_class
        body = with_idle_timeout(
            request.stream(), self.idle_seconds, side="client", deadline=deadline
        )

        async def messages() -> AsyncIterator[Message]:
            yield header
            try:
                async for piece in rechunk(body):
                    yield request_class(**{chunk_field: piece})
            except Exception as error:
                # Raising cancels the call (a short upload is never completed); the reason
                # is reported instead of the CANCELLED status.
                failures.append(error)
                raise

        return messages()

    async def _apply_body(self, request: Request, message: Message) -> None:
        try:
            raw = await read_body(
                request, limit=MAX_JSON_BODY_BYTES, idle_seconds=self.idle_seconds
            )
        except (GatewayInputError, IdleTimeoutError) as error:
            raise gateway_error(error) from None
        body_field = self.body_field
        if not raw.strip():
            if (
                self.body_json_kind == "object"
                and body_field is not None
                and not _is_map(body_field)
            ):
                getattr(message, body_field.name).SetInParent()
            return
        media_type = _media_type(request.headers)
        if not _is_json(media_type):
            raise self._unsupported_media_type(media_type)
        value = await offload(len(raw), _decode_json, raw)
        if body_field is None:
            if not isinstance(value, dict):
                raise _bad_request(
                    f"invalid request body: expected a JSON object for "
                    f"{self.request_class.DESCRIPTOR.name}, got {_json_kind(value)}",
                    "body",
                )
            await offload(len(raw), _parse_json_into, value, message)
        else:
            expected = self.body_json_kind
            if expected is not None and _json_kind(value) != expected:
                raise _bad_request(
                    f"invalid request body: expected a JSON {expected} for "
                    f"'{body_field.json_name}', got {_json_kind(value)}",
                    "body",
                )
            await offload(
                len(raw),
                functools.partial(_parse_json_into, strip=1),
                {body_field.name: value},
                message,
            )

    def _unsupported_media_type(self, media_type: str | None) -> GatewayError:
        accepted = JSON_TYPE + (" (or raw bytes for an upload)" if self.upload else "")
        return GatewayError(
            make_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unsupported Content-Type {media_type!r}: send {accepted}",
                "UNSUPPORTED_MEDIA_TYPE",
                content_type=media_type or "",
            ),
            http_status_code=415,
        )

    def _parse_query(
        self, request: Request, index: dict[str, FieldPath]
    ) -> dict[FieldPath, list[str]]:
        """The query parameters grouped by the field they set (unknown ones are 400s)."""
        grouped: dict[FieldPath, list[str]] = {}
        for name, value in request.query_params.multi_items():
            if name == "alt":
                continue
            path = index.get(name)
            if path is None:
                raise self._unknown_parameter(name, index)
            grouped.setdefault(path, []).append(value)
        for path, values in grouped.items():
            if len(values) > 1 and not path.repeated and path.kind != "field_mask":
                raise _bad_request(
                    f"query parameter '{path.name}' is not repeated but was given "
                    f"{len(values)} times",
                    path.name,
                )
        return grouped

    def _apply_query(self, message: Message, request: Request, index: dict[str, FieldPath]) -> None:
        for path, values in self._parse_query(request, index).items():
            path.assign(message, values, "query parameter")

    def _unknown_parameter(self, name: str, index: dict[str, FieldPath]) -> GatewayError:
        where = f"{self.binding.http_method} {self.binding.template.source}"
        body_field = self.body_field
        if name in self.path_spellings:
            hint = "it is set by the URL path"
        elif not index and self.binding.body == "*":
            hint = "this method takes its fields in the JSON body"
        elif body_field is not None and name.split(".")[0] in (
            body_field.name,
            body_field.json_name,
        ):
            hint = f"'{body_field.json_name}' is the JSON body"
        else:
            accepted = sorted({path.name for path in index.values()})
            hint = "accepted: " + (", ".join(accepted[:25]) if accepted else "none")
            if len(accepted) > 25:
                hint += ", ..."
        return _bad_request(f"unknown query parameter '{name}' for {where} ({hint})", name)

    def _apply_path(self, message: Message, values: dict[str, str]) -> None:
        self._apply_bound(
            message,
            {self.path_fields[variable]: [text] for variable, text in values.items()},
            "path segment",
        )

    @staticmethod
    def _apply_bound(message: Message, values: dict[FieldPath, list[str]], source: str) -> None:
        """Set fields bound outside the body (path variables; query parameters of a JSON
        stream) on a message parsed from the body: skipped where they would displace
        another oneof member, and a body value that disagrees is a 400."""
        where = "the URL path" if source == "path segment" else "the query string"
        for path, texts in values.items():
            if path.blocked(message):
                continue
            current = path.current(message)
            text = texts[-1]
            if path.kind == "string" and not path.repeated and current and current != text:
                raise _bad_request(
                    f"field '{path.name}' is {current!r} in the body but {text!r} in {where}; "
                    "they must agree",
                    path.name,
                )
            path.assign(message, texts, source)

    # --- the call ---------------------------------------------------------------------

    def _multicallable(self) -> Any:
        channel = self.backends.channel_for(self.binding.service)
        if self._callable is None or self._callable[0] is not channel:
            kind = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(self.binding.client_streaming, self.binding.server_streaming)]
            self._callable = (
                channel,
                kind(
                    self.binding.grpc_path,
                    request_serializer=self.request_class.SerializeToString,
                    response_deserializer=self.response_class.FromString,
                ),
            )
        return self._callable[1]

    async def call(self, request: Request, context: CallContext) -> Response:
        """Build the request, call the backend, render the response (errors raise)."""
        alt = self._alt(request)
        failures: list[BaseException] = []
        binding = self.binding
        streaming = binding.client_streaming or binding.server_streaming
        deadline = IdleDeadline(self.idle_seconds)
        outgoing: Any = (
            await self.build_stream(request, failures, deadline)
            if binding.client_streaming
            else await self.build_request(request)
        )
        # Unary calls: a plain deadline. Streams: the idle timeouts instead (limits).
        call = self._multicallable()(
            outgoing,
            timeout=None if streaming else self.idle_seconds,
            metadata=context.metadata,
        )
        if binding.server_streaming:
            return await self._stream_response(request, call, context, alt)
        try:
            response = await (deadline.guard(call) if binding.client_streaming else call)
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
            # A client stream whose body failed cancels its call: report why instead.
            cancelled = not isinstance(error, grpc.aio.AioRpcError) or (
                error.code() == grpc.StatusCode.CANCELLED
            )
            if failures and cancelled and not _being_cancelled():
                raise self._upload_failure(failures[0]) from None
            raise
        request_id = _trailing_request_id(await call.trailing_metadata(), context.request_id)
        return Response(
            _dumps(self._response_json(response)) + "\n",
            media_type=JSON_TYPE,
            headers={REQUEST_ID_HEADER: request_id},
        )

    def _alt(self, request: Request) -> str:
        values = request.query_params.getlist("alt")
        if len(values) > 1:
            raise _bad_request("query parameter 'alt' was given more than once", "alt")
        alt = values[0] if values else "json"
        if alt not in ("json", "media"):
            raise _bad_request(f"invalid query parameter 'alt': {alt!r} (json or media)", "alt")
        if alt == "media" and self.download is None:
            raise _bad_request(
                f"alt=media is not supported by {self.binding.method.name}: it streams no bytes",
                "alt",
            )
        return alt

    @staticmethod
    def _upload_failure(error: BaseException) -> GatewayError:
        if isinstance(error, GatewayError):
            return error
        if isinstance(error, GatewayInputError | IdleTimeoutError):
            return gateway_error(error)
        if isinstance(error, ClientDisconnect):
            message = "the client disconnected during the upload; nothing was stored"
        else:
            message = "reading the upload failed; nothing was stored"
        return GatewayError(make_status(grpc.StatusCode.CANCELLED, message, "UPLOAD_INTERRUPTED"))

    def _response_json(self, response: Message) -> Any:
        field = self.response_field
        if field is None:
            return _message_json(response)
        if field.message_type is not None and not _is_repeated(field):
            return _message_json(getattr(response, field.name))
        everything = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        return everything.get(field.json_name)

    async def _read(self, call: Any) -> Any:
        """The backend's next message, within the idle timeout (IdleTimeoutError backend)."""
        return await within(call.read(), self.idle_seconds, side="backend")

    async def _stream_response(
        self, request: Request, call: Any, context: CallContext, alt: str
    ) -> Response:
        # Read the first message before answering, so that an error before it (not found,
        # unauthenticated, backend down, no answer in time) is a proper JSON error with its
        # HTTP status.
        try:
            first = await self._read(call)
        except BaseException:
            call.cancel()
            raise
        headers = {REQUEST_ID_HEADER: context.request_id}
        head = request.method == "HEAD"
        if alt == "media":
            return self._media_response(call, first, headers, head=head)
        accept = request.headers.get("accept", "")
        sse = SSE_TYPE in accept.lower()
        media_type = SSE_TYPE if sse else NDJSON_TYPE
        if sse:
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if head:
            call.cancel()
            return StreamingResponse(_nothing(), media_type=media_type, headers=headers)

        def render(message: Message) -> str:
            text = _dumps(self._response_json(message))
            return f"data: {text}\n\n" if sse else text + "\n"

        def render_error(status: status_pb2.Status) -> str:
            if sse:
                return f"event: error\ndata: {status_text(status)}\n\n"
            return _dumps({"error": status_json(status)}) + "\n"

        async def lines() -> AsyncIterator[str]:
            message = first
            try:
                while message is not EOF_MARK:
                    yield render(message)
                    message = await self._read(call)
            except grpc.aio.AioRpcError as error:
                yield render_error(status_from_rpc_error(error))
            except IdleTimeoutError as error:
                yield render_error(gateway_error(error).status)
            finally:
                call.cancel()

        return StreamingResponse(lines(), media_type=media_type, headers=headers)

    def _media_response(
        self, call: Any, first: Any, headers: dict[str, str], *, head: bool
    ) -> Response:
        assert self.download is not None
        header_name, chunk_name = self.download.header.name, self.download.chunk.name
        oneof = self.download.header.containing_oneof
        if first is EOF_MARK or oneof is None or first.WhichOneof(oneof.name) != header_name:
            call.cancel()
            raise GatewayError(
                make_status(
                    grpc.StatusCode.INTERNAL,
                    f"{self.binding.method.name} did not start with its {header_name}",
                    "BAD_BACKEND_STREAM",
                )
            )
        header = getattr(first, header_name)
        fields = header.DESCRIPTOR.fields_by_name
        if "size_bytes" in fields:
            headers["Content-Length"] = str(header.size_bytes)
        expected = header.sha256 if "sha256" in fields else ""
        if expected:
            headers[SHA256_HEADER] = expected
        if "path" in fields and header.path:
            headers["Content-Disposition"] = content_disposition(header.path.rsplit("/", 1)[-1])
        if head:
            call.cancel()
            return Response(media_type=MEDIA_TYPE, headers=headers)
        method_name = self.binding.method.name

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await self._read(call)
                if message is EOF_MARK:
                    return
                yield getattr(message, chunk_name)

        async def content() -> AsyncIterator[bytes]:
            # Headers (and Content-Length) are sent: only a cut connection tells the client
            # the body is incomplete. The last chunk waits for the digest check.
            try:
                async for piece in verify_sha256(chunks(), expected):
                    yield piece
            except grpc.aio.AioRpcError as error:
                status = status_from_rpc_error(error)
                log.warning("%s failed mid-download: %s", method_name, status.message)
                raise MediaStreamAborted(status.message) from None
            except IdleTimeoutError as error:
                log.warning("%s stalled mid-download: %s", method_name, error.message)
                raise MediaStreamAborted(error.message) from None
            except DigestMismatch as error:
                log.error("%s sent corrupted content: %s", method_name, error)
                raise MediaStreamAborted(str(error)) from None
            finally:
                call.cancel()

        return StreamingResponse(content(), media_type=MEDIA_TYPE, headers=headers)


async def _replay(
    prefetched: list[Message],
    rest: AsyncIterator[tuple[Message, int]] | None,
    failures: list[BaseException],
) -> AsyncIterator[Message]:
    """The prefetched messages, then the rest of the stream as it is parsed (its errors go
    to `failures` and cancel the call)."""
    for message in prefetched:
        yield message
    if rest is None:
        return
    try:
        async for message, _ in rest:
            yield message
    except Exception as error:
        failures.append(error)
        raise


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


class MediaStreamAborted(Exception):
    """A raw download failed after its headers were sent; the connection is dropped."""


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# =====================================================================================
# Routes
# =====================================================================================


def _request_path(scope: Scope) -> str:
    """The request path still percent-encoded (templates decode variables per http.proto)."""
    raw = scope.get("raw_path")
    if raw:
        path = bytes(raw).decode("utf-8", "replace")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path
    return quote(str(scope["path"]), safe="/:@!$&'()*+,;=-._~")


def _route_error_response(request: Request, status: status_pb2.Status, **kwargs: Any) -> Response:
    try:
        request_id = call_context(request).request_id
    except GatewayError:
        request_id = new_request_id()
    return error_response(status, request_id, **kwargs)


def _serves(compiled: CompiledBinding, method: str) -> bool:
    """HEAD is served wherever GET is (RFC 9110 9.3.2)."""
    http_method = compiled.binding.http_method
    return http_method == method or (method == "HEAD" and http_method == "GET")


def _allowed_methods(allowed: Sequence[CompiledBinding]) -> list[str]:
    methods = {c.binding.http_method for c in allowed}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class TranscodingRoute(BaseRoute):
    """Serves every compiled binding: FULL when method and path match one, PARTIAL (405)
    when only the path does."""

    def __init__(self, compiled: Sequence[CompiledBinding]) -> None:
        self.compiled = list(compiled)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = _request_path(scope)
        method = scope["method"]
        allowed: list[CompiledBinding] = []
        for compiled in self.compiled:
            values = compiled.binding.template.match(path)
            if values is None:
                continue
            if _serves(compiled, method):
                return Match.FULL, {"path_params": values, "cairn.binding": compiled}
            allowed.append(compiled)
        if allowed:
            return Match.PARTIAL, {"cairn.allowed": allowed}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        compiled: CompiledBinding | None = scope.get("cairn.binding")
        if compiled is None:
            allowed: list[CompiledBinding] = scope["cairn.allowed"]
            request.state.route_label = allowed[0].binding.template.source
            methods = _allowed_methods(allowed)
            status = make_status(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {request.method} is not allowed for {request.url.path} "
                f"(allowed: {', '.join(methods)})",
                "METHOD_NOT_ALLOWED",
                allowed=", ".join(methods),
            )
            response = _route_error_response(
                request, status, http_status_code=405, headers={"Allow": ", ".join(methods)}
            )
        else:
            request.state.route_label = compiled.binding.template.source
            response = await serve(compiled, request)
        try:
            await response(scope, receive, send)
        except MediaStreamAborted:
            # Returning with the body incomplete makes the server drop the connection.
            return


async def serve(compiled: CompiledBinding, request: Request) -> Response:
    """One transcoded request; every failure becomes a google.rpc.Status response."""
    request_id = None
    try:
        context = call_context(request)
        request_id = context.request_id
        return await compiled.call(request, context)
    except GatewayError as error:
        return error_response(
            error.status,
            request_id or new_request_id(),
            http_status_code=error.http_status_code,
            headers=error.headers,
        )
    except (GatewayInputError, IdleTimeoutError) as error:
        converted = gateway_error(error)
        return error_response(
            converted.status,
            request_id or new_request_id(),
            http_status_code=converted.http_status_code,
        )
    except grpc.aio.AioRpcError as error:
        status = status_from_rpc_error(error)
        return error_response(
            status, _trailing_request_id(error.trailing_metadata(), request_id or "")
        )
    except ClientDisconnect:
        return Response(status_code=499)
    except asyncio.CancelledError:
        if _being_cancelled():
            raise
        # The backend call was cancelled from our side (its request stream failed).
        log.warning("%s call cancelled (request id %s)", compiled.binding.grpc_path, request_id)
        return error_response(
            make_status(grpc.StatusCode.CANCELLED, "the backend call was cancelled", "CANCELLED"),
            request_id,
        )
    except Exception:
        log.exception(
            "gateway error in %s %s (request id %s)",
            request.method,
            compiled.binding.template.source,
            request_id,
        )
        message = "internal gateway error" + (f" (request id {request_id})" if request_id else "")
        return error_response(
            make_status(grpc.StatusCode.INTERNAL, message, "INTERNAL"), request_id
        )


class NotFoundRoute(BaseRoute):
    """The last resort: a google.rpc.Status 404 for a path no route knows. It matches
    PARTIAL so any earlier route's own 405 still wins."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.PARTIAL, {}) if scope["type"] == "http" else (Match.NONE, {})

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        request.state.route_label = "unmatched"
        status = make_status(
            grpc.StatusCode.NOT_FOUND,
            f"no route for {request.method} {request.url.path}",
            "ROUTE_NOT_FOUND",
        )
        await _route_error_response(request, status)(scope, receive, send)


def compile_bindings(bindings: Sequence[Binding], backends: Backends) -> list[CompiledBinding]:
    return [CompiledBinding(binding, backends) for binding in bindings]


def routes(bindings: list[Binding], backends: Backends) -> list[BaseRoute]:
    """The transcoded API: one route for every binding (in the given, most specific first,
    order), then the JSON 404 for everything else."""
    return [TranscodingRoute(compile_bindings(bindings, backends)), NotFoundRoute()]
