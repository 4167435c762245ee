"""Cloud Logging: the logs of Vertex AI pipeline jobs (the job's log_source: kind
"cloud_logging", attributes "project" and "filter", written by the scheduler's Vertex AI
launcher), read with google-cloud-logging's GAPIC client (LoggingServiceV2AsyncClient over
its gRPC transport: Application Default Credentials in production, a given channel in tests;
the same code path either way).

Queries. Every read names resource_names ["projects/<project>"] and the launcher's filter,
verbatim, in parentheses, AND-ed with the log proxy's own terms:
- min_severity: `(severity>=LEVEL OR severity=DEFAULT)`. An entry's severity is the level in
  the trainer's own line header when it has one (Vertex AI files everything written to
  stderr, Python logging included, as ERROR), else Cloud Logging's; entries without a
  severity may carry a header that says more, so they are fetched and judged here too;
- since: `timestamp>="<since>"`, and the job's creation time less an hour bounds every search
  (nothing of the job is older; Cloud Logging would otherwise search the whole retention);
- a page's position: `timestamp<="<time>"` (below).
The component is not a Cloud Logging field: it is filtered here, on the records.

Entries. One LogEntry is one record: time = entry.timestamp; message = text_payload, or
json_payload["message"] (the JSON rendered when it has none); when the message starts with a
trainer log header (services.logproxy.sources.files.RecordParser) its level is the severity,
its stage line ("progress: Transform ...") the component and the header is dropped from the
message, as in log files; else the severity is Cloud Logging's (DEFAULT: unspecified) and
the component comes from json_payload["component"] or a task label (COMPONENT_LABELS, e.g.
a Vertex AI pipeline task name: "trainer" -> "Trainer"), else "". source = the resource type,
its job id and the log ("aiplatform.googleapis.com/PipelineJob/<id>/<log>").

Paging (ListJobLogs, newest first: order_by "timestamp desc"). A page token carries a
keyset cursor, signed by the service's PageTokenCodec: the exact time (RFC 3339, nanoseconds)
of the last entry scanned and the insert_ids scanned at that time. The next page asks for
`timestamp<="<time>"` and skips those ids, so it continues exactly where the previous page
stopped whatever order Cloud Logging gives entries with equal times, and entries arriving
later (newer) never shift or repeat a page. Cloud Logging's own next_page_token is not the
position: it belongs to one request (filter and page size), while a page here may stop in
the middle of a Cloud Logging page (the component filter drops entries). It is carried only
when a search stopped before finding anything: Cloud Logging answers slow searches with
empty pages and a token, and one page here makes at most LIST_CALLS calls (the read quota is
60 requests a minute per project); the next page then resumes that very search.

Following (TailJobLogs). The TailLogEntries stream is opened first, then the last N entries
are read with ListLogEntries; entries are deduplicated by (time, insert_id) across the seam.
A tail starts following some time after it is opened, so when its first batch arrives (and
after every reconnection) entries newer than the newest seen are listed once more (oldest
first) before the batch: nothing written in between is lost. A tail that Cloud Logging ends
(its sessions are limited) or that breaks is opened again, with backoff. Once the job has
ended the follower keeps reading for END_GRACE_SECONDS (ingestion lags), lists what the tail
may still have missed, and ends.

Errors. PERMISSION_DENIED / UNAUTHENTICATED (and no credentials) -> FAILED_PRECONDITION
NO_CLOUD_LOGGING_ACCESS; INVALID_ARGUMENT -> FAILED_PRECONDITION INVALID_LOG_FILTER (the
job's filter is not the caller's), or INVALID_ARGUMENT INVALID_PAGE_TOKEN when a carried
Cloud Logging token was refused; NOT_FOUND -> FAILED_PRECONDITION
CLOUD_LOGGING_PROJECT_NOT_FOUND; RESOURCE_EXHAUSTED -> RESOURCE_EXHAUSTED
CLOUD_LOGGING_QUOTA_EXCEEDED; anything else (UNAVAILABLE, timeouts, ...) -> UNAVAILABLE
CLOUD_LOGGING_UNAVAILABLE, after retrying UNAVAILABLE for up to RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import google.auth
import grpc
import grpc.aio
from google.api_core import exceptions as api_exceptions
from google.api_core.retry_async import AsyncRetry, if_exception_type
from google.auth import exceptions as auth_exceptions
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2AsyncClient
from google.cloud.logging_v2.services.logging_service_v2.transports.grpc_asyncio import (
    LoggingServiceV2GrpcAsyncIOTransport,
)
from google.cloud.logging_v2.types import ListLogEntriesRequest, LogEntry, TailLogEntriesRequest
from google.logging.type import log_severity_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format, timestamp_pb2

from cairn.logproxy.v1 import log_entry_pb2
from services.common.errors import (
    CairnError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.logproxy.sources import LogRecord
from services.logproxy.sources.files import MAX_RECORD_CHARS, RecordParser, has_header

log = logging.getLogger(__name__)

# Cloud Logging's largest page; the smallest one asked for (fewer round trips).
MAX_CLOUD_PAGE = 1000
MIN_CLOUD_PAGE = 100
# Calls one ListJobLogs page may make (Cloud Logging allows 60 reads a minute per project).
LIST_CALLS = 5
# Calls one catch-up (after a tail (re)opens, and at the end) may make.
CATCH_UP_CALLS = 10
# A job's entries are not older than its creation less this (clocks differ a little).
JOB_START_SLACK = dt.timedelta(hours=1)
# How long UNAVAILABLE is retried before a read gives up.
RETRY_SECONDS = 3.0
# How often a follower asks `finished()` while entries keep coming.
POLL_SECONDS = 0.5
# Once the job has ended, how long its last entries may take to reach Cloud Logging.
END_GRACE_SECONDS = 3.0
# One TailLogEntries session at most (then it is opened again).
TAIL_SESSION_SECONDS = 3600.0
RECONNECT_SECONDS = (1.0, 30.0)
# A follower remembers this many entries for deduplication (the newest ones).
SEEN_LIMIT = 10_000

# Labels (of the entry, then of its resource) that may name the pipeline task of an entry,
# bare or under a prefix ("<domain>/task_name").
COMPONENT_LABELS = ("cairn_component", "component", "pipeline_task_name", "task_name")
_COMPONENTS = (
    ("examplegen", "ExampleGen"),
    ("statisticsgen", "StatisticsGen"),
    ("schemagen", "SchemaGen"),
    ("transform", "Transform"),
    ("trainer", "Trainer"),
    ("evaluat", "Evaluation"),
)
_ID_LABELS = ("pipeline_job_id", "job_id", "task_id")
_CLOUD_LEVELS = (
    (log_severity_pb2.CRITICAL, log_entry_pb2.SEVERITY_CRITICAL),
    (log_severity_pb2.ERROR, log_entry_pb2.SEVERITY_ERROR),
    (log_severity_pb2.WARNING, log_entry_pb2.SEVERITY_WARNING),
    (log_severity_pb2.INFO, log_entry_pb2.SEVERITY_INFO),
    (log_severity_pb2.DEBUG, log_entry_pb2.SEVERITY_DEBUG),
)
_CLOUD_NAMES: dict[int, str] = {
    log_entry_pb2.SEVERITY_DEBUG: "DEBUG",
    log_entry_pb2.SEVERITY_INFO: "INFO",
    log_entry_pb2.SEVERITY_WARNING: "WARNING",
    log_entry_pb2.SEVERITY_ERROR: "ERROR",
    log_entry_pb2.SEVERITY_CRITICAL: "CRITICAL",
}


class Wanted(Protocol):
    """The caller's filters (services.logproxy.service.Filters)."""

    @property
    def component(self) -> str: ...

    @property
    def min_severity(self) -> int: ...

    @property
    def since(self) -> dt.datetime | None: ...

    def keep(self, record: LogRecord) -> bool: ...


Finished = Callable[[], Awaitable[bool]]


def cairn_severity(level: int) -> int:
    """A Cloud Logging LogSeverity as a cairn Severity (DEFAULT: unspecified)."""
    for threshold, severity in _CLOUD_LEVELS:
        if level >= threshold:
            return severity
    return log_entry_pb2.SEVERITY_UNSPECIFIED


def component_named(value: str) -> str:
    """The pipeline component a task name or label value means ("trainer" -> "Trainer")."""
    letters = re.sub(r"[^a-z]", "", value.lower())
    for key, component in _COMPONENTS:
        if key in letters:
            return component
    return ""


def rfc3339(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond:06d}Z"


def _stamp(timestamp: timestamp_pb2.Timestamp) -> str:
    """Cloud Logging's exact time of an entry, RFC 3339 with nanoseconds (fixed width: these
    strings sort as the times do)."""
    moment = dt.datetime.fromtimestamp(timestamp.seconds, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{timestamp.nanos:09d}Z"


@dataclass(frozen=True)
class LogQuery:
    """Where a job's entries are: a project, the launcher's filter, and the time before
    which the job had no entries."""

    project: str
    filter: str
    not_before: dt.datetime | None = None

    @classmethod
    def of(cls, attributes: Mapping[str, str], created: dt.datetime | None = None) -> LogQuery:
        project = attributes.get("project", "").strip()
        query = attributes.get("filter", "").strip()
        if not project or not query:
            raise FailedPrecondition(
                "the job's Cloud Logging log source names no project or no filter",
                reason="INVALID_LOG_SOURCE",
                metadata={"kind": "cloud_logging"},
            )
        return cls(project, query, created - JOB_START_SLACK if created is not None else None)

    @property
    def resource_names(self) -> list[str]:
        return [f"projects/{self.project}"]

    def filter_with(self, min_severity: int, since: dt.datetime | None, *more: str) -> str:
        """The launcher's filter AND the log proxy's terms. (A newline closes the launcher's
        part: a `--` comment in it must not swallow the parenthesis.)"""
        terms = [f"({self.filter}\n)"]
        if min_severity:
            level = _CLOUD_NAMES[min_severity]
            terms.append(f"(severity>={level} OR severity=DEFAULT)")
        floors = [t for t in (since, self.not_before) if t is not None]
        if floors:
            terms.append(f'timestamp>="{rfc3339(max(floors))}"')
        terms.extend(more)
        return " AND ".join(terms)


@dataclass(frozen=True)
class Scanned:
    """An entry read from Cloud Logging: its record, exact time and insert_id."""

    record: LogRecord
    stamp: str
    insert_id: str

    @property
    def key(self) -> str:
        return f"{self.stamp} {self.insert_id}"


def _payload(raw: Any) -> tuple[str, dict[str, Any]]:
    """The entry's message text, and its JSON payload (or {})."""
    which = raw.WhichOneof("payload")
    if which == "text_payload":
        return str(raw.text_payload), {}
    if which == "json_payload":
        data: dict[str, Any] = json_format.MessageToDict(raw.json_payload)
        message = data.get("message")
        if isinstance(message, str):
            return message, data
        return json.dumps(data, sort_keys=True, ensure_ascii=False), data
    if which == "proto_payload":
        try:
            return json_format.MessageToJson(raw.proto_payload, indent=None), {}
        except Exception:  # a type this process does not know
            return f"[{raw.proto_payload.type_url}]", {}
    return "", {}


def _parse(text: str) -> tuple[int | None, str, str]:
    """(severity from a trainer log header, or None; component; message) of a message."""
    lines = [line.rstrip("\r") for line in text.rstrip("\n").split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines or not has_header(lines[0]):
        return None, "", text[:MAX_RECORD_CHARS]
    parser = RecordParser("")
    records = [r for i, line in enumerate(lines) if (r := parser.feed(i, line)) is not None]
    last = parser.flush()
    if last is not None:
        records.append(last)
    severity = max(r.severity for r in records)
    component = next((r.component for r in records if r.component), "")
    return severity, component, "\n".join(r.message for r in records)[:MAX_RECORD_CHARS]


def _labelled_component(raw: Any, data: Mapping[str, Any]) -> str:
    named = data.get("component")
    if isinstance(named, str) and component_named(named):
        return component_named(named)
    for labels in (raw.labels, raw.resource.labels):
        for key, value in sorted(labels.items()):
            if key.rsplit("/", 1)[-1] in COMPONENT_LABELS and component_named(value):
                return component_named(value)
    return ""


def _source(raw: Any) -> str:
    resource = raw.resource
    ident = next((resource.labels[k] for k in _ID_LABELS if resource.labels.get(k)), "")
    log_id = unquote(str(raw.log_name).partition("/logs/")[2]).rsplit("/", 1)[-1]
    return "/".join(p for p in (resource.type, ident, log_id) if p)


def scan_entry(entry: LogEntry) -> Scanned:
    """A Cloud Logging entry as a record (see the module docstring)."""
    raw: Any = LogEntry.pb(entry)
    text, data = _payload(raw)
    severity, component, message = _parse(text)
    if severity is None:
        severity = cairn_severity(int(raw.severity))
    time = raw.timestamp.ToDatetime(tzinfo=dt.UTC) if raw.HasField("timestamp") else None
    record = LogRecord(
        position=0,
        time=time,
        severity=severity,
        component=component or _labelled_component(raw, data),
        message=message,
        source=_source(raw),
    )
    return Scanned(record, _stamp(raw.timestamp), str(raw.insert_id))


@dataclass(frozen=True)
class Cursor:
    """Where a page of newest-first entries stopped (see the module docstring)."""

    stamp: str  # the exact time of the last entry scanned; "": none yet
    seen: tuple[str, ...]  # the insert_ids scanned at that time
    page_token: str = ""  # Cloud Logging's, to resume a search that found nothing yet
    page_size: int = 0  # the Cloud Logging page size that token belongs to

    def position(self) -> list[Any]:
        return [self.stamp, list(self.seen), self.page_token, self.page_size]

    @classmethod
    def of(cls, position: Sequence[Any]) -> Cursor:
        try:
            stamp, seen, page_token, page_size = position
            return cls(str(stamp), tuple(str(s) for s in seen), str(page_token), int(page_size))
        except (TypeError, ValueError):
            raise InvalidArgument(
                "page_token is not valid: pass back the next_page_token of the previous response",
                field="page_token",
                reason="INVALID_PAGE_TOKEN",
            ) from None


@dataclass(frozen=True)
class Scan:
    kept: list[Scanned]  # newest first
    newest: Scanned | None  # the newest entry scanned (kept or not)
    after: Cursor | None  # where the next page starts; None: no more


class _TailEnded(Exception):
    """Cloud Logging ended a tail normally (its session is over)."""


def _api_error(error: BaseException, where: LogQuery, *, page_token: bool = False) -> CairnError:
    """The Cairn error to raise for a failed Cloud Logging call."""
    if isinstance(error, CairnError):
        return error
    if isinstance(error, api_exceptions.RetryError) and error.cause is not None:
        error = error.cause
    if isinstance(error, grpc.RpcError) and not isinstance(
        error, api_exceptions.GoogleAPICallError
    ):
        error = api_exceptions.from_grpc_error(error)  # type: ignore[no-untyped-call]
    said = str(getattr(error, "message", "") or error)[:300]
    project = {"project": where.project}
    if isinstance(
        error,
        (api_exceptions.Forbidden, api_exceptions.Unauthorized, auth_exceptions.GoogleAuthError),
    ):
        return FailedPrecondition(
            f"the log proxy may not read the Cloud Logging entries of project {where.project} "
            f"({said}): give its service account roles/logging.viewer there",
            reason="NO_CLOUD_LOGGING_ACCESS",
            metadata=project,
        )
    if isinstance(error, api_exceptions.InvalidArgument):
        if page_token:
            return InvalidArgument(
                f"page_token is no longer valid ({said}): list again from the first page",
                field="page_token",
                reason="INVALID_PAGE_TOKEN",
            )
        return FailedPrecondition(
            f"Cloud Logging refused the job's log query: {said}",
            reason="INVALID_LOG_FILTER",
            metadata={**project, "filter": where.filter},
        )
    if isinstance(error, api_exceptions.NotFound):
        return FailedPrecondition(
            f"Cloud Logging has no project {where.project}: {said}",
            reason="CLOUD_LOGGING_PROJECT_NOT_FOUND",
            metadata=project,
        )
    if isinstance(error, api_exceptions.TooManyRequests):
        return ResourceExhausted(
            f"the Cloud Logging read quota of project {where.project} is used up: try again "
            "in a minute",
            reason="CLOUD_LOGGING_QUOTA_EXCEEDED",
            metadata=project,
        )
    if isinstance(error, api_exceptions.BadRequest):  # FAILED_PRECONDITION, OUT_OF_RANGE
        return FailedPrecondition(
            f"Cloud Logging refused to read the job's logs: {said}",
            reason="CLOUD_LOGGING_REFUSED",
            metadata=project,
        )
    # Unavailable, timeouts, internal errors: the channel's own text may name addresses.
    log.warning("Cloud Logging call failed: %r", error)
    code = getattr(error, "grpc_status_code", None)
    return Unavailable(
        "Cloud Logging is unavailable: try again later",
        reason="CLOUD_LOGGING_UNAVAILABLE",
        metadata={**project, "status": code.name if code is not None else type(error).__name__},
    )


def _transient(error: BaseException) -> bool:
    """Whether a follower opens a tail again after it ended with `error`."""
    if isinstance(error, grpc.RpcError) and not isinstance(
        error, api_exceptions.GoogleAPICallError
    ):
        error = api_exceptions.from_grpc_error(error)  # type: ignore[no-untyped-call]
    return isinstance(
        error,
        (
            _TailEnded,
            api_exceptions.ServiceUnavailable,
            api_exceptions.DeadlineExceeded,
            api_exceptions.InternalServerError,
            api_exceptions.Aborted,
            api_exceptions.Cancelled,
            api_exceptions.Unknown,
        ),
    )


class CloudLogs:
    """Reads and follows jobs' Cloud Logging entries through the official GAPIC client."""

    def __init__(
        self,
        client: LoggingServiceV2AsyncClient,
        *,
        request_timeout_seconds: float = 30.0,
        retry_seconds: float = RETRY_SECONDS,
        end_grace_seconds: float = END_GRACE_SECONDS,
    ) -> None:
        self.client = client
        self._timeout = request_timeout_seconds
        self._retry = AsyncRetry(
            predicate=if_exception_type(api_exceptions.ServiceUnavailable),
            initial=0.2,
            maximum=1.0,
            multiplier=2.0,
            timeout=retry_seconds,
        )
        self.end_grace_seconds = end_grace_seconds

    @classmethod
    async def connect(cls, channel: grpc.aio.Channel | None = None, **options: Any) -> CloudLogs:
        """A reader over `channel` (tests: a local server), or over logging.googleapis.com
        with Application Default Credentials (looked up in a thread: that may ask the
        metadata server). Runs in the event loop that will use it (the channel is bound to
        it)."""
        if channel is None:
            credentials, _ = await asyncio.to_thread(google.auth.default)
            transport = LoggingServiceV2GrpcAsyncIOTransport(credentials=credentials)
        else:
            transport = LoggingServiceV2GrpcAsyncIOTransport(channel=channel)
        return cls(LoggingServiceV2AsyncClient(transport=transport), **options)

    async def close(self) -> None:
        await self.client.transport.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ reading

    async def _list(self, where: LogQuery, request: ListLogEntriesRequest) -> Any:
        """One ListLogEntries call (its response: entries, next_page_token)."""
        try:
            return await self.client.list_log_entries(
                request=request, retry=self._retry, timeout=self._timeout
            )
        except Exception as error:
            raise _api_error(error, where, page_token=bool(request.page_token)) from None

    async def scan(
        self, where: LogQuery, wanted: Wanted, size: int, cursor: Cursor | None, *, calls: int
    ) -> Scan:
        """Up to `size` entries that `wanted` keeps, newest first, from `cursor` on, in at
        most `calls` calls; and where the next page starts."""
        if cursor is not None and cursor.page_token:
            cloud_size = cursor.page_size
        elif wanted.component:
            cloud_size = MAX_CLOUD_PAGE
        else:
            cloud_size = min(MAX_CLOUD_PAGE, max(size, MIN_CLOUD_PAGE))
        more = [f'timestamp<="{cursor.stamp}"'] if cursor is not None and cursor.stamp else []
        request = ListLogEntriesRequest(
            resource_names=where.resource_names,
            filter=where.filter_with(wanted.min_severity, wanted.since, *more),
            order_by="timestamp desc",
            page_size=cloud_size,
            page_token=cursor.page_token if cursor is not None else "",
        )
        skip_stamp, skip = (cursor.stamp, set(cursor.seen)) if cursor else ("", set[str]())
        stamp, ids = skip_stamp, set(skip)  # the position reached
        kept: list[Scanned] = []
        newest: Scanned | None = None
        token = ""
        for _ in range(calls):
            response = await self._list(where, request)
            entries = list(response.entries)
            for index, entry in enumerate(entries):
                scanned = scan_entry(entry)
                if scanned.stamp == skip_stamp and scanned.insert_id in skip:
                    continue  # served by the previous page
                newest = newest or scanned
                if scanned.stamp != stamp:
                    stamp, ids = scanned.stamp, set()
                ids.add(scanned.insert_id)
                if wanted.keep(scanned.record):
                    kept.append(scanned)
                if len(kept) >= size:
                    left = index + 1 < len(entries) or bool(response.next_page_token)
                    return Scan(kept, newest, Cursor(stamp, tuple(sorted(ids))) if left else None)
            token = str(response.next_page_token)
            if not token:
                return Scan(kept, newest, None)
            request.page_token = token
        if newest is not None:  # moved: the next page starts a new search from there
            return Scan(kept, newest, Cursor(stamp, tuple(sorted(ids))))
        # Nothing found yet: the next page resumes this very search.
        return Scan(kept, None, Cursor(skip_stamp, tuple(sorted(skip)), token, cloud_size))

    async def page(
        self, where: LogQuery, wanted: Wanted, size: int, cursor: Cursor | None
    ) -> tuple[list[LogRecord], Cursor | None]:
        """A page of records, newest first, and where the next one starts (None: no more)."""
        scan = await self.scan(where, wanted, size, cursor, calls=LIST_CALLS)
        return [s.record for s in scan.kept], scan.after

    # ------------------------------------------------------------------ tailing

    async def tail(
        self,
        where: LogQuery,
        wanted: Wanted,
        limit: int,
        follow: bool,
        finished: Finished,
    ) -> AsyncIterator[LogRecord]:
        """The last `limit` records, oldest first; then, with `follow`, new records as
        they arrive until `finished()` (see the module docstring)."""
        calls = LIST_CALLS + math.ceil(limit / MAX_CLOUD_PAGE)
        if not follow:
            scan = await self.scan(where, wanted, limit, None, calls=calls)
            for scanned in reversed(scan.kept):
                yield scanned.record
            return
        async for record in _Follower(self, where, wanted, finished).run(limit, calls):
            yield record


class _TailStream:
    """One TailLogEntries call, read by a task into a queue: batches of entries, then the
    exception it ended with (_TailEnded when Cloud Logging ended it)."""

    def __init__(self, client: LoggingServiceV2AsyncClient, request: TailLogEntriesRequest):
        self._client = client
        self._request = request
        self._queue: asyncio.Queue[list[LogEntry] | BaseException] = asyncio.Queue()
        self._closing = asyncio.Event()
        self._call: Any = None
        self._task = asyncio.create_task(self._pump())

    async def _requests(self) -> AsyncIterator[TailLogEntriesRequest]:
        yield self._request
        await self._closing.wait()  # the stream stays open until closed

    async def _pump(self) -> None:
        try:
            call: Any = self._client.tail_log_entries(
                requests=self._requests(), retry=None, timeout=TAIL_SESSION_SECONDS
            )
            if inspect.isawaitable(call):
                call = await call
            self._call = call
            async for response in call:
                if response.suppression_info:  # Cloud Logging dropped entries (rate limits)
                    log.warning("the tail dropped entries: %s", list(response.suppression_info))
                if response.entries:
                    self._queue.put_nowait(list(response.entries))
            self._queue.put_nowait(_TailEnded())
        except Exception as error:
            self._queue.put_nowait(error)

    async def get(self, patience: float) -> list[LogEntry] | BaseException | None:
        """The next batch or end; None when nothing came for `patience` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), patience)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self._closing.set()
        if self._call is not None:
            self._call.cancel()
        self._task.cancel()
        await asyncio.wait([self._task], timeout=5)


class _Follower:
    def __init__(self, logs: CloudLogs, where: LogQuery, wanted: Wanted, finished: Finished):
        self.logs = logs
        self.where = where
        self.wanted = wanted
        self.finished = finished
        self.seen: dict[str, str] = {}  # key -> stamp
        self.high = ""  # the newest time scanned

    def _fresh(self, scanned: Scanned) -> bool:
        """Whether the entry is new to this follower (and remember it)."""
        if scanned.key in self.seen:
            return False
        self.seen[scanned.key] = scanned.stamp
        self.high = max(self.high, scanned.stamp)
        if len(self.seen) > SEEN_LIMIT:
            newest = sorted(self.seen.items(), key=lambda item: item[1])[-SEEN_LIMIT // 2 :]
            self.seen = dict(newest)
        return True

    def _tail(self) -> _TailStream:
        request = TailLogEntriesRequest(
            resource_names=self.where.resource_names,
            filter=self.where.filter_with(self.wanted.min_severity, self.wanted.since),
        )
        return _TailStream(self.logs.client, request)

    async def _catch_up(self) -> AsyncIterator[LogRecord]:
        """Entries at or after the newest time seen that were not seen, oldest first."""
        more = [f'timestamp>="{self.high}"'] if self.high else []
        request = ListLogEntriesRequest(
            resource_names=self.where.resource_names,
            filter=self.where.filter_with(self.wanted.min_severity, self.wanted.since, *more),
            order_by="timestamp asc",
            page_size=MAX_CLOUD_PAGE,
        )
        for _ in range(CATCH_UP_CALLS):
            response = await self.logs._list(self.where, request)
            for entry in response.entries:
                scanned = scan_entry(entry)
                if self.wanted.keep(scanned.record) and self._fresh(scanned):
                    yield scanned.record
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token
        log.warning("more than %d entries to catch up with in %s", CATCH_UP_CALLS, self.where)

    async def run(self, limit: int, calls: int) -> AsyncIterator[LogRecord]:
        loop = asyncio.get_running_loop()
        stream = self._tail()  # first: it follows from some time after it is opened
        try:
            scan = await self.logs.scan(self.where, self.wanted, limit, None, calls=calls)
            if scan.newest is not None:
                self.high = scan.newest.stamp
            for scanned in reversed(scan.kept):
                self._fresh(scanned)
                yield scanned.record
            catch_up = True  # before the first batch of each tail
            backoff = RECONNECT_SECONDS[0]
            checked = -math.inf
            ended_at: float | None = None
            while True:
                item = await stream.get(POLL_SECONDS)
                if isinstance(item, list):
                    backoff = RECONNECT_SECONDS[0]
                    if catch_up:
                        try:
                            async for record in self._catch_up():
                                yield record
                            catch_up = False
                        except (Unavailable, ResourceExhausted) as error:
                            # Not caught up yet: the next batch tries again.
                            log.warning("cannot catch up with %s: %s", self.where, error)
                    batch = sorted((scan_entry(e) for e in item), key=lambda s: s.key)
                    for scanned in batch:
                        if self.wanted.keep(scanned.record) and self._fresh(scanned):
                            yield scanned.record
                elif item is not None:  # the tail ended
                    if not _transient(item):
                        raise _api_error(item, self.where)
                    if ended_at is None:
                        log.info("the tail of %s ended (%r): opening it again", self.where, item)
                        await stream.close()
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, RECONNECT_SECONDS[1])
                        stream = self._tail()
                        catch_up = True
                now = loop.time()
                if ended_at is None and (item is None or now - checked >= POLL_SECONDS):
                    checked = now
                    if await self.finished():
                        ended_at = now
                if ended_at is not None and now - ended_at >= self.logs.end_grace_seconds:
                    async for record in self._catch_up():
                        yield record
                    return
        finally:
            await stream.close()
