"""A local Cloud Logging API for the log proxy's tests: the real `google.logging.v2.
LoggingServiceV2` gRPC service on loopback, (de)serialized with google-cloud-logging's own
request and response types, so the official client talks to it exactly as it talks to
logging.googleapis.com.

Implemented:
- ListLogEntries: resource_names ("projects/<id>": an entry belongs to the project of its
  log_name), filter, order_by ("timestamp asc", the default, or "timestamp desc"; entries
  with equal timestamps by insert_id), page_size (default 50, at most 1000) and page_token
  (a keyset cursor bound to the request it continues: stable while entries are added);
- TailLogEntries: the entries appended while the tail is open that match its filter, in
  batches, until the client goes away, the server stops, or a test cuts the tails.

Filters are evaluated for the part of the Cloud Logging query language the log proxy sends,
with its real precedence (NOT > OR > AND; juxtaposition is AND): parentheses, AND, OR,
comparisons `field OP value` with = and != on strings and = != < <= > >= on severity
(names or numbers) and timestamp (RFC 3339 strings), over severity, timestamp, logName,
insertId, textPayload, jsonPayload.KEY, resource.type, resource.labels.KEY and labels.KEY
(a key may be quoted: labels."a.b/c"). Anything else (other fields, operators, NOT, regular
expressions, comments) is INVALID_ARGUMENT, so a query the fake cannot evaluate fails
loudly instead of matching everything.

Tests drive it with `append` (entries arrive; open tails see the matching ones), `fail`
(the next calls of a method fail with a status), `cut_tails`, and the knobs `empty_pages`
(a search answers that many empty pages, with a page token, before its first entries, as
Cloud Logging does when a search is slow) and `tail_delay_seconds` (a tail starts following
that long after it was opened).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud.logging_v2.types import (
    ListLogEntriesRequest,
    ListLogEntriesResponse,
    LogEntry,
    TailLogEntriesRequest,
    TailLogEntriesResponse,
)
from google.logging.type import log_severity_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format

SERVICE = "google.logging.v2.LoggingServiceV2"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
NS = 1_000_000_000
SEVERITIES = {name: number for name, number in log_severity_pb2.LogSeverity.items()}


class FilterError(ValueError):
    """The filter uses something this fake does not understand (INVALID_ARGUMENT)."""


def timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time ("2026-12-04T18:00:00.123456789Z")."""
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", text
    )
    if match is None:
        raise FilterError(f"not an RFC 3339 timestamp: {text!r}")
    zone = "+00:00" if match[3] == "Z" else match[3]
    whole = datetime.fromisoformat(match[1] + zone)
    return int(whole.timestamp()) * NS + int(str(match[2] or "").ljust(9, "0"))


def entry_ns(entry: LogEntry) -> int:
    stamp = LogEntry.pb(entry).timestamp
    return int(stamp.seconds) * NS + int(stamp.nanos)


# ------------------------------------------------------------------------------ filters

_WORD = r'[A-Za-z0-9_\-/@]+|"(?:[^"\\]|\\.)*"'  # a bare word or a quoted string
_TOKEN = re.compile(
    rf"""\s*(?:
        (?P<paren>[()])
      | (?P<op>!=|>=|<=|=~|!~|[=<>:])
      | (?P<path>(?:{_WORD})(?:\.(?:{_WORD}))*)
    )""",
    re.VERBOSE,
)
_SEGMENT = re.compile(_WORD)


@dataclass(frozen=True)
class _Token:
    kind: str  # "(", ")", "op", "path"
    text: str
    segments: tuple[str, ...] = ()
    quoted: bool = False  # a path of one quoted string: a string value


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _tokens(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    query = query.rstrip()
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None or match.end() == position:
            raise FilterError(f"cannot read the filter at {query[position : position + 20]!r}")
        position = match.end()
        if match["paren"]:
            tokens.append(_Token(match["paren"], match["paren"]))
        elif match["op"]:
            tokens.append(_Token("op", match["op"]))
        else:
            text = match["path"]
            parts = _SEGMENT.findall(text)
            segments = tuple(_unquote(p) if p.startswith('"') else p for p in parts)
            quoted = len(parts) == 1 and parts[0].startswith('"')
            tokens.append(_Token("path", text, segments, quoted))
    return tokens


Predicate = Callable[[LogEntry], bool]


def _string_field(segments: tuple[str, ...]) -> Callable[[Any], str | None] | None:
    """How to read a string field of a LogEntry protobuf, or None if unknown."""
    head, rest = segments[0], segments[1:]
    if head in ("logName", "log_name") and not rest:
        return lambda e: e.log_name
    if head in ("insertId", "insert_id") and not rest:
        return lambda e: e.insert_id
    if head in ("textPayload", "text_payload") and not rest:
        return lambda e: e.text_payload if e.WhichOneof("payload") == "text_payload" else None
    if head in ("jsonPayload", "json_payload") and len(rest) == 1:
        key = rest[0]

        def json_value(e: Any) -> str | None:
            if e.WhichOneof("payload") != "json_payload" or key not in e.json_payload.fields:
                return None
            value = json_format.MessageToDict(e.json_payload)[key]
            return value if isinstance(value, str) else json.dumps(value)

        return json_value
    if head == "resource" and rest == ("type",):
        return lambda e: e.resource.type
    if head == "resource" and len(rest) == 2 and rest[0] == "labels":
        return lambda e: e.resource.labels.get(rest[1])
    if head == "labels" and len(rest) == 1:
        return lambda e: e.labels.get(rest[0])
    return None


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _comparison(left: _Token, op: str, right: _Token) -> Predicate:
    if left.kind != "path" or left.quoted or right.kind != "path":
        raise FilterError(f"expected `field {op} value`, got {left.text} {op} {right.text}")
    if len(right.segments) != 1:
        raise FilterError(f"cannot compare with {right.text}")
    value = right.segments[0]
    segments = left.segments
    if op not in _COMPARE:
        raise FilterError(f"operator {op} is not supported by this fake")
    compare = _COMPARE[op]
    if segments == ("severity",):
        level = int(value) if value.isdigit() else SEVERITIES.get(value.upper())
        if level is None:
            raise FilterError(f"unknown severity {value!r}")
        return lambda entry: compare(int(LogEntry.pb(entry).severity), level)
    if segments == ("timestamp",):
        moment = timestamp_ns(value)
        return lambda entry: compare(entry_ns(entry), moment)
    read = _string_field(segments)
    if read is None:
        raise FilterError(f"unknown field {left.text}")
    if op not in ("=", "!="):
        raise FilterError(f"operator {op} on {left.text} is not supported by this fake")
    equal = op == "="
    return lambda entry: (read(LogEntry.pb(entry)) == value) is equal


class _Parser:
    """AND binds loosest, then OR (Cloud Logging's precedence); juxtaposition is AND."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("the filter ends too early")
        self.at += 1
        return token

    def conjunction(self) -> Predicate:
        parts = [self.disjunction()]
        while (token := self.peek()) is not None and token.kind != ")":
            if token.kind == "path" and token.text == "AND":
                self.take()
            parts.append(self.disjunction())
        return lambda entry: all(p(entry) for p in parts)

    def disjunction(self) -> Predicate:
        parts = [self.primary()]
        while (token := self.peek()) is not None and token.kind == "path" and token.text == "OR":
            self.take()
            parts.append(self.primary())
        return lambda entry: any(p(entry) for p in parts)

    def primary(self) -> Predicate:
        token = self.take()
        if token.kind == "(":
            inner = self.conjunction()
            if self.take().kind != ")":
                raise FilterError("unbalanced parentheses")
            return inner
        if token.kind == "path" and token.text in ("AND", "OR", "NOT"):
            raise FilterError(f"{token.text} is not supported here by this fake")
        op = self.take()
        if op.kind != "op":
            raise FilterError(f"expected an operator after {token.text}, got {op.text}")
        return _comparison(token, op.text, self.take())


def compile_filter(query: str) -> Predicate:
    tokens = _tokens(query)
    if not tokens:
        return lambda entry: True
    parser = _Parser(tokens)
    predicate = parser.conjunction()
    if parser.peek() is not None:
        raise FilterError(f"unexpected {parser.peek()!r}")
    return predicate


# ------------------------------------------------------------------------------ the server


@dataclass
class _Tail:
    resource_names: tuple[str, ...]
    matches: Predicate
    pending: list[LogEntry] = field(default_factory=list)
    active: bool = False  # following (after tail_delay_seconds)
    cut: grpc.StatusCode | None = None
    ended: bool = False


def _project_of(entry: LogEntry) -> str:
    match = re.match(r"projects/([^/]+)/logs/", entry.log_name)
    return match[1] if match else ""


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FakeCloudLogging:
    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.changed = threading.Condition()
        self.list_requests: list[ListLogEntriesRequest] = []
        self.tail_requests: list[TailLogEntriesRequest] = []
        self.empty_pages = 0
        self.tail_delay_seconds = 0.0
        self._failures: dict[str, list[tuple[grpc.StatusCode, str]]] = {}
        self._tails: list[_Tail] = []
        self._ids = itertools.count(1)
        self._stopped = False
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        handlers = {
            "ListLogEntries": grpc.unary_unary_rpc_method_handler(
                self._list,
                request_deserializer=ListLogEntriesRequest.deserialize,
                response_serializer=ListLogEntriesResponse.serialize,
            ),
            "TailLogEntries": grpc.stream_stream_rpc_method_handler(
                self._tail,
                request_deserializer=TailLogEntriesRequest.deserialize,
                response_serializer=TailLogEntriesResponse.serialize,
            ),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeCloudLogging:
        self._server.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self._stopped = True
            self.changed.notify_all()
        self._server.stop(grace=None)

    # -------------------------------------------------------------- the tests' side

    def append(self, *entries: LogEntry) -> list[LogEntry]:
        """Entries arrive (an insert_id and the current time unless they have theirs); open
        tails whose filter matches receive them."""
        stored = []
        with self.changed:
            for entry in entries:
                entry = LogEntry.deserialize(LogEntry.serialize(entry))  # a copy
                if not entry.insert_id:
                    entry.insert_id = f"fake-{next(self._ids):08d}"
                raw = LogEntry.pb(entry)
                now = datetime.now(UTC)
                if not raw.HasField("timestamp"):
                    raw.timestamp.FromDatetime(now)
                raw.receive_timestamp.FromDatetime(now)
                self.entries.append(entry)
                stored.append(entry)
                for tail in self._tails:
                    if self._tail_matches(tail, entry):
                        tail.pending.append(entry)
            self.changed.notify_all()
        return stored

    def fail(
        self, method: str, code: grpc.StatusCode, message: str = "", *, times: int = 1
    ) -> None:
        """The next `times` calls of `method` ("ListLogEntries", "TailLogEntries") fail."""
        with self.changed:
            failures = self._failures.setdefault(method, [])
            failures.extend([(code, message or f"the fake says {code.name}")] * times)

    def heal(self) -> None:
        with self.changed:
            self._failures.clear()

    def cut_tails(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Open tails end with `code` (as Cloud Logging ends long sessions)."""
        with self.changed:
            for tail in self._tails:
                tail.cut = code
            self.changed.notify_all()

    def open_tails(self) -> int:
        with self.changed:
            return sum(1 for t in self._tails if t.active and not t.ended)

    def wait_for_tails(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` tails are open and following."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: sum(1 for t in self._tails if t.active and not t.ended) >= count, timeout
            )
        assert ok, f"expected {count} open tails"

    # -------------------------------------------------------------- the service

    def _take_failure(self, method: str) -> tuple[grpc.StatusCode, str] | None:
        with self.changed:
            failures = self._failures.get(method)
            return failures.pop(0) if failures else None

    @staticmethod
    def _projects(resource_names: Any) -> tuple[str, ...]:
        names = tuple(resource_names)
        if not names:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "resource_names is required")
        projects = []
        for name in names:
            match = re.fullmatch(r"projects/([a-z0-9\-:.]+)", name)
            if match is None:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"this fake only reads projects/<id> resource names, not {name!r}",
                )
            projects.append(match[1])
        return tuple(projects)

    @staticmethod
    def _compile(query: str) -> Predicate:
        try:
            return compile_filter(query)
        except FilterError as error:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter: {error}") from None

    def _tail_matches(self, tail: _Tail, entry: LogEntry) -> bool:
        return _project_of(entry) in tail.resource_names and tail.matches(entry)

    def _list(self, request: ListLogEntriesRequest, context: grpc.ServicerContext) -> Any:
        try:
            return self._list_entries(request)
        except _Abort as error:
            context.abort(error.code, error.message)

    def _list_entries(self, request: ListLogEntriesRequest) -> ListLogEntriesResponse:
        with self.changed:
            self.list_requests.append(request)
        failure = self._take_failure("ListLogEntries")
        if failure is not None:
            raise _Abort(*failure)
        projects = self._projects(request.resource_names)
        matches = self._compile(request.filter)
        order = request.order_by.strip().lower()
        if order not in ("", "timestamp asc", "timestamp desc"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid order_by {order!r}")
        descending = order == "timestamp desc"
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be 0-1000")
        size = request.page_size or DEFAULT_PAGE_SIZE
        query = hashlib.sha256(
            json.dumps([projects, request.filter, order, size]).encode()
        ).hexdigest()
        after: list[Any] | None = None
        empties = self.empty_pages
        if request.page_token:
            try:
                state = json.loads(base64.urlsafe_b64decode(request.page_token))
                assert state["q"] == query
                after, empties = state["after"], state["empties"]
            except Exception:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "page_token does not match this request"
                ) from None
        if empties:
            token = {"q": query, "after": after, "empties": empties - 1}
            return ListLogEntriesResponse(
                entries=[],
                next_page_token=base64.urlsafe_b64encode(json.dumps(token).encode()).decode(),
            )
        with self.changed:
            chosen = [e for e in self.entries if _project_of(e) in projects and matches(e)]
        # Equal timestamps: by insert_id, whatever the direction.
        chosen.sort(key=lambda e: (-entry_ns(e) if descending else entry_ns(e), e.insert_id))
        if after is not None:
            last = (after[0], after[1])
            chosen = [
                e
                for e in chosen
                if (-entry_ns(e) if descending else entry_ns(e), e.insert_id) > last
            ]
        page = chosen[:size]
        next_token = ""
        if len(chosen) > size:
            key = page[-1]
            cursor = [-entry_ns(key) if descending else entry_ns(key), key.insert_id]
            token = {"q": query, "after": cursor, "empties": 0}
            next_token = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        return ListLogEntriesResponse(entries=page, next_page_token=next_token)

    def _tail(
        self, requests: Iterator[TailLogEntriesRequest], context: grpc.ServicerContext
    ) -> Iterator[TailLogEntriesResponse]:
        try:
            first = next(requests)
        except StopIteration:
            return
        with self.changed:
            self.tail_requests.append(first)
            self.changed.notify_all()
        failure = self._take_failure("TailLogEntries")
        if failure is not None:
            context.abort(*failure)
        try:
            projects = self._projects(first.resource_names)
            matches = self._compile(first.filter)
        except _Abort as error:
            context.abort(error.code, error.message)
        tail = _Tail(projects, matches)
        if self.tail_delay_seconds:
            time.sleep(self.tail_delay_seconds)
        with self.changed:
            tail.active = True
            self._tails.append(tail)
            self.changed.notify_all()
        try:
            while True:
                with self.changed:
                    self.changed.wait_for(
                        lambda: bool(tail.pending) or tail.cut is not None or self._stopped,
                        timeout=0.1,
                    )
                    batch, tail.pending = tail.pending, []
                    cut = tail.cut
                if batch:
                    yield TailLogEntriesResponse(entries=batch)
                if cut is not None:
                    context.abort(cut, "the fake cut this tail")
                if self._stopped or not context.is_active():
                    return
        finally:
            with self.changed:
                tail.ended = True
                self._tails.remove(tail)
                self.changed.notify_all()


def entry(
    project: str,
    text: str | None = None,
    *,
    log: str = "workerpool0-0",
    at: datetime | None = None,
    severity: int = log_severity_pb2.DEFAULT,
    resource_type: str = "aiplatform.googleapis.com/PipelineJob",
    resource_labels: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    json_payload: dict[str, Any] | None = None,
    insert_id: str = "",
) -> LogEntry:
    """A LogEntry as Vertex AI writes them (text or JSON payload)."""
    made = LogEntry(
        log_name=f"projects/{project}/logs/{log.replace('/', '%2F')}",
        severity=severity,
        labels=labels or {},
        insert_id=insert_id,
    )
    made.resource.type = resource_type
    for key, value in (resource_labels or {}).items():
        made.resource.labels[key] = value
    raw = LogEntry.pb(made)
    if at is not None:
        raw.timestamp.FromDatetime(at)
    if json_payload is not None:
        raw.json_payload.update(json_payload)
    elif text is not None:
        made.text_payload = text
    return made
