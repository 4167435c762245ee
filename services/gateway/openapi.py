"""The OpenAPI 3.1 document of the REST API, generated from the same descriptors the
transcoder serves, and the routes that publish it (GET /openapi.json, GET /docs).

Nothing here is written by hand per RPC: paths come from the google.api.http bindings,
schemas from the message descriptors (proto3 JSON mapping), and every summary and
description from the proto comments kept in cairn/descriptors.binpb.

Choices a reader of the document should know:

* OpenAPI 3.1.0 (JSON Schema 2020-12): `$ref` may carry sibling `description` and
  `readOnly`, and a metric value can be `number | "NaN" | "Infinity" | "-Infinity"`.
* A variable binding a resource name (`{name=experiments/*/runs/*}`) is expanded into one
  path parameter per `*`, named after the literal before it, singularized
  (`/v1/experiments/{experiment}/runs/{run}:restore`): the same URL the transcoder matches.
  `**` (several segments) cannot be an OpenAPI path parameter; such a variable becomes one
  parameter documented as taking slashes (no Cairn binding uses it).
* 64-bit integers are decimal strings (`format: int64`), exactly as json_format writes them;
  requests may also send JSON numbers. Enums are string enums of value names.
* Query parameters are named by proto field paths (`page_size`, `metadata.path`); the
  transcoder also accepts the lowerCamel spellings.
* Streamed responses: the `schema` of application/x-ndjson and text/event-stream describes
  one line / one event (the convention of OpenAPI 3.2's itemSchema, which tools also apply
  to 3.1 event streams).
* Only request-only schemas (query parameters, bodies derived for a binding) list
  `required` fields; shared message schemas never do, since proto3 JSON leaves fields at
  their default value out of responses.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    ServiceDescriptor,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

import cairn
from services.gateway.bindings import Binding, service_bindings
from services.gateway.templates import Segment, Variable
from services.gateway.transcoding import FieldPath, binding_shape

JSON = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
SCHEMA_PREFIX = "#/components/schemas/"
STATUS_SCHEMA = "google.rpc.Status"
EMPTY_SCHEMA = "google.protobuf.Empty"
# The error responses of every operation (status -> components.responses name, description),
# by the google.rpc.Code -> HTTP mapping of services.gateway.errors.
ERROR_RESPONSES = {
    "400": (
        "BadRequest",
        "INVALID_ARGUMENT (a malformed or invalid request, naming the field), "
        "FAILED_PRECONDITION or OUT_OF_RANGE.",
    ),
    "401": ("Unauthenticated", "UNAUTHENTICATED: a missing or invalid bearer token."),
    "403": ("PermissionDenied", "PERMISSION_DENIED: the token may not do this."),
    "404": ("NotFound", "NOT_FOUND: the resource (or the route) does not exist."),
    "409": ("Conflict", "ALREADY_EXISTS or ABORTED."),
    "503": ("Unavailable", "UNAVAILABLE: the backend service cannot be reached; retry later."),
    "default": (
        "Error",
        "Any other error: 405 (method not allowed), 413 (body too large), 415 (unsupported "
        "Content-Type), 429 RESOURCE_EXHAUSTED, 499 CANCELLED, 500 INTERNAL or DATA_LOSS, "
        "501 UNIMPLEMENTED, 504 DEADLINE_EXCEEDED.",
    ),
}
DURATION_PATTERN = r"^-?[0-9]+(\.[0-9]+)?s$"
NON_FINITE = ["NaN", "Infinity", "-Infinity"]

_BEHAVIOR = field_behavior_pb2.FieldBehavior
_T = FieldDescriptor


# ------------------------------------------------------------------------------ comments


@functools.cache
def proto_comments() -> dict[str, str]:
    """Leading comments of every element of the descriptor set, by full name.

    Keys: services and messages and enums by full name ("cairn.tracker.v1.Run"), fields,
    oneofs and methods as "<parent full name>.<name>", enum values as
    "<enum full name>.<VALUE_NAME>".
    """
    path = Path(cairn.__file__).parent / "descriptors.binpb"
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    comments: dict[str, str] = {}
    for file in descriptor_set.file:
        names = _element_names(file)
        for location in file.source_code_info.location:
            text = location.leading_comments or location.trailing_comments
            name = names.get(tuple(location.path))
            if name is not None and text.strip():
                comments[name] = clean_comment(text)
    return comments


def _element_names(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """SourceCodeInfo path -> full name, for the elements that carry documentation."""
    prefix = f"{file.package}." if file.package else ""
    names: dict[tuple[int, ...], str] = {}

    def enum(proto: descriptor_pb2.EnumDescriptorProto, full: str, at: tuple[int, ...]) -> None:
        names[at] = full
        for index, value in enumerate(proto.value):
            names[(*at, 2, index)] = f"{full}.{value.name}"

    def message(proto: descriptor_pb2.DescriptorProto, full: str, at: tuple[int, ...]) -> None:
        names[at] = full
        for index, field in enumerate(proto.field):
            names[(*at, 2, index)] = f"{full}.{field.name}"
        for index, nested in enumerate(proto.nested_type):
            message(nested, f"{full}.{nested.name}", (*at, 3, index))
        for index, nested_enum in enumerate(proto.enum_type):
            enum(nested_enum, f"{full}.{nested_enum.name}", (*at, 4, index))
        for index, oneof in enumerate(proto.oneof_decl):
            names[(*at, 8, index)] = f"{full}.{oneof.name}"

    for index, message_proto in enumerate(file.message_type):
        message(message_proto, prefix + message_proto.name, (4, index))
    for index, enum_proto in enumerate(file.enum_type):
        enum(enum_proto, prefix + enum_proto.name, (5, index))
    for index, service in enumerate(file.service):
        names[(6, index)] = prefix + service.name
        for method_index, method in enumerate(service.method):
            names[(6, index, 2, method_index)] = f"{prefix}{service.name}.{method.name}"
    return names


def clean_comment(text: str) -> str:
    """A proto comment as text: the one space after `//` removed, outer blank lines dropped."""
    lines = [line[1:] if line.startswith(" ") else line for line in text.split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n").strip()


def first_sentence(text: str) -> str:
    """The summary of a comment: its first sentence (of the first paragraph)."""
    paragraph = " ".join(text.split("\n\n", 1)[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


# ------------------------------------------------------------------------------ names


def singular(word: str) -> str:
    """experiments -> experiment, runs -> run, entries -> entry, statuses -> status."""
    lowered = word.lower()
    if lowered.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if lowered.endswith(("sses", "uses", "xes", "ches", "shes")):
        return word[:-2]
    if lowered.endswith("s") and not lowered.endswith("ss") and len(word) > 1:
        return word[:-1]
    return word


def _param_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return cleaned or "param"


class PathParameter:
    """One OpenAPI path parameter: a `*` (or `**`) of a template variable, or a bare wildcard
    segment outside any variable (`variable` None: it binds no request field)."""

    def __init__(self, name: str, variable: Variable | None, index: int, multi: bool) -> None:
        self.name = name
        self.variable = variable
        self.index = index  # which wildcard of the variable (0-based)
        self.multi = multi  # "**": several segments, slashes included


def expand_template(binding: Binding) -> tuple[str, list[PathParameter]]:
    """The OpenAPI path of a binding and its parameters, one per wildcard.

    `/v1/{name=experiments/*/runs/*}:restore` -> `/v1/experiments/{experiment}/runs/{run}:restore`
    with parameters `experiment` and `run` that together form the request field `name`.
    """
    taken: set[str] = set()
    parameters: list[PathParameter] = []
    pieces: list[str] = []

    def unique(name: str) -> str:
        candidate, counter = name, 2
        while candidate in taken:
            candidate = f"{name}_{counter}"
            counter += 1
        taken.add(candidate)
        return candidate

    def wildcard(variable: Variable, previous: str | None, index: int, multi: bool) -> str:
        wildcards = [s for s in variable.segments if s.kind != "literal"]
        if previous is not None:
            base = _param_name(singular(previous))
        elif len(wildcards) == 1:
            base = _param_name(variable.field_path.replace(".", "_"))
        else:
            base = _param_name(f"{variable.field_path.replace('.', '_')}_{index + 1}")
        parameter = PathParameter(unique(base), variable, index, multi)
        parameters.append(parameter)
        return "{" + parameter.name + "}"

    bare = 0
    for part in binding.template.parts:
        if isinstance(part, Segment):
            if part.kind == "literal":
                pieces.append(part.text)
            else:
                # A wildcard outside any variable matches any segment and binds nothing.
                bare += 1
                parameter = PathParameter(unique(f"segment_{bare}"), None, 0, part.kind == "**")
                parameters.append(parameter)
                pieces.append("{" + parameter.name + "}")
            continue
        previous: str | None = None
        index = 0
        for segment in part.segments:
            if segment.kind == "literal":
                pieces.append(segment.text)
                previous = segment.text
            else:
                pieces.append(wildcard(part, previous, index, segment.kind == "**"))
                index += 1
                previous = None
    verb = f":{binding.template.verb}" if binding.template.verb else ""
    return "/" + "/".join(pieces) + verb, parameters


def variable_pattern(variable: Variable, parameters: list[PathParameter]) -> str:
    """The resource-name shape of a variable with its parameters: experiments/{experiment}."""
    names = iter(p.name for p in parameters if p.variable is variable)
    return "/".join(
        s.text if s.kind == "literal" else "{" + next(names) + "}" for s in variable.segments
    )


# ------------------------------------------------------------------------------ schemas


def field_behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message (or map) field."""
    message = field.message_type
    assert message is not None, f"{field.full_name} is not a message field"
    return message


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    enum = field.enum_type
    assert enum is not None, f"{field.full_name} is not an enum field"
    return enum


def is_map(field: FieldDescriptor) -> bool:
    return bool(field.type == _T.TYPE_MESSAGE and message_of(field).GetOptions().map_entry)


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _real_oneof(field: FieldDescriptor) -> Any:
    oneof = field.containing_oneof
    if oneof is None:
        return None
    # proto3 `optional` makes a synthetic one-member oneof named "_<field>": not a real choice.
    if len(oneof.fields) == 1 and oneof.name == f"_{field.name}":
        return None
    return oneof


_INT64 = (_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64)
_UINT64 = (_T.TYPE_UINT64, _T.TYPE_FIXED64)
_INT32 = (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32)
_UINT32 = (_T.TYPE_UINT32, _T.TYPE_FIXED32)

INT64_NOTE = (
    "A 64-bit integer, written as a decimal string (proto3 JSON mapping); requests may also "
    "send a JSON number."
)
DOUBLE_NOTE = 'A JSON number, or one of the strings "NaN", "Infinity", "-Infinity".'
ENUM_NOTE = "Enum value name; requests may also send the numeric value."


def int64_schema(unsigned: bool = False) -> JSON:
    if unsigned:
        return {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
    return {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}


def double_schema(fmt: str = "double") -> JSON:
    return {"oneOf": [{"type": "number", "format": fmt}, {"type": "string", "enum": NON_FINITE}]}


# Well-known types: their JSON form is not an object of their fields.
WELL_KNOWN: dict[str, JSON] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": 'RFC 3339 timestamp in UTC ("Z"), e.g. "2024-05-01T12:00:00.5Z".',
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": 'Duration in seconds with an "s" suffix, e.g. "3600s" or "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated field paths, e.g. "displayName,tags".',
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": double_schema(),
    "google.protobuf.FloatValue": double_schema("float"),
    "google.protobuf.Int64Value": int64_schema(),
    "google.protobuf.UInt64Value": int64_schema(unsigned=True),
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte", "contentEncoding": "base64"},
}


def status_schema() -> JSON:
    return {
        "type": "object",
        "description": (
            "google.rpc.Status in its JSON form: every error response of the REST API. "
            "`code` is the canonical google.rpc.Code (3 INVALID_ARGUMENT, 5 NOT_FOUND, "
            "6 ALREADY_EXISTS, 9 FAILED_PRECONDITION, 16 UNAUTHENTICATED, ...); `details` "
            "holds typed details, among them a google.rpc.ErrorInfo with a stable `reason`."
        ),
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "google.rpc.Code."},
            "message": {"type": "string", "description": "Developer-facing error message."},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "@type": {
                            "type": "string",
                            "description": (
                                'Type URL, e.g. "type.googleapis.com/google.rpc.ErrorInfo".'
                            ),
                        }
                    },
                    "required": ["@type"],
                    "additionalProperties": True,
                },
            },
        },
        "required": ["code"],
    }


class SchemaBuilder:
    """components.schemas for every message and enum reachable from the operations."""

    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, JSON] = {}

    # -- references

    def ref(self, name: str) -> JSON:
        return {"$ref": SCHEMA_PREFIX + name}

    def message_ref(self, message: Descriptor) -> JSON:
        """A schema for a message-typed value: inline for well-known types, else a $ref."""
        name = str(message.full_name)
        if name in WELL_KNOWN:
            return dict(WELL_KNOWN[name])
        if name == EMPTY_SCHEMA:
            self.schemas.setdefault(EMPTY_SCHEMA, self.empty_schema())
            return self.ref(EMPTY_SCHEMA)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages terminate
            self.schemas[name] = self.message_schema(message)
        return self.ref(name)

    def enum_ref(self, enum: EnumDescriptor) -> JSON:
        name = str(enum.full_name)
        if name not in self.schemas:
            self.schemas[name] = self.enum_schema(enum)
        return self.ref(name)

    # -- definitions

    @staticmethod
    def empty_schema() -> JSON:
        return {
            "type": "object",
            "description": "google.protobuf.Empty: an empty JSON object, `{}`.",
            "additionalProperties": False,
        }

    def enum_schema(self, enum: EnumDescriptor) -> JSON:
        full = str(enum.full_name)
        lines = [self.comments.get(full, ""), ENUM_NOTE, ""]
        for value in enum.values:
            note = self.comments.get(f"{full}.{value.name}", "")
            line = f"- `{value.name}` ({value.number})"
            lines.append(f"{line}: {' '.join(note.split())}" if note else line)
        return {
            "type": "string",
            "enum": [str(v.name) for v in enum.values],
            "description": "\n".join(lines).strip(),
            "x-proto-enum": full,
        }

    def message_schema(
        self,
        message: Descriptor,
        exclude: Iterable[str] = (),
        *,
        request_only: bool = False,
        require: bool = False,
    ) -> JSON:
        """The JSON object of a message.

        `exclude`: dotted field paths left out (bound by the URL path). `request_only`: the
        schema describes a request body only (REQUIRED strings must then be non-empty), and
        with `require` its REQUIRED fields are listed as required (never in a shared schema:
        proto3 JSON leaves fields at their default out of responses).
        """
        excluded = set(exclude)
        full = str(message.full_name)
        properties: JSON = {}
        for field in message.fields:
            if field.name in excluded:
                continue
            nested = {e.split(".", 1)[1] for e in excluded if e.startswith(f"{field.name}.")}
            if nested and field.type == _T.TYPE_MESSAGE and not is_repeated(field):
                value = self.message_schema(message_of(field), nested, request_only=True)
                value["description"] = self.field_description(field, value)
                properties[str(field.json_name)] = value
                continue
            properties[str(field.json_name)] = self.field_schema(field, request_only=request_only)
        schema: JSON = {"type": "object", "properties": properties, "additionalProperties": False}
        description = [self.comments.get(full, "")]
        oneofs = [o for o in message.oneofs if _real_oneof(o.fields[0]) is not None]
        for oneof in oneofs:
            members = ", ".join(f"`{f.json_name}`" for f in oneof.fields)
            note = self.comments.get(f"{full}.{oneof.name}", "")
            description.append(f"At most one of {members} is set (oneof `{oneof.name}`). {note}")
        text = "\n\n".join(d.strip() for d in description if d.strip())
        if text:
            schema["description"] = text
        schema["x-proto-message"] = full
        if require:
            required = [
                str(f.json_name)
                for f in message.fields
                if f.name not in excluded and _BEHAVIOR.REQUIRED in field_behaviors(f)
            ]
            if required:
                schema["required"] = required
        return schema

    def value_schema(self, field: FieldDescriptor) -> JSON:
        """The schema of one value of a field (an element, for repeated fields)."""
        kind = field.type
        if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            return double_schema("double" if kind == _T.TYPE_DOUBLE else "float")
        if kind in _INT64:
            return int64_schema()
        if kind in _UINT64:
            return int64_schema(unsigned=True)
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
        if kind == _T.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _T.TYPE_STRING:
            return {"type": "string"}
        if kind == _T.TYPE_BYTES:
            return {"type": "string", "format": "byte", "contentEncoding": "base64"}
        if kind == _T.TYPE_ENUM:
            return self.enum_ref(enum_of(field))
        return self.message_ref(message_of(field))

    def field_schema(
        self, field: FieldDescriptor, *, describe: bool = True, request_only: bool = False
    ) -> JSON:
        if is_map(field):
            value_field = message_of(field).fields_by_name["value"]
            schema: JSON = {
                "type": "object",
                "additionalProperties": self.value_schema(value_field),
            }
        elif is_repeated(field):
            schema = {"type": "array", "items": self.value_schema(field)}
        else:
            schema = self.value_schema(field)
        behaviors = field_behaviors(field)
        if _BEHAVIOR.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if (
            request_only
            and _BEHAVIOR.REQUIRED in behaviors
            and field.type == _T.TYPE_STRING
            and not is_repeated(field)
        ):
            schema["minLength"] = 1  # "" is the same as unset in proto3
        if describe:
            description = self.field_description(field, schema)
            if description:
                schema["description"] = description
        return schema

    def field_description(self, field: FieldDescriptor, schema: JSON) -> str:
        parts: list[str] = []
        behaviors = field_behaviors(field)
        flags = [
            label
            for behavior, label in (
                (_BEHAVIOR.REQUIRED, "Required."),
                (_BEHAVIOR.OUTPUT_ONLY, "Output only (ignored in requests)."),
                (_BEHAVIOR.IMMUTABLE, "Immutable once set."),
                (_BEHAVIOR.IDENTIFIER, "Identifier (the resource name)."),
                (_BEHAVIOR.OPTIONAL, "Optional."),
            )
            if behavior in behaviors
        ]
        if flags:
            parts.append(" ".join(flags))
        comment = self.comments.get(str(field.full_name), "")
        if comment:
            parts.append(comment)
        oneof = _real_oneof(field)
        if oneof is not None:
            others = ", ".join(f"`{f.json_name}`" for f in oneof.fields if f is not field)
            parts.append(f"Member of oneof `{oneof.name}`: not set together with {others}.")
        base = field if not is_map(field) else message_of(field).fields_by_name["value"]
        if base.type in _INT64 + _UINT64:
            parts.append(INT64_NOTE)
        elif base.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            parts.append(DOUBLE_NOTE)
        elif base.type == _T.TYPE_BYTES:
            parts.append("Base64-encoded bytes.")
        if field.json_name != field.name:
            parts.append(f"Proto field `{field.name}` (also accepted as a JSON name in requests).")
        return "\n\n".join(parts)


# ------------------------------------------------------------------------------ operations


def sse_event_schema(message: JSON, status: JSON) -> JSON:
    """One server-sent event: `data` is a message's JSON, or a Status's for event `error`."""

    def data(schema: JSON) -> JSON:
        return {
            "properties": {
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": schema,
                }
            }
        }

    return {
        "type": "object",
        "description": 'One server-sent event: `data: <message JSON>` (event "message").',
        "properties": {
            "event": {"type": "string", "enum": ["message", "error"]},
            "data": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
        "required": ["data"],
        "if": {"properties": {"event": {"const": "error"}}, "required": ["event"]},
        "then": data(status),
        "else": data(message),
    }


def media_download(binding: Binding) -> bool:
    """Whether a server-streaming binding also answers `alt=media` with the raw bytes (as
    the transcoder decides it)."""
    return binding_shape(binding).download is not None


def raw_upload(binding: Binding) -> bool:
    """Whether a client-streaming binding also takes its content as a raw body
    (application/octet-stream, the other fields from the path and the query string), as the
    transcoder decides it."""
    return binding_shape(binding).upload is not None


def _proto_path(path: FieldPath) -> str:
    return ".".join(field.name for field in path.fields)


class OpenApiBuilder:
    def __init__(self, bindings: list[Binding]) -> None:
        self.bindings = bindings
        self.comments = proto_comments()
        self.schemas = SchemaBuilder(self.comments)
        self.services: list[ServiceDescriptor] = []
        for binding in bindings:
            service = binding.method.containing_service
            if all(s.full_name != service.full_name for s in self.services):
                self.services.append(service)

    # -- the document

    def build(self) -> JSON:
        paths: dict[str, JSON] = {}
        for binding, suffix in self.ordered():
            path, operation = self.operation(binding, suffix)
            paths.setdefault(path, {})[binding.http_method.lower()] = operation
        self.schemas.schemas[STATUS_SCHEMA] = status_schema()
        return {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "Cairn API",
                "version": "v1",
                "description": self.info_description(),
            },
            "tags": [
                {"name": str(s.name), "description": self.comments.get(str(s.full_name), "")}
                for s in self.services
            ],
            "security": [{"bearerAuth": []}, {}],
            "paths": paths,
            "components": {
                "schemas": dict(sorted(self.schemas.schemas.items())),
                "responses": {
                    name: {
                        "description": f"{description} The body is a google.rpc.Status.",
                        "content": {
                            "application/json": {"schema": self.schemas.ref(STATUS_SCHEMA)}
                        },
                    }
                    for name, description in ERROR_RESPONSES.values()
                },
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": (
                            "A token from CAIRN_AUTH_TOKENS (or a job's token). Servers on "
                            "loopback without tokens configured need none."
                        ),
                    }
                },
            },
        }

    def ordered(self) -> list[tuple[Binding, str]]:
        """Bindings in proto declaration order (service, method, primary binding first), each
        with its operationId suffix ("" for the primary binding, "2", "3"... after)."""
        given = {(b.grpc_path, b.http_method, b.template.source, b.body) for b in self.bindings}
        result: list[tuple[Binding, str]] = []
        for service in self.services:
            counts: dict[str, int] = {}
            for binding in service_bindings(service):
                key = (
                    binding.grpc_path,
                    binding.http_method,
                    binding.template.source,
                    binding.body,
                )
                if key not in given:
                    continue
                count = counts.get(binding.grpc_path, 0) + 1
                counts[binding.grpc_path] = count
                result.append((binding, "" if count == 1 else str(count)))
        return result

    def info_description(self) -> str:
        parts = [
            "The REST/JSON edge of Cairn, an ML experiment platform. Generated from the gRPC "
            "contracts (protos/) and their google.api.http annotations: every operation is "
            "an RPC, transcoded by the gateway.",
        ]
        for service in self.services:
            comment = self.comments.get(str(service.full_name), "")
            parts.append(f"## {service.name}\n\n{comment}")
        parts.append(
            "## Conventions\n\n"
            "- Bodies and responses use the proto3 JSON mapping: lowerCamel property names "
            "(requests also accept the proto field names); fields at their default value are "
            "omitted from responses; unknown fields are rejected.\n"
            '- 64-bit integers are decimal strings; doubles may be the strings "NaN", '
            '"Infinity" and "-Infinity"; enums are value names (numbers are accepted too); '
            'bytes are base64; timestamps are RFC 3339; durations are like "3.5s".\n'
            "- A resource name bound in a path is split into one path parameter per "
            "identifier: `experiments/{experiment}/runs/{run}`. A resource name sent as one "
            "percent-encoded segment is matched too. Multi-segment (`**`) bindings cannot be "
            "expressed as OpenAPI path parameters; none is used.\n"
            "- Query parameters use proto field paths, nested fields with dots "
            "(`metadata.path`), repeated fields by repeating the parameter.\n"
            "- Errors are google.rpc.Status JSON objects with the matching HTTP status."
        )
        return "\n\n".join(parts)

    # -- one operation

    def operation(self, binding: Binding, suffix: str) -> tuple[str, JSON]:
        method = binding.method
        path, path_parameters = expand_template(binding)
        comment = self.comments.get(f"{binding.service}.{method.name}", "")
        notes: list[str] = []
        bound = {v.field_path for v in binding.template.variables}
        for variable in binding.template.variables:
            names = [p.name for p in path_parameters if p.variable is variable]
            if names:
                listed = ", ".join(f"`{n}`" for n in names)
                notes.append(
                    f"Path parameter{'s' if len(names) > 1 else ''} {listed} form"
                    f"{'' if len(names) > 1 else 's'} the request field `{variable.field_path}` "
                    f"= `{variable_pattern(variable, path_parameters)}`."
                )
        parameters: list[JSON] = [self.path_parameter(p, path_parameters) for p in path_parameters]

        # Query parameters are exactly the transcoder's (one BindingShape for both).
        shape = binding_shape(binding)
        parameters += [self.query_parameter(_proto_path(p), p.leaf) for p in shape.query_paths]
        parameters += [
            self.query_parameter(
                _proto_path(p),
                p.leaf,
                note=(
                    "Sets the upload's header: that of a raw (application/octet-stream) body, "
                    "or every header message of a JSON body, as path fields do."
                ),
            )
            for p in shape.upload_query_paths
        ]
        if media_download(binding):
            parameters.append(
                {
                    "name": "alt",
                    "in": "query",
                    "required": False,
                    "description": (
                        "`media`: the response is the raw content (application/octet-stream) "
                        "instead of a stream of messages; `json` (the default): messages."
                    ),
                    "schema": {"type": "string", "enum": ["json", "media"]},
                }
            )

        summary = first_sentence(comment) if comment else str(method.name)
        description = "\n\n".join(
            [comment, *notes, f"gRPC: `{binding.grpc_path}`" + self.streaming_note(binding)]
        ).strip()
        operation: JSON = {
            "operationId": f"{method.name}{suffix}",
            "tags": [str(method.containing_service.name)],
            "summary": summary,
            "description": description,
        }
        if parameters:
            operation["parameters"] = parameters
        if binding.body:
            operation["requestBody"] = self.request_body(binding, bound)
        operation["responses"] = self.responses(binding)
        operation["x-grpc-method"] = binding.grpc_path
        return path, operation

    @staticmethod
    def streaming_note(binding: Binding) -> str:
        if binding.client_streaming and binding.server_streaming:
            return " (bidirectional streaming)."
        if binding.client_streaming:
            return (
                " (client streaming): the body is one request message or a JSON array of "
                "them, sent as one stream."
            )
        if binding.server_streaming:
            return (
                " (server streaming): the response is newline-delimited JSON "
                "(application/x-ndjson, one message per line) or server-sent events "
                "(text/event-stream, one message per event), chosen by the Accept header."
            )
        return "."

    def path_parameter(self, parameter: PathParameter, all_parameters: list[PathParameter]) -> JSON:
        variable = parameter.variable
        if variable is None:
            description = "Any segment: the path matches whatever it is (it sets no field)."
        else:
            shape = variable_pattern(variable, all_parameters)
            description = (
                f"The `{{{parameter.name}}}` segment of the request field "
                f"`{variable.field_path}` (`{shape}`)."
            )
        schema: JSON = {"type": "string", "pattern": "^[^/]+$"}
        if parameter.multi:
            description += " May contain slashes (several segments: `**`)."
            schema = {"type": "string"}
        found: JSON = {
            "name": parameter.name,
            "in": "path",
            "required": True,
            "description": description,
            "schema": schema,
        }
        if variable is not None:
            found["x-proto-field"] = variable.field_path
        return found

    def query_parameter(self, path: str, field: FieldDescriptor, note: str = "") -> JSON:
        schema = self.schemas.field_schema(field, describe=False, request_only=True)
        schema.pop("readOnly", None)
        description = self.schemas.field_description(field, schema)
        if field.type == _T.TYPE_MESSAGE and str(message_of(field).full_name) in WELL_KNOWN:
            description = "\n\n".join(d for d in (description, schema.get("description", "")) if d)
            schema.pop("description", None)
        if note:
            description = f"{note}\n\n{description}" if description else note
        parameter: JSON = {
            "name": path,
            "in": "query",
            "required": _BEHAVIOR.REQUIRED in field_behaviors(field) and not note,
            "schema": schema,
        }
        if description:
            parameter["description"] = description
        if is_repeated(field):
            parameter["style"] = "form"
            parameter["explode"] = True
        return parameter

    def request_body(self, binding: Binding, bound: set[str]) -> JSON:
        request = binding.method.input_type
        builder = self.schemas
        if binding.body == "*":
            if bound:
                name = f"{binding.service}.{binding.method.name}Body"
                builder.schemas[name] = builder.message_schema(
                    request, bound, request_only=True, require=True
                )
                builder.schemas[name]["description"] = (
                    f"{request.full_name} without the fields bound by the path "
                    f"({', '.join(sorted(bound))})."
                    + (
                        f"\n\n{builder.schemas[name]['description']}"
                        if builder.schemas[name].get("description")
                        else ""
                    )
                )
                message_schema = builder.ref(name)
            else:
                message_schema = builder.message_ref(request)
            description = f"The request message {request.full_name}"
            required = bool(builder.schemas[_ref_name(message_schema)].get("required"))
        else:
            field = request.fields_by_name[binding.body]
            nested = {b.split(".", 1)[1] for b in bound if b.startswith(f"{binding.body}.")}
            description = f"The request field `{binding.body}` ({_type_name(field)})"
            if nested and field.type == _T.TYPE_MESSAGE and not is_repeated(field):
                # Without the fields the path sets (a body may repeat them, but only with the
                # same value: anything else is INVALID_ARGUMENT).
                name = f"{binding.service}.{binding.method.name}Body"
                derived = builder.message_schema(message_of(field), nested, request_only=True)
                listed = ", ".join(f"`{n}`" for n in sorted(nested))
                derived["description"] = (
                    f"{_type_name(field)} without {listed}, which the URL path sets."
                    + (f"\n\n{derived['description']}" if derived.get("description") else "")
                )
                builder.schemas[name] = derived
                message_schema = builder.ref(name)
                description += f"; {listed} come{'s' if len(nested) == 1 else ''} from the path"
            else:
                message_schema = builder.field_schema(field, describe=False, request_only=True)
            required = _BEHAVIOR.REQUIRED in field_behaviors(field)
        content: JSON
        if binding.client_streaming:
            content = {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            message_schema,
                            {"type": "array", "items": message_schema},
                        ]
                    }
                }
            }
            description += (
                ": one message, or a JSON array of messages sent as one client stream "
                "(path fields apply to every message)"
            )
            if raw_upload(binding):
                content["application/octet-stream"] = {
                    "schema": {"type": "string", "format": "binary"}
                }
                description += (
                    "; or the raw content as application/octet-stream, the other fields "
                    "taken from the path and the query string"
                )
                required = True
        else:
            content = {"application/json": {"schema": message_schema}}
        return {"description": description + ".", "required": required, "content": content}

    def responses(self, binding: Binding) -> JSON:
        builder = self.schemas
        output = binding.method.output_type
        if binding.response_body:
            schema = builder.field_schema(output.fields_by_name[binding.response_body])
        else:
            schema = builder.message_ref(output)
        if binding.server_streaming:
            # A sequential media type's `schema` describes one item (one line, one event), as
            # OpenAPI 3.2's itemSchema does and as tools read 3.1 event streams.
            status_ref = builder.ref(STATUS_SCHEMA)
            stream_error: JSON = {
                "type": "object",
                "description": "The last line of a stream that failed after it began.",
                "properties": {"error": status_ref},
                "required": ["error"],
                "additionalProperties": False,
            }
            description = (
                f"A stream of {output.full_name} messages: one JSON object per line "
                "(application/x-ndjson, the default) or per server-sent event "
                "(text/event-stream, with `Accept: text/event-stream`). An error after the "
                'first message ends the stream with a line `{"error": <Status>}` (or an '
                "event `error` whose data is the Status)."
            )
            content: JSON = {
                "application/x-ndjson": {"schema": {"oneOf": [schema, stream_error]}},
                "text/event-stream": {"schema": sse_event_schema(schema, status_ref)},
            }
            if media_download(binding):
                description += (
                    " With `alt=media`: the raw content (application/octet-stream), with "
                    "Content-Length; an error mid-way cuts the connection short of it."
                )
                content["application/octet-stream"] = {
                    "schema": {"type": "string", "format": "binary"}
                }
            ok: JSON = {"description": description, "content": content}
        else:
            ok = {
                "description": f"{_message_name(output)}.",
                "content": {"application/json": {"schema": schema}},
            }
        responses: JSON = {"200": ok}
        for code, (name, _) in ERROR_RESPONSES.items():
            responses[code] = {"$ref": f"#/components/responses/{name}"}
        return responses


def _ref_name(schema: JSON) -> str:
    ref = str(schema.get("$ref", ""))
    return ref.removeprefix(SCHEMA_PREFIX)


def _message_name(message: Descriptor) -> str:
    return str(message.full_name)


def _type_name(field: FieldDescriptor) -> str:
    if field.type == _T.TYPE_MESSAGE:
        return str(message_of(field).full_name)
    if field.type == _T.TYPE_ENUM:
        return str(enum_of(field).full_name)
    return "scalar"


def build_openapi(bindings: list[Binding]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the given bindings."""
    return OpenApiBuilder(bindings).build()


# ------------------------------------------------------------------------------ routes


def routes(bindings: list[Binding]) -> list[BaseRoute]:
    """GET /openapi.json and GET /docs, built once from the bindings."""
    from services.gateway.docs import render_docs

    document = build_openapi(bindings)
    body = json.dumps(document, ensure_ascii=False, indent=1).encode()
    page = render_docs(document).encode()

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
