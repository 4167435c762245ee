"""Shared HTTP input handling of the gateway: THE module both the transcoded Cairn API
(services/gateway/transcoding.py) and the MLflow layer (services/gateway/mlflow/**) use for
client input limits, safe JSON, value conversion, request ids, Content-Disposition, upload
re-chunking, download integrity and stream timeouts. Framework-light on purpose: it knows
Starlette's Request and nothing about google.rpc.Status or MLflow's error format; each
layer maps the two exception types below into its own error responses.

Errors
    GatewayInputError(field, message, *, http_status=400, reason=..., metadata=...)
        Client input that is refused: malformed or too-deep JSON, a number out of range,
        a body over its limit (http_status 413, reason REQUEST_TOO_LARGE, metadata
        limit_bytes / limit_messages). Never a 5xx.
    IdleTimeoutError(side, seconds)
        A stream stopped moving: side "client" (the HTTP client sent nothing for `seconds`;
        http_status 408, reason CLIENT_TIMEOUT) or "backend" (the backend answered nothing
        for `seconds`; http_status 504, reason BACKEND_TIMEOUT).

Limits (bytes unless named otherwise)
    MAX_JSON_BODY_BYTES = 8 MiB         a unary JSON body, and each message of a JSON stream
    MAX_STREAM_BODY_BYTES = 64 MiB      a client-streaming JSON array, in total
    MAX_STREAM_MESSAGES = 10_000        messages in one client-streaming JSON array
    OFFLOAD_BYTES = 256 KiB             JSON larger than this is parsed in a worker thread
    UPLOAD_CHUNK_BYTES = 1 MiB          the bytes of one upload stream message

JSON
    too_large(limit, what="request body", field="body") -> GatewayInputError   (413)
    too_many_messages(limit, field="body") -> GatewayInputError               (413)
    check_content_length(request, *, limit) -> None
        413 at once when the declared Content-Length is over `limit`.
    parse_json(raw, *, field="body") -> Any
        json.loads with every failure (bad UTF-8, malformed, nested too deeply, an integer
        over Python's digit limit) as a 400 GatewayInputError.
    async read_body(request, *, limit, idle_seconds=None) -> bytes
        The body, refused with 413 as soon as Content-Length or the bytes read pass `limit`;
        with idle_seconds, every chunk must arrive within it (else IdleTimeoutError client).
    async read_json_body(request, *, limit, idle_seconds=None, empty=None) -> Any
        read_body + parse_json, parsed in a worker thread above OFFLOAD_BYTES; a blank body
        gives `empty`.
    async offload(size, function, *args) -> T
        function(*args) inline when size <= OFFLOAD_BYTES, else in a worker thread (use it
        for json_format.ParseDict and friends on big values).
    JsonStreamReader(chunks, *, max_bytes=MAX_STREAM_BODY_BYTES,
                     max_items=MAX_STREAM_MESSAGES, max_item_bytes=MAX_JSON_BODY_BYTES,
                     field="body")
        `async for item in reader` yields JsonItem(index, value, size) for each element of
        a top-level JSON array as its bytes arrive (or the one value of a non-array body),
        so memory stays proportional to one element; refuses the element past max_items and
        any byte past max_bytes with 413 at once. After iteration: reader.blank (the body
        was empty) and reader.is_array.

Values (each raises GatewayInputError(field, ...) with a short, bounded message)
    to_int(value, field, *, minimum, maximum) -> int
    to_int64(value, field) -> int          JSON number or decimal string, in int64 range
    to_uint64(value, field) -> int
    to_double(value, field, *, finite=False) -> float
        JSON number (an integer literal too big for a double is refused, not an
        OverflowError) or "NaN" / "Infinity" / "-Infinity" / a decimal string.
    to_timestamp_ms(value, field) -> int   epoch milliseconds a google.protobuf.Timestamp
                                           can hold (years 1 to 9999)
    shorten(value, limit=64) -> str        a value for an error message, cut to `limit`

Headers
    valid_request_id(value) -> str         services.common.request_ids' one rule
    content_disposition(filename, disposition="attachment") -> str
        RFC 6266: an ASCII filename="..." fallback plus filename*=UTF-8''... (RFC 8187).

Streams
    async rechunk(chunks, size=UPLOAD_CHUNK_BYTES) -> AsyncIterator[bytes]
        Re-cut a body stream into `size`-byte pieces (the last one shorter).
    async verify_sha256(chunks, expected) -> AsyncIterator[bytes]
        Pass chunks through, holding the last one back until the whole digest matched
        `expected` (hex; falsy = no check); on a mismatch raises DigestMismatch instead of
        sending the final chunk, so a response with Content-Length is left short and the
        connection is cut.
    Idle timeout policy for every streaming transfer (uploads, downloads, JSON streams):
    each chunk from the client and each message from the backend must arrive within
    `seconds` (settings.gateway_timeout_seconds); a transfer that keeps moving is never
    cut, however long it takes. Unary calls keep a plain deadline.
    async with_idle_timeout(source, seconds, *, side="client", deadline=None)
        -> AsyncIterator[T]: every item of `source` within `seconds`, else
        IdleTimeoutError(side). With `deadline`, the wait counts as "waiting on the client"
        (the backend watchdog is paused) and each item touches it.
    async within(awaitable, seconds, *, side="backend") -> T
        One step (e.g. `call.read()`) within `seconds`, else IdleTimeoutError(side).
    IdleDeadline(seconds)
        Backend watchdog for a call the gateway feeds: `await deadline.guard(call)` fails
        with IdleTimeoutError("backend") (the awaitable is cancelled, which cancels a gRPC
        call) once neither progress (touch(), e.g. a chunk handed to the backend) nor a
        client wait happened for `seconds`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import json
import math
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from starlette.requests import Request

from services.common.request_ids import valid_request_id

__all__ = [
    "MAX_JSON_BODY_BYTES",
    "MAX_STREAM_BODY_BYTES",
    "MAX_STREAM_MESSAGES",
    "OFFLOAD_BYTES",
    "UPLOAD_CHUNK_BYTES",
    "DigestMismatch",
    "GatewayInputError",
    "IdleDeadline",
    "IdleTimeoutError",
    "JsonItem",
    "JsonStreamReader",
    "check_content_length",
    "content_disposition",
    "offload",
    "parse_json",
    "read_body",
    "read_json_body",
    "rechunk",
    "shorten",
    "to_double",
    "to_int",
    "to_int64",
    "to_timestamp_ms",
    "to_uint64",
    "too_large",
    "too_many_messages",
    "valid_request_id",
    "verify_sha256",
    "with_idle_timeout",
    "within",
]

T = TypeVar("T")

MAX_JSON_BODY_BYTES = 8 << 20
MAX_STREAM_BODY_BYTES = 64 << 20
MAX_STREAM_MESSAGES = 10_000
OFFLOAD_BYTES = 256 << 10
UPLOAD_CHUNK_BYTES = 1 << 20

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
# google.protobuf.Timestamp: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z.
TIMESTAMP_MS_MIN = -62_135_596_800_000
TIMESTAMP_MS_MAX = 253_402_300_799_999

StallSide = Literal["client", "backend"]


# =====================================================================================
# Errors
# =====================================================================================


class GatewayInputError(ValueError):
    """Client input the gateway refuses (400 unless http_status says otherwise, e.g. 413).
    `field` names the offending field ("body", "value", "metrics[3].timestamp"...)."""

    def __init__(
        self,
        field: str,
        message: str,
        *,
        http_status: int = 400,
        reason: str = "INVALID_ARGUMENT",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.http_status = http_status
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


def _size_text(limit: int) -> str:
    if limit >= 1 << 20 and limit % (1 << 20) == 0:
        return f"{limit >> 20} MiB"
    if limit >= 1 << 10 and limit % (1 << 10) == 0:
        return f"{limit >> 10} KiB"
    return f"{limit} bytes"


def too_large(limit: int, what: str = "request body", field: str = "body") -> GatewayInputError:
    """413: `what` is larger than `limit` bytes (the message names the limit)."""
    return GatewayInputError(
        field,
        f"{what} larger than {_size_text(limit)} ({limit} bytes), the limit",
        http_status=413,
        reason="REQUEST_TOO_LARGE",
        metadata={"limit_bytes": str(limit)},
    )


def too_many_messages(limit: int, field: str = "body") -> GatewayInputError:
    """413: a streamed JSON array with more than `limit` messages."""
    return GatewayInputError(
        field,
        f"request body has more than {limit} messages, the limit of one request; "
        "split the stream over several requests",
        http_status=413,
        reason="REQUEST_TOO_LARGE",
        metadata={"limit_messages": str(limit)},
    )


class IdleTimeoutError(Exception):
    """A streaming transfer that stopped moving for `seconds`: the client sent nothing
    (408 Request Timeout) or the backend answered nothing (504 Gateway Timeout)."""

    def __init__(self, side: StallSide, seconds: float) -> None:
        self.side = side
        self.seconds = seconds
        if side == "client":
            self.http_status = 408
            self.reason = "CLIENT_TIMEOUT"
            self.message = f"the client sent nothing for {seconds:g} s; the request was abandoned"
        else:
            self.http_status = 504
            self.reason = "BACKEND_TIMEOUT"
            self.message = f"the backend service sent nothing for {seconds:g} s"
        super().__init__(self.message)


class DigestMismatch(Exception):
    """Downloaded bytes whose sha256 differs from the one the backend announced."""


# =====================================================================================
# JSON
# =====================================================================================


def shorten(value: Any, limit: int = 64) -> str:
    """A value for an error message: its JSON (or repr) text, cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(raw: bytes | str, *, field: str = "body") -> Any:
    """json.loads with every client mistake as a 400 GatewayInputError."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise GatewayInputError(field, f"invalid {field}: not UTF-8 JSON") from None
    except RecursionError:
        raise GatewayInputError(field, f"invalid {field}: JSON nested too deeply") from None
    except json.JSONDecodeError as error:
        raise GatewayInputError(
            field,
            f"invalid {field}: malformed JSON at line {error.lineno} column {error.colno}: "
            f"{error.msg}",
        ) from None
    except (ValueError, OverflowError) as error:  # e.g. an integer over the digit limit
        raise GatewayInputError(field, f"invalid {field}: {_number_problem(error)}") from None


def _number_problem(error: Exception) -> str:
    """What a non-JSONDecodeError json.loads failure means, without Python internals."""
    if "digits" in str(error):
        return "a number with too many digits"
    return "a number out of range" if isinstance(error, OverflowError) else "invalid JSON value"


async def offload(size: int, function: Callable[..., T], *args: Any) -> T:
    """function(*args), in a worker thread when `size` (of its input) is over OFFLOAD_BYTES
    so a big parse never blocks the event loop."""
    if size <= OFFLOAD_BYTES:
        return function(*args)
    return await asyncio.to_thread(function, *args)


def _declared_length(request: Request) -> int | None:
    """The Content-Length header as a number (None: absent or not a number; the server
    rejects a malformed one anyway). Absurdly long values count as huge, unparsed."""
    declared = (request.headers.get("content-length") or "").strip()
    if not declared.isdigit():
        return None
    return int(declared) if len(declared) <= 18 else INT64_MAX


def check_content_length(request: Request, *, limit: int) -> None:
    """413 at once when the declared Content-Length is over `limit` (the body is unread)."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise too_large(limit)


async def read_body(request: Request, *, limit: int, idle_seconds: float | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit`."""
    check_content_length(request, limit=limit)
    chunks: AsyncIterable[bytes] = request.stream()
    if idle_seconds is not None:
        chunks = with_idle_timeout(chunks, idle_seconds, side="client")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


async def read_json_body(
    request: Request, *, limit: int, idle_seconds: float | None = None, empty: Any = None
) -> Any:
    """The parsed JSON body (`empty` when it is blank), size-capped, parsed off the event
    loop when big; every client mistake is a GatewayInputError (400, or 413 over `limit`)."""
    raw = await read_body(request, limit=limit, idle_seconds=idle_seconds)
    if not raw.strip():
        return empty
    return await offload(len(raw), parse_json, raw)


@dataclass(frozen=True)
class JsonItem:
    """One element of a streamed JSON array (or the single value of a non-array body)."""

    index: int
    value: Any
    size: int  # characters of its JSON text


_WHITESPACE = re.compile(r"[ \t\n\r]*")
# How far before the end of the buffer a decode error may be and still mean "truncated".
_TRUNCATION_SLACK = 16


class JsonStreamReader:
    """Incremental reader of a client-streaming JSON body: the elements of a top-level
    array, each decoded as soon as its text is complete. Memory holds the unparsed tail
    (at most one element, max_item_bytes) plus the values of one network chunk; parsing a
    large buffer runs in a worker thread. A body that is not an array is one value (a
    stream of one), read whole up to max_item_bytes."""

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int = MAX_STREAM_BODY_BYTES,
        max_items: int = MAX_STREAM_MESSAGES,
        max_item_bytes: int = MAX_JSON_BODY_BYTES,
        field: str = "body",
    ) -> None:
        self._chunks = chunks
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.max_item_bytes = max_item_bytes
        self.field = field
        self.blank = True
        self.is_array: bool | None = None
        self.count = 0
        self.bytes_read = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._text = ""  # unparsed text from self._pos on
        self._pos = 0
        self._pending: list[str] = []  # decoded text not yet joined into self._text
        self._pending_size = 0
        self._retry_at = 0  # unparsed size at which a truncated element is tried again
        self._state = "start"  # start | first | value | after | done | single

    def __aiter__(self) -> AsyncIterator[JsonItem]:
        return self._items()

    async def _items(self) -> AsyncIterator[JsonItem]:
        async for chunk in self._chunks:
            self.bytes_read += len(chunk)
            if self.bytes_read > self.max_bytes:
                raise too_large(self.max_bytes, field=self.field)
            text = self._decode(chunk, final=False)
            if not text:
                continue
            self._pending.append(text)
            self._pending_size += len(text)
            if self._unparsed_size() < self._retry_at:
                continue  # a truncated element: wait until its text doubled
            for item in await self._scan_off_loop(final=False):
                yield item
        self._pending.append(self._decode(b"", final=True))
        for item in await self._scan_off_loop(final=True):
            yield item

    def _decode(self, chunk: bytes, *, final: bool) -> str:
        try:
            return self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            raise GatewayInputError(self.field, f"invalid {self.field}: not UTF-8 JSON") from None

    def _unparsed_size(self) -> int:
        return len(self._text) - self._pos + self._pending_size

    async def _scan_off_loop(self, *, final: bool) -> list[JsonItem]:
        return await offload(self._unparsed_size(), self._scan, final)

    def _error(self, message: str) -> GatewayInputError:
        return GatewayInputError(self.field, f"invalid {self.field}: {message}")

    def _scan(self, final: bool) -> list[JsonItem]:
        """Every element complete in the buffer (synchronous; may run in a thread)."""
        if self._pending:
            self._text = self._text[self._pos :] + "".join(self._pending)
            self._pos = 0
            self._pending.clear()
            self._pending_size = 0
        text = self._text
        found: list[JsonItem] = []
        while True:
            self._pos = _WHITESPACE.match(text, self._pos).end()  # type: ignore[union-attr]
            at_end = self._pos >= len(text)
            if not at_end:
                self.blank = False
            state = self._state
            if state == "single":
                if not final:
                    if len(text) - self._pos > self.max_item_bytes:
                        raise too_large(self.max_item_bytes, field=self.field)
                    return found
                found.append(JsonItem(0, parse_json(text[self._pos :]), len(text) - self._pos))
                self.count = 1
                self._pos = len(text)
                self._state = "done"
                return found
            if at_end:
                if final and state not in ("start", "done"):
                    raise self._error("unexpected end of the JSON array")
                return found
            char = text[self._pos]
            if state == "start":
                if char == "[":
                    self.is_array = True
                    self._state = "first"
                    self._pos += 1
                else:
                    self.is_array = False
                    self._state = "single"
                continue
            if state == "done":
                raise self._error(f"unexpected data after the JSON array at {shorten(char)}")
            if state == "after":
                if char == ",":
                    self._state = "value"
                    self._pos += 1
                elif char == "]":
                    self._state = "done"
                    self._pos += 1
                else:
                    raise self._error(
                        f"expected ',' or ']' after array element {self.count - 1}, "
                        f"got {shorten(char)}"
                    )
                continue
            if state == "first" and char == "]":
                self._state = "done"
                self._pos += 1
                continue
            # state "first" or "value": an element starts here.
            if self.count >= self.max_items:
                raise too_many_messages(self.max_items, field=self.field)
            item = self._element(text, final)
            if item is None:
                return found
            found.append(item)

    def _element(self, text: str, final: bool) -> JsonItem | None:
        start = self._pos
        try:
            value, end = self._json.raw_decode(text, start)
        except json.JSONDecodeError as error:
            truncated = not final and (
                error.msg.startswith("Unterminated string")
                or len(text) - error.pos <= _TRUNCATION_SLACK
            )
            if not truncated:
                raise self._error(
                    f"malformed JSON in array element {self.count}: {error.msg}"
                ) from None
            self._wait_for_more(text, start)
            return None
        except RecursionError:
            raise self._error(f"array element {self.count} is nested too deeply") from None
        except (ValueError, OverflowError) as error:  # an integer over the digit limit
            raise self._error(f"array element {self.count}: {_number_problem(error)}") from None
        if end >= len(text) and not final and not isinstance(value, dict | list | str):
            self._wait_for_more(text, start)  # a number may go on ("12" of "123")
            return None
        size = end - start
        if size > self.max_item_bytes:
            raise too_large(self.max_item_bytes, "a message of the stream", self.field)
        self._pos = end
        self._retry_at = 0
        self._state = "after"
        item = JsonItem(self.count, value, size)
        self.count += 1
        return item

    def _wait_for_more(self, text: str, start: int) -> None:
        unparsed = len(text) - start
        if unparsed > self.max_item_bytes:
            raise too_large(self.max_item_bytes, "a message of the stream", self.field)
        # Try again once the element's text doubled: linear work for big elements.
        self._retry_at = max(2 * unparsed, 64 << 10)


# =====================================================================================
# Values
# =====================================================================================

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,40}")
_DOUBLE_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_int(value: Any, field: str, *, minimum: int, maximum: int) -> int:
    """An integer from a JSON number (integral) or a decimal string, within
    [minimum, maximum]; anything else is a GatewayInputError naming `field`."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None:
        raise GatewayInputError(
            field, f"invalid '{field}': expected an integer, got {shorten(value)}"
        )
    if not minimum <= number <= maximum:
        raise GatewayInputError(
            field,
            f"invalid '{field}': {shorten(value)} is out of range [{minimum}, {maximum}]",
        )
    return number


def to_int64(value: Any, field: str) -> int:
    return to_int(value, field, minimum=INT64_MIN, maximum=INT64_MAX)


def to_uint64(value: Any, field: str) -> int:
    return to_int(value, field, minimum=0, maximum=UINT64_MAX)


def to_timestamp_ms(value: Any, field: str) -> int:
    """Epoch milliseconds a google.protobuf.Timestamp can hold (years 1 to 9999)."""
    return to_int(value, field, minimum=TIMESTAMP_MS_MIN, maximum=TIMESTAMP_MS_MAX)


def to_double(value: Any, field: str, *, finite: bool = False) -> float:
    """A double from a JSON number or its proto3 JSON string forms ("NaN", "Infinity",
    "-Infinity", a decimal). An integer too large for a double, and (with finite=True)
    NaN or an infinity, are GatewayInputErrors naming `field`."""
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            raise GatewayInputError(
                field, f"invalid '{field}': {shorten(value)} is out of range for a double"
            ) from None
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text in _SPECIAL_DOUBLES:
            number = _SPECIAL_DOUBLES[text]
        elif len(text) <= 400 and _DOUBLE_TEXT.fullmatch(text):
            number = float(text)
    if number is None:
        raise GatewayInputError(
            field, f"invalid '{field}': expected a double, got {shorten(value)}"
        )
    if finite and not math.isfinite(number):
        raise GatewayInputError(
            field, f"invalid '{field}': {shorten(value)} is not a finite number"
        )
    return number


# =====================================================================================
# Headers
# =====================================================================================


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<RFC 8187>`.
    The fallback replaces what a quoted-string cannot carry (non-ASCII, control characters,
    quotes, backslashes) with "_"; filename* carries the exact name."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return (
        f'{disposition}; filename="{fallback or "download"}"; '
        f"filename*=UTF-8''{quote(filename, safe='')}"
    )


# =====================================================================================
# Streams
# =====================================================================================


async def rechunk(
    chunks: AsyncIterable[bytes], size: int = UPLOAD_CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """The bytes of `chunks` re-cut into `size`-byte pieces (the last one shorter, none
    empty)."""
    pending = bytearray()
    async for piece in chunks:
        pending += piece
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


async def verify_sha256(chunks: AsyncIterable[bytes], expected: str | None) -> AsyncIterator[bytes]:
    """`chunks` passed through, the last one held back until the digest of everything
    matched `expected` (lowercase hex; falsy: no check). On a mismatch DigestMismatch is
    raised instead of sending the last chunk, so a Content-Length response stays short."""
    digest = hashlib.sha256()
    held: bytes | None = None
    async for chunk in chunks:
        if not chunk:
            continue
        digest.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if expected and digest.hexdigest() != expected.lower():
        raise DigestMismatch(f"sha256 {digest.hexdigest()} does not match {expected}")
    if held is not None:
        yield held


async def within(awaitable: Awaitable[T], seconds: float, *, side: StallSide = "backend") -> T:
    """await `awaitable` (e.g. `call.read()`), failing with IdleTimeoutError(side) after
    `seconds`."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise IdleTimeoutError(side, seconds) from None
        raise


class IdleDeadline:
    """A backend watchdog for a call fed from a stream. `await guard(call)` lets the call
    run while the transfer moves: touch() (a chunk handed on) restarts the `seconds`
    window, and time spent in client_wait() (waiting for the client's next chunk, which
    with_idle_timeout bounds itself) never counts against the backend. When the window
    passes, the awaited call is cancelled and IdleTimeoutError("backend") is raised."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timeout: asyncio.Timeout | None = None
        self._client_waits = 0
        self.expired = False

    def _rearm(self) -> None:
        if self._timeout is None or self._timeout.expired():
            return
        if self._client_waits:
            self._timeout.reschedule(None)
        else:
            self._timeout.reschedule(asyncio.get_running_loop().time() + self.seconds)

    def touch(self) -> None:
        """Progress: the backend has `seconds` again from now."""
        self._rearm()

    @contextlib.contextmanager
    def client_wait(self) -> Iterator[None]:
        """While inside, the gateway waits for the client: the backend watchdog pauses."""
        self._client_waits += 1
        self._rearm()
        try:
            yield
        finally:
            self._client_waits -= 1
            self._rearm()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(None) as timeout:
                self._timeout = timeout
                self._rearm()
                return await awaitable
        except TimeoutError:
            if self._timeout is not None and self._timeout.expired():
                self.expired = True
                raise IdleTimeoutError("backend", self.seconds) from None
            raise
        finally:
            self._timeout = None


async def with_idle_timeout(
    source: AsyncIterable[T],
    seconds: float,
    *,
    side: StallSide = "client",
    deadline: IdleDeadline | None = None,
) -> AsyncIterator[T]:
    """Every item of `source`, each of which must arrive within `seconds` of asking for it
    (else IdleTimeoutError(side)). A consumer that is slow to ask is never timed out."""
    iterator = aiter(source)
    while True:
        waiting = (
            deadline.client_wait()
            if deadline is not None and side == "client"
            else contextlib.nullcontext()
        )
        with waiting:
            timeout = asyncio.timeout(seconds)
            try:
                async with timeout:
                    item = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if timeout.expired():
                    raise IdleTimeoutError(side, seconds) from None
                raise
        if deadline is not None:
            deadline.touch()
        yield item
