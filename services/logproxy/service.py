"""The log proxy's domain: find where a job's logs are (the scheduler says), read them from
that source, filter (component, severity, since), page newest first, or tail and follow.

Sources: "file" (the local launcher's log files, sources/files.py) and "kubernetes" (the
pods of the Kubernetes launcher's Jobs, sources/kubernetes.py; the kubernetes client is only
imported when a job's logs are there).

Page tokens carry the position of the last entry returned (a byte offset in a file; a pod
and line number in pod logs): positions only grow as the log grows, so a page is stable
while the job keeps writing.
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
    from services.logproxy.sources.kubernetes import KubernetesLogs

TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
COMPONENTS = ("ExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer", "Evaluation")
DEFAULT_TAIL = 100
MAX_TAIL = 10_000
# How often a follower asks the scheduler whether the job has ended.
JOB_POLL_SECONDS = 2.0
SOURCES = ("file", "kubernetes")

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
    ) -> None:
        """`kubernetes` makes the reader of pod logs (on first use: it needs the kubernetes
        client and a cluster configuration only when a job's logs are in pods)."""
        self._scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._tokens = tokens
        self._make_kubernetes = kubernetes
        self._kubernetes: KubernetesLogs | None = None

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
        self._source(job)
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
        records, follow_from = await self._read(job)
        for record in _last(records, wanted, limit or DEFAULT_TAIL):
            yield record.to_proto()
        if not follow or job.state in TERMINAL:
            return
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

        async for record in follow_from(finished):
            if wanted.keep(record):
                yield record.to_proto()


def _last(records: Sequence[LogRecord], wanted: Filters, count: int) -> list[LogRecord]:
    kept = [r for r in records if wanted.keep(r)]
    return kept[-count:]
