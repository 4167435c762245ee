"""The log proxy's domain: find where a job's logs are (the scheduler says), read them from
that source, filter (component, severity, since), page newest first, or tail and follow.

Sources: "file" (the local launcher's log files, sources/files.py), "kubernetes" (the
pods of the Kubernetes launcher's Jobs, sources/kubernetes.py) and "cloud_logging" (Vertex
AI pipeline jobs' entries in Cloud Logging, sources/cloud_logging.py). The kubernetes and
google-cloud-logging clients are only imported when a job's logs are there.

Page tokens carry the position of the last entry returned (a byte offset in a file; a pod
and line number in pod logs; a Cloud Logging entry's exact time and insert_ids): positions
only move back in time as pages go on, so a page is stable while the job keeps writing.
Files and pod logs are read and filtered here; Cloud Logging is asked for the page itself
(the job's filter AND severity and time terms), newest first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc.aio

from cairn.logproxy.v1 import log_entry_pb2
from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from services.common.clients import CallOptions, backend_error
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.paging import PageTokenCodec, coerce_page_size
from services.logproxy.sources import LogRecord
from services.logproxy.sources.files import follow_records, read_log

if TYPE_CHECKING:
    from services.logproxy.sources.cloud_logging import CloudLogs, LogQuery
    from services.logproxy.sources.kubernetes import KubernetesLogs

TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
COMPONENTS = ("ExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer", "Evaluation")
DEFAULT_TAIL = 100
MAX_TAIL = 10_000
# How often a follower asks the scheduler whether the job has ended.
JOB_POLL_SECONDS = 2.0
SOURCES = ("file", "kubernetes", "cloud_logging")

Finished = Callable[[], Awaitable[bool]]
# Continues reading a source where a read of it ended, until `finished()`.
Follow = Callable[[Finished], AsyncIterator[LogRecord]]


@dataclass(frozen=True)
class Filters:
    component: str
    min_severity: int
    since: dt.datetime | None

    def keep(self, record: LogRecord) -> bool:
        if self.component and record.component != self.component:
            return False
        if self.min_severity and record.severity < self.min_severity:
            return False
        return not (self.since is not None and record.time is not None and record.time < self.since)


def filters(component: str, min_severity: int, since: dt.datetime | None) -> Filters:
    if component and component not in COMPONENTS:
        raise InvalidArgument(
            f"unknown component {component!r}; known: {', '.join(COMPONENTS)}",
            field="component",
            reason="UNKNOWN_COMPONENT",
        )
    if min_severity not in log_entry_pb2.Severity.values():
        raise InvalidArgument(f"min_severity has no value {min_severity}", field="min_severity")
    return Filters(component, min_severity, since)


class LogProxyService:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        tokens: PageTokenCodec,
        *,
        kubernetes: Callable[[], KubernetesLogs] | None = None,
        cloud_logging: Callable[[], Awaitable[CloudLogs]] | None = None,
    ) -> None:
        """`kubernetes` makes the reader of pod logs, `cloud_logging` the reader of Cloud
        Logging (each on first use: the client libraries and their credentials are only
        needed when a job's logs are there)."""
        self._scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._tokens = tokens
        self._make_kubernetes = kubernetes
        self._kubernetes: KubernetesLogs | None = None
        self._make_cloud_logging = cloud_logging
        self._cloud_logging: CloudLogs | None = None
        self._cloud_logging_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._cloud_logging is not None:
            await self._cloud_logging.close()

    async def _job(self, name: str, options: CallOptions) -> job_pb2.Job:
        if not name.startswith("jobs/"):
            raise InvalidArgument(
                "job must look like jobs/{id}", field="job", reason="INVALID_NAME"
            )
        try:
            job: job_pb2.Job = await self._scheduler.GetJob(
                scheduler_service_pb2.GetJobRequest(name=name),
                timeout=options.timeout,
                metadata=options.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, "scheduler") from None
        return job

    def _source(self, job: job_pb2.Job) -> str:
        source = job.log_source
        if not source.kind:
            raise FailedPrecondition(
                f"job {job.job_id} has no logs yet: its workload has not started",
                reason="NO_LOGS_YET",
            )
        if source.kind not in SOURCES:
            raise FailedPrecondition(
                f"this log proxy cannot read {source.kind} logs yet (job {job.job_id})",
                reason="UNSUPPORTED_LOG_SOURCE",
                metadata={"kind": source.kind},
            )
        return source.kind

    def _pod_logs(self) -> KubernetesLogs:
        if self._kubernetes is None:
            try:
                if self._make_kubernetes is None:
                    raise RuntimeError("no Kubernetes access was configured")
                self._kubernetes = self._make_kubernetes()
            except Exception as error:  # no client (the k8s extra), no cluster configuration
                raise FailedPrecondition(
                    f"this log proxy cannot read Kubernetes pod logs: {error}",
                    reason="NO_KUBERNETES_ACCESS",
                ) from None
        return self._kubernetes

    async def _cloud_logs(self) -> CloudLogs:
        async with self._cloud_logging_lock:
            if self._cloud_logging is None:
                try:
                    if self._make_cloud_logging is None:
                        raise RuntimeError("no Cloud Logging access was configured")
                    self._cloud_logging = await self._make_cloud_logging()
                except Exception as error:  # no client (the gcp extra), no credentials
                    raise FailedPrecondition(
                        f"this log proxy cannot read Cloud Logging: {error}",
                        reason="NO_CLOUD_LOGGING_ACCESS",
                    ) from None
            return self._cloud_logging

    @staticmethod
    def _log_query(job: job_pb2.Job) -> LogQuery:
        from services.logproxy.sources.cloud_logging import LogQuery

        created = job.create_time.ToDatetime(tzinfo=dt.UTC) if job.HasField("create_time") else None
        return LogQuery.of(job.log_source.attributes, created)

    async def _read(self, job: job_pb2.Job) -> tuple[list[LogRecord], Follow]:
        """The job's records, oldest first, and how to follow its log from there."""
        attributes = job.log_source.attributes
        if self._source(job) == "file":
            path = Path(attributes["path"])
            records, end = await asyncio.to_thread(read_log, path)
            component = records[-1].component if records else ""
            return records, lambda finished: follow_records(path, end, component, finished)
        from services.logproxy.sources.kubernetes import PodSelector

        logs = self._pod_logs()
        snapshot = await asyncio.to_thread(logs.read, PodSelector.of(attributes))
        return snapshot.records, lambda finished: logs.follow(snapshot, finished)

    async def list_logs(
        self,
        name: str,
        wanted: Filters,
        page_size: int,
        page_token: str,
        options: CallOptions,
    ) -> tuple[list[log_entry_pb2.LogEntry], str]:
        job = await self._job(name, options)
        if self._source(job) == "cloud_logging":
            return await self._list_cloud_logs(job, wanted, page_size, page_token)
        query = self._tokens.fingerprint("logs", name, wanted.component, wanted.min_severity)
        before = self._tokens.decode(page_token, query)[0] if page_token else None
        size = coerce_page_size(page_size)
        records, _ = await self._read(job)
        newest_first = [
            r
            for r in reversed(records)
            if wanted.keep(r) and (before is None or r.position < before)
        ]
        page = newest_first[:size]
        token = ""
        if len(newest_first) > size:
            token = self._tokens.encode([page[-1].position], query)
        return [r.to_proto() for r in page], token

    async def _list_cloud_logs(
        self, job: job_pb2.Job, wanted: Filters, page_size: int, page_token: str
    ) -> tuple[list[log_entry_pb2.LogEntry], str]:
        """A page read from Cloud Logging itself; the token carries its cursor."""
        logs = await self._cloud_logs()  # first: it says when the client is missing
        from services.logproxy.sources.cloud_logging import Cursor

        query = self._tokens.fingerprint(
            "cloud_logging", job.name, wanted.component, wanted.min_severity, wanted.since
        )
        cursor = Cursor.of(self._tokens.decode(page_token, query)) if page_token else None
        size = coerce_page_size(page_size)
        where = self._log_query(job)
        records, after = await logs.page(where, wanted, size, cursor)
        token = self._tokens.encode(after.position(), query) if after is not None else ""
        return [r.to_proto() for r in records], token

    async def tail_logs(
        self,
        name: str,
        wanted: Filters,
        limit: int,
        follow: bool,
        options: CallOptions,
        cancelled: Callable[[], bool],
    ) -> AsyncIterator[log_entry_pb2.LogEntry]:
        if not 0 <= limit <= MAX_TAIL:
            raise InvalidArgument(f"limit must be 0-{MAX_TAIL}", field="limit")
        job = await self._job(name, options)
        checked = [0.0, job.state in TERMINAL]

        async def finished() -> bool:
            loop = asyncio.get_running_loop()
            if cancelled():
                return True
            if not checked[1] and loop.time() - checked[0] >= JOB_POLL_SECONDS:
                checked[0] = loop.time()
                current = await self._job(name, options)
                checked[1] = current.state in TERMINAL
            return bool(checked[1])

        if self._source(job) == "cloud_logging":
            logs = await self._cloud_logs()
            where = self._log_query(job)
            following = follow and job.state not in TERMINAL
            async for record in logs.tail(
                where, wanted, limit or DEFAULT_TAIL, following, finished
            ):
                yield record.to_proto()
            return
        records, follow_from = await self._read(job)
        for record in _last(records, wanted, limit or DEFAULT_TAIL):
            yield record.to_proto()
        if not follow or job.state in TERMINAL:
            return
        async for record in follow_from(finished):
            if wanted.keep(record):
                yield record.to_proto()


def _last(records: Sequence[LogRecord], wanted: Filters, count: int) -> list[LogRecord]:
    kept = [r for r in records if wanted.keep(r)]
    return kept[-count:]
