"""REST/JSON <-> gRPC transcoding from the google.api.http annotations (google.api.HttpRule).

Every Binding is compiled once, at app creation, into a CompiledBinding that knows its
request/response classes, which request fields the URL path, the body and the query string
fill, and how to call its backend. Two routes serve them all: one matches method + path
against the bindings (most specific first), the other answers what nothing matched with a
google.rpc.Status 404. No route is written by hand.

Requests
- Path: matched on the raw path (scope["raw_path"]), which the template percent-decodes once;
  so "/v1/experiments%2Fabc" matches "/v1/{name=experiments/*}" and a literal "%25" stays
  "%". Variables may name nested fields ("experiment.name", "metadata.run").
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
- Client-streaming RPCs: the body is a JSON array of request messages, or one message (a
  stream of one); path variables apply to every message. A client-streaming request whose
  message is a oneof of a header message and bytes (UploadArtifact) also takes a raw body
  (any non-JSON Content-Type, or none): the first message is the header built from path + query
  parameters, then the body follows in 1 MiB chunks as it arrives (never buffered whole).

Responses
- proto3 JSON with lowerCamel names (json_format's default, as Google APIs answer), fields at
  their default value omitted, 64-bit integers as strings, enums by name, Timestamps in RFC
  3339. response_body selects one field of the response.
- Server-streaming RPCs: newline-delimited JSON (application/x-ndjson), one message a line,
  streamed as messages arrive; with `Accept: text/event-stream`, server-sent events
  ("data: <json>" per message). A failure after the first message ends the stream with
  `{"error": <google.rpc.Status>}` (NDJSON) or `event: error` (SSE). A header+bytes stream
  (DownloadArtifact) with `?alt=media` is sent as the raw bytes (application/octet-stream,
  Content-Length, X-Cairn-Sha256, Content-Disposition); a failure mid-way aborts the
  connection, so the client sees a short body rather than a silently truncated file.
- Errors (backend or gateway) are google.rpc.Status JSON with the HTTP status of the code
  (services.gateway.errors); 405 carries an Allow header. Every response echoes X-Request-Id
  (the client's, or one the gateway makes), which is also sent to the backend.

Backend calls go through generic multicallables on the backend's channel with a deadline
(settings.gateway_timeout_seconds; for streams it bounds the whole transfer), forwarding
Authorization and X-Request-Id as gRPC metadata. There is no wait_for_ready: a backend that
is down is a 503 at once, a slow one a 504 at the deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import uuid
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

from services.common.settings import Settings
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

log = logging.getLogger(__name__)

MAX_JSON_BODY_BYTES = 64 << 20
UPLOAD_CHUNK_BYTES = 1 << 20
MAX_REQUEST_ID_LENGTH = 128
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
    except (TypeError, ValueError, AttributeError) as error:  # not an object where one belongs
        where = f" {location}" if location else ""
        raise _bad_request(f"invalid request body{where}: {error}", location or "body") from None
    except RecursionError:
        raise _bad_request("invalid request body: JSON nested too deeply", "body") from None


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


async def _read_body(request: Request, limit: int = MAX_JSON_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        make_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request body larger than {limit >> 20} MiB",
            "REQUEST_TOO_LARGE",
            limit_bytes=str(limit),
        ),
        http_status_code=413,
    )


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise _bad_request("invalid request body: not UTF-8 JSON", "body") from None
    except RecursionError:
        raise _bad_request("invalid request body: JSON nested too deeply", "body") from None
    except json.JSONDecodeError as error:
        raise _bad_request(
            f"invalid request body: malformed JSON at line {error.lineno} column {error.colno}: "
            f"{error.msg}",
            "body",
        ) from None


def _message_json(message: Message) -> Any:
    return json_format.MessageToDict(message)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# =====================================================================================
# Compiled bindings
# =====================================================================================


@dataclass(frozen=True)
class _MediaParts:
    """A message that is a oneof of a header message and bytes (upload/download streams)."""

    header: FieldDescriptor
    chunk: FieldDescriptor


def _media_parts(descriptor: Descriptor) -> _MediaParts | None:
    for oneof in descriptor.oneofs:
        headers = [f for f in oneof.fields if f.message_type is not None]
        chunks = [f for f in oneof.fields if f.type == FieldDescriptor.TYPE_BYTES]
        if len(oneof.fields) == 2 and len(headers) == 1 and len(chunks) == 1:
            return _MediaParts(headers[0], chunks[0])
    return None


@dataclass
class CallContext:
    """Per-request values the backend call needs."""

    request_id: str
    metadata: tuple[tuple[str, str], ...]


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def call_context(request: Request) -> CallContext:
    """The request id (the client's when it is usable, else a new one) and the metadata
    forwarded to the backend (authorization and x-request-id)."""
    supplied = request.headers.get("x-request-id", "").strip()
    usable = 0 < len(supplied) <= MAX_REQUEST_ID_LENGTH and _printable_ascii(supplied)
    request_id = supplied if usable else uuid.uuid4().hex
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


class CompiledBinding:
    """One google.api.http binding, ready to serve: request building, the backend call and
    the response, with every descriptor lookup done once here."""

    def __init__(self, binding: Binding, backends: Backends) -> None:
        self.binding = binding
        self.backends = backends
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

        # Raw uploads: a client stream of header-or-bytes messages takes any non-JSON body.
        self.upload = _media_parts(request_type) if binding.client_streaming else None
        self.upload_query_index: dict[str, FieldPath] = {}
        if self.upload is not None:
            upload = self.upload
            self.upload_query_index = _query_index(
                request_type, lambda p: bound_by_path(p) or p.fields[0] == upload.chunk
            )
        # alt=media downloads: a server stream of header-then-bytes messages.
        self.download = _media_parts(method.output_type) if binding.server_streaming else None
        self.response_field: FieldDescriptor | None = None
        if binding.response_body:
            if binding.response_body not in method.output_type.fields_by_name:
                raise ValueError(
                    f"{binding.grpc_path}: no response field {binding.response_body!r}"
                )
            self.response_field = method.output_type.fields_by_name[binding.response_body]
        self._callable: tuple[grpc.aio.Channel, Any] | None = None

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
        self, request: Request, failures: list[BaseException]
    ) -> list[Message] | AsyncIterator[Message]:
        """The request messages of a client-streaming call: a list parsed from a JSON body,
        or an async iterator over a raw upload (whose errors land in `failures`)."""
        media_type = _media_type(request.headers)
        if self.upload is not None and not (media_type is not None and _is_json(media_type)):
            return await self._upload_stream(request, failures)
        if not _is_json(media_type):
            raise self._unsupported_media_type(media_type)
        self._apply_query(self.request_class(), request, self.query_index)
        raw = await _read_body(request)
        items: list[Any]
        if not raw.strip():
            items = [{}]
        else:
            value = _decode_json(raw)
            items = value if isinstance(value, list) else [value]
        messages = []
        for position, item in enumerate(items):
            location = f"[{position}]" if len(items) > 1 or isinstance(item, list) else ""
            if not isinstance(item, dict):
                raise _bad_request(
                    f"invalid request body{' ' + location if location else ''}: expected a JSON "
                    f"object for {self.request_class.DESCRIPTOR.name}, got {_json_kind(item)}",
                    location or "body",
                )
            message = self.request_class()
            _parse_json_into(item, message, location=location)
            self._apply_path(message, request.path_params)
            messages.append(message)
        return messages

    async def _upload_stream(
        self, request: Request, failures: list[BaseException]
    ) -> AsyncIterator[Message]:
        assert self.upload is not None
        header = self.request_class()
        getattr(header, self.upload.header.name).SetInParent()
        self._apply_query(header, request, self.upload_query_index)
        self._apply_path(header, request.path_params)
        chunk_field = self.upload.chunk.name
        request_class = self.request_class

        async def messages() -> AsyncIterator[Message]:
            yield header
            pending = bytearray()
            try:
                async for piece in request.stream():
                    pending += piece
                    while len(pending) >= UPLOAD_CHUNK_BYTES:
                        yield request_class(**{chunk_field: bytes(pending[:UPLOAD_CHUNK_BYTES])})
                        del pending[:UPLOAD_CHUNK_BYTES]
                if pending:
                    yield request_class(**{chunk_field: bytes(pending)})
            except Exception as error:
                # Raising cancels the call (a short upload is never completed); the reason
                # is reported instead of the CANCELLED status.
                failures.append(error)
                raise

        return messages()

    async def _apply_body(self, request: Request, message: Message) -> None:
        raw = await _read_body(request)
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
        value = _decode_json(raw)
        if body_field is None:
            if not isinstance(value, dict):
                raise _bad_request(
                    f"invalid request body: expected a JSON object for "
                    f"{self.request_class.DESCRIPTOR.name}, got {_json_kind(value)}",
                    "body",
                )
            _parse_json_into(value, message)
        else:
            expected = self.body_json_kind
            if expected is not None and _json_kind(value) != expected:
                raise _bad_request(
                    f"invalid request body: expected a JSON {expected} for "
                    f"'{body_field.json_name}', got {_json_kind(value)}",
                    "body",
                )
            _parse_json_into({body_field.name: value}, message, strip=1)

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

    def _apply_query(self, message: Message, request: Request, index: dict[str, FieldPath]) -> None:
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
        for variable, text in values.items():
            path = self.path_fields[variable]
            if path.blocked(message):
                continue
            current = path.current(message)
            if path.kind == "string" and current and current != text:
                raise _bad_request(
                    f"field '{path.name}' is {current!r} in the body but {text!r} in the URL "
                    "path; they must agree",
                    path.name,
                )
            path.assign(message, [text], "path segment")

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
        outgoing: Any = (
            await self.build_stream(request, failures)
            if self.binding.client_streaming
            else await self.build_request(request)
        )
        call = self._multicallable()(
            outgoing, timeout=self.backends.timeout, metadata=context.metadata
        )
        if self.binding.server_streaming:
            return await self._stream_response(request, call, context, alt)
        try:
            response = await call
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
            # A raw upload whose body failed cancels its call: report why instead.
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

    async def _stream_response(
        self, request: Request, call: Any, context: CallContext, alt: str
    ) -> Response:
        # Read the first message before answering, so that an error before it (not found,
        # unauthenticated, backend down) is a proper JSON error with its HTTP status.
        try:
            first = await call.read()
        except BaseException:
            call.cancel()
            raise
        headers = {REQUEST_ID_HEADER: context.request_id}
        if alt == "media":
            return self._media_response(call, first, headers)
        accept = request.headers.get("accept", "")
        sse = SSE_TYPE in accept.lower()

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
                    message = await call.read()
            except grpc.aio.AioRpcError as error:
                yield render_error(status_from_rpc_error(error))
            finally:
                call.cancel()

        if sse:
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return StreamingResponse(
            lines(), media_type=SSE_TYPE if sse else NDJSON_TYPE, headers=headers
        )

    def _media_response(self, call: Any, first: Any, headers: dict[str, str]) -> Response:
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
        if "sha256" in fields and header.sha256:
            headers[SHA256_HEADER] = header.sha256
        if "path" in fields and header.path:
            headers["Content-Disposition"] = content_disposition(header.path.rsplit("/", 1)[-1])
        method_name = self.binding.method.name

        async def content() -> AsyncIterator[bytes]:
            try:
                while True:
                    message = await call.read()
                    if message is EOF_MARK:
                        return
                    yield getattr(message, chunk_name)
            except grpc.aio.AioRpcError as error:
                # Headers (and Content-Length) are sent: only a cut connection tells the
                # client the body is incomplete.
                status = status_from_rpc_error(error)
                log.warning("%s failed mid-download: %s", method_name, status.message)
                raise MediaStreamAborted(status.message) from None
            finally:
                call.cancel()

        return StreamingResponse(content(), media_type=MEDIA_TYPE, headers=headers)


class MediaStreamAborted(Exception):
    """A raw download failed after its headers were sent; the connection is dropped."""


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def content_disposition(filename: str) -> str:
    """attachment; filename="..." with an RFC 6266 / 5987 UTF-8 form for other names."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    value = f'attachment; filename="{fallback or "download"}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


# =====================================================================================
# Routes
# =====================================================================================


def _request_path(scope: Scope) -> str:
    """The request path still percent-encoded (templates decode it exactly once)."""
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
        request_id = uuid.uuid4().hex
    return error_response(status, request_id, **kwargs)


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
            if compiled.binding.http_method == method:
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
            methods = sorted({c.binding.http_method for c in allowed})
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
            request_id or uuid.uuid4().hex,
            http_status_code=error.http_status_code,
            headers=error.headers,
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


def routes(bindings: list[Binding], backends: Backends, settings: Settings) -> list[BaseRoute]:
    """The transcoded API: one route for every binding (in the given, most specific first,
    order), then the JSON 404 for everything else."""
    del settings  # the deadline and backend addresses come with `backends`
    return [TranscodingRoute(compile_bindings(bindings, backends)), NotFoundRoute()]
