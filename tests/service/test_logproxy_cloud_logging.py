"""The log proxy reading a Vertex AI job's logs from Cloud Logging: the real log proxy (and
the gateway in front of it) reads through google-cloud-logging's GAPIC client from a local
server speaking the real google.logging.v2.LoggingServiceV2 protocol (tests/
gcp_logging_server.py), for jobs whose log_source a minimal scheduler serves (GetJob: the
Vertex AI launcher that writes these log sources is tested on its own). Entries newest first
with components, severities, times and sources; paging stable while entries arrive, also
across Cloud Logging's slow searches; filters pushed into the query (severity, since) or
applied here (component); tail, follow with reconnection and a seamless backfill until the
job ends; other jobs' entries never shown; Cloud Logging's errors as clear Cairn errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from gcp_logging_server import FakeCloudLogging, entry
from google.cloud.logging_v2.types import LogEntry
from google.logging.type import log_severity_pb2  # type: ignore[import-untyped]
from google.protobuf import timestamp_pb2

from cairn.logproxy.v1 import log_entry_pb2, logproxy_service_pb2, logproxy_service_pb2_grpc
from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from services.logproxy import app as logproxy_app

from cairn_testing import ServerThread, error_info, expect_error, make_settings, sqlite_url

pb = logproxy_service_pb2
SEVERITY = log_entry_pb2.Severity
CLOUD = log_severity_pb2
PROJECT = "cairn-test"
# As the Vertex AI launcher writes them: the pipeline job's entries or its tasks' entries.
FILTER_A = (
    '(resource.type="aiplatform.googleapis.com/PipelineJob" AND '
    'resource.labels.pipeline_job_id="cairn-a1") OR '
    '(resource.type="ml_job" AND labels."cairn_job_id"="a1")'
)
FILTER_B = (
    'resource.type="aiplatform.googleapis.com/PipelineJob" AND '
    'resource.labels.pipeline_job_id="cairn-b2"'
)
T0 = datetime(2026, 12, 4, 19, 0, 0, 123456, tzinfo=UTC)


class FakeScheduler(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    """GetJob over the jobs a test puts here."""

    def __init__(self) -> None:
        self.jobs: dict[str, job_pb2.Job] = {}
        self.lock = threading.Lock()

    def put(self, job: job_pb2.Job) -> job_pb2.Job:
        with self.lock:
            self.jobs[job.name] = job
        return job

    def set_state(self, name: str, state: int) -> None:
        with self.lock:
            self.jobs[name].state = state  # type: ignore[assignment]

    def GetJob(
        self, request: scheduler_service_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> job_pb2.Job:
        with self.lock:
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            copy = job_pb2.Job()
            copy.CopyFrom(job)
            return copy


def _job(job_id: str, attributes: dict[str, str], state: int = job_pb2.JOB_STATE_RUNNING) -> Any:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(T0 - timedelta(minutes=10))
    return job_pb2.Job(
        name=f"jobs/{job_id}",
        job_id=job_id,
        state=state,  # type: ignore[arg-type]
        create_time=created,
        log_source=job_pb2.LogSource(kind="cloud_logging", attributes=attributes),
    )


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.cloud = FakeCloudLogging().start()
        self.scheduler = FakeScheduler()
        self.scheduler_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(
            self.scheduler, self.scheduler_server
        )
        port = self.scheduler_server.add_insecure_port("127.0.0.1:0")
        self.scheduler_server.start()
        self.settings = settings = make_settings(
            sqlite_url(tmp_path), tmp_path / "data", scheduler_address=f"127.0.0.1:{port}"
        )
        address = self.cloud.address
        self.server = ServerThread(
            settings,
            ("logproxy", "gateway"),
            specs={
                "logproxy": partial(
                    logproxy_app.build_spec,
                    cloud_logging_channel=lambda: grpc.aio.insecure_channel(address),
                )
            },
        ).start()
        self.channel = grpc.insecure_channel(self.server.address("logproxy"))
        self.logs = logproxy_service_pb2_grpc.LogProxyServiceStub(self.channel)
        self.gateway = f"http://{self.server.address('gateway')}"
        self.a = self.scheduler.put(_job("a1", {"project": PROJECT, "filter": FILTER_A}))
        self.b = self.scheduler.put(_job("b2", {"project": PROJECT, "filter": FILTER_B}))

    def close(self) -> None:
        self.channel.close()
        self.server.stop()
        self.scheduler_server.stop(grace=None)
        self.cloud.stop()

    def list_logs(self, job: job_pb2.Job, **options: Any) -> pb.ListJobLogsResponse:
        return self.logs.ListJobLogs(pb.ListJobLogsRequest(job=job.name, **options))

    def messages(self, job: job_pb2.Job, **options: Any) -> list[str]:
        return [e.message for e in self.list_logs(job, page_size=1000, **options).entries]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    yield running
    running.close()


def pipeline_entry(text: str | None, seconds: float, job: str = "cairn-a1", **kw: Any) -> LogEntry:
    """An entry of the pipeline job (resource aiplatform.googleapis.com/PipelineJob)."""
    return entry(
        PROJECT,
        text,
        at=T0 + timedelta(seconds=seconds),
        resource_labels={"pipeline_job_id": job},
        **kw,
    )


def task_entry(text: str, seconds: float, task: str, **kw: Any) -> LogEntry:
    """An entry of one of its tasks (resource ml_job, labelled with the Cairn job)."""
    return entry(
        PROJECT,
        text,
        at=T0 + timedelta(seconds=seconds),
        resource_type="ml_job",
        resource_labels={"job_id": "4242"},
        labels={"cairn_job_id": "a1", "pipeline_task_name": task},
        **kw,
    )


# Job a1's entries, oldest first (index = the name used in the assertions).
ENTRIES: list[Callable[[], LogEntry]] = [
    # 0, 1: Python logging on stderr: Vertex AI says ERROR, the trainer's header says INFO.
    lambda: pipeline_entry(
        "2026-12-04 18:00:00,001 INFO cairn_trainer.progress: progress: ExampleGen 0.0% preparing",
        0,
        severity=CLOUD.ERROR,
    ),
    lambda: pipeline_entry(
        "2026-12-04 18:00:01,002 INFO cairn_trainer.progress: progress: Transform 25.0% started",
        1,
        severity=CLOUD.ERROR,
    ),
    # 2: no severity, a WARNING header with a continuation line; the task says Transform.
    lambda: task_entry(
        "2026-12-04 18:00:02,003 WARNING absl: a warning from Transform\n  with a second line",
        2,
        "transform",
    ),
    # 3: a plain line of the trainer task.
    lambda: task_entry("epoch 1/2 loss=0.5", 3, "trainer", severity=CLOUD.INFO),
    # 4, 5: the same time (ties are told apart by insert_id); structured JSON, then stderr.
    lambda: pipeline_entry(
        None,
        4,
        severity=CLOUD.ERROR,
        json_payload={"message": "loss became NaN", "component": "trainer"},
    ),
    lambda: pipeline_entry(
        "Traceback (most recent call last):\nValueError: boom", 4, severity=CLOUD.ERROR
    ),
    # 6: JSON without a message, no severity.
    lambda: pipeline_entry(None, 5, json_payload={"event": "done", "step": 3}),
]
MESSAGES = [
    "cairn_trainer.progress: progress: ExampleGen 0.0% preparing",
    "cairn_trainer.progress: progress: Transform 25.0% started",
    "absl: a warning from Transform\n  with a second line",
    "epoch 1/2 loss=0.5",
    "loss became NaN",
    "Traceback (most recent call last):\nValueError: boom",
    '{"event": "done", "step": 3.0}',
]


def _seed(stack: Stack) -> list[LogEntry]:
    """Job a1's entries, interleaved with entries it must never show: job b2's, another
    project's with a1's labels, and one from before a1 existed."""
    stored = []
    for index, make in enumerate(ENTRIES):
        stored += stack.cloud.append(make())
        if index in (1, 4):
            stack.cloud.append(pipeline_entry(f"b2 line {index}", index + 0.5, job="cairn-b2"))
    other = pipeline_entry("another project", 3.5)
    other.log_name = "projects/other-project/logs/workerpool0-0"
    stack.cloud.append(other)
    stack.cloud.append(pipeline_entry("from a previous life", -3 * 3600))
    return stored


def test_entries_newest_first_with_components_severities_pages_and_filters(
    stack: Stack,
) -> None:
    _seed(stack)
    listed = stack.list_logs(stack.a, page_size=100)
    entries = list(listed.entries)
    assert not listed.next_page_token
    assert [(e.component, e.severity, e.message) for e in entries] == [
        ("", SEVERITY.SEVERITY_UNSPECIFIED, MESSAGES[6]),
        ("Trainer", SEVERITY.SEVERITY_ERROR, MESSAGES[4]),
        ("", SEVERITY.SEVERITY_ERROR, MESSAGES[5]),
        ("Trainer", SEVERITY.SEVERITY_INFO, MESSAGES[3]),
        ("Transform", SEVERITY.SEVERITY_WARNING, MESSAGES[2]),
        ("Transform", SEVERITY.SEVERITY_INFO, MESSAGES[1]),
        ("ExampleGen", SEVERITY.SEVERITY_INFO, MESSAGES[0]),
    ]
    assert [e.time.ToDatetime(tzinfo=UTC) for e in entries] == [
        T0 + timedelta(seconds=s) for s in (5, 4, 4, 3, 2, 1, 0)
    ]
    assert entries[0].source == "aiplatform.googleapis.com/PipelineJob/cairn-a1/workerpool0-0"
    assert entries[3].source == "ml_job/4242/workerpool0-0"
    # What was asked of Cloud Logging: the job's filter verbatim, in parentheses, newest first,
    # searching from an hour before the job was created.
    sent = stack.cloud.list_requests[-1]
    assert list(sent.resource_names) == [f"projects/{PROJECT}"]
    assert sent.order_by == "timestamp desc"
    assert sent.filter == f'({FILTER_A}\n) AND timestamp>="2026-12-04T17:50:00.123456Z"'
    # Job b2 sees only its own.
    assert stack.messages(stack.b) == ["b2 line 4", "b2 line 1"]

    # Pages of two while the job keeps writing: the pages stay where they were (the page
    # boundary after the first page falls between two entries of the same time).
    pages: list[str] = []
    token = ""
    while True:
        page = stack.list_logs(stack.a, page_size=2, page_token=token)
        assert len(page.entries) <= 2 and len(pages) < 20
        pages += [e.message for e in page.entries]
        token = page.next_page_token
        if len(pages) == 2:
            stack.cloud.append(pipeline_entry("2026-12-04 18:00:10,000 INFO late: new", 10))
        if not token:
            break
    assert pages == [e.message for e in entries]
    assert stack.list_logs(stack.a, page_size=1).entries[0].message == "late: new"

    # Severity and time go into the query (entries without a severity are judged by their
    # header here); the component is filtered here.
    warnings = stack.list_logs(stack.a, min_severity=SEVERITY.SEVERITY_WARNING)
    assert [(e.severity, e.message) for e in warnings.entries] == [
        (SEVERITY.SEVERITY_ERROR, MESSAGES[4]),
        (SEVERITY.SEVERITY_ERROR, MESSAGES[5]),
        (SEVERITY.SEVERITY_WARNING, MESSAGES[2]),
    ]
    assert "(severity>=WARNING OR severity=DEFAULT)" in stack.cloud.list_requests[-1].filter
    assert stack.messages(stack.a, component="Trainer") == [MESSAGES[4], MESSAGES[3]]
    assert stack.messages(stack.a, component="Transform") == [MESSAGES[2], MESSAGES[1]]
    since = timestamp_pb2.Timestamp()
    since.FromDatetime(T0 + timedelta(seconds=3))
    assert stack.messages(stack.a, since=since) == [
        "late: new",
        MESSAGES[6],
        MESSAGES[4],
        MESSAGES[5],
        MESSAGES[3],
    ]
    assert 'timestamp>="2026-12-04T19:00:03.123456Z"' in stack.cloud.list_requests[-1].filter
    # A component filter pages through what it drops.
    trainer = stack.list_logs(stack.a, component="Trainer", page_size=1)
    assert [e.message for e in trainer.entries] == [MESSAGES[4]]
    rest = stack.list_logs(
        stack.a, component="Trainer", page_size=1, page_token=trainer.next_page_token
    )
    assert [e.message for e in rest.entries] == [MESSAGES[3]]
    # A token is bound to its query.
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stack.list_logs,
        stack.a,
        page_size=1,
        page_token=trainer.next_page_token,
    )
    assert error_info(error).reason == "PAGE_TOKEN_MISMATCH"

    # Cloud Logging answers slow searches with empty pages and a token: they are followed,
    # and when a page's budget of calls runs out first, the next page resumes that search.
    stack.cloud.empty_pages = 2
    assert [e.message for e in stack.list_logs(stack.a, page_size=2).entries] == [
        "late: new",
        MESSAGES[6],
    ]
    stack.cloud.empty_pages = 7
    slow = stack.list_logs(stack.a, page_size=2)
    assert list(slow.entries) == [] and slow.next_page_token
    stack.cloud.empty_pages = 0
    resumed = stack.list_logs(stack.a, page_size=2, page_token=slow.next_page_token)
    assert [e.message for e in resumed.entries] == ["late: new", MESSAGES[6]]

    # Over REST.
    with httpx.Client(base_url=stack.gateway, timeout=30) as http:
        listed_rest = http.get("/v1/jobs/a1/logs", params={"minSeverity": "SEVERITY_WARNING"})
        assert listed_rest.status_code == 200, listed_rest.text
        assert [e["message"] for e in listed_rest.json()["entries"]] == [
            MESSAGES[4],
            MESSAGES[5],
            MESSAGES[2],
        ]
        tail = http.get("/v1/jobs/a1/logs:tail", params={"limit": 2})
        assert tail.status_code == 200, tail.text
        lines = [json.loads(line) for line in tail.text.splitlines()]
        assert [line["message"] for line in lines] == [MESSAGES[6], "late: new"]


class Reader:
    """Reads a TailJobLogs stream in a thread."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.seen: list[log_entry_pb2.LogEntry] = []
        self.changed = threading.Condition()
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for item in self.stream:
                with self.changed:
                    self.seen.append(item)
                    self.changed.notify_all()
        except grpc.RpcError as error:
            self.error = error

    def wait_for(self, count: int, timeout: float = 20) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, timeout), self.seen
            return [e.message for e in self.seen]

    def messages(self) -> list[str]:
        with self.changed:
            return [e.message for e in self.seen]


def test_tail_and_follow_until_the_job_ends(stack: Stack) -> None:
    for make in ENTRIES:
        stack.cloud.append(make())
    reader = Reader(
        stack.logs.TailJobLogs(pb.TailJobLogsRequest(job="jobs/a1", limit=2, follow=True))
    )
    assert reader.wait_for(2) == [MESSAGES[4], MESSAGES[6]]
    stack.cloud.wait_for_tails(1)
    # The tail asked for the job's entries only.
    assert stack.cloud.tail_requests[-1].filter.startswith(f"({FILTER_A}\n)")

    stack.cloud.append(pipeline_entry("b2 live", 0, job="cairn-b2"))
    stack.cloud.append(task_entry("2026-12-04 19:00:00,000 INFO x: live one", 0, "trainer"))
    assert reader.wait_for(3)[2] == "x: live one"

    # Cloud Logging ends the tail: the follower opens it again, and what was written
    # meanwhile comes first (listed when the new tail's first batch arrives).
    stack.cloud.cut_tails()
    stack.cloud.append(pipeline_entry("written while no tail was open", 100))
    deadline = time.monotonic() + 20
    while len(stack.cloud.tail_requests) < 2 or stack.cloud.open_tails() != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack.cloud.append(pipeline_entry("after the reconnection", 101))
    assert reader.wait_for(5)[3:] == ["written while no tail was open", "after the reconnection"]

    # The job ends; its last entry reaches Cloud Logging a moment later, and is shown.
    stack.scheduler.set_state("jobs/a1", job_pb2.JOB_STATE_SUCCEEDED)
    stack.cloud.append(pipeline_entry("exported", 102, severity=CLOUD.NOTICE))
    reader.thread.join(30)
    assert not reader.thread.is_alive() and reader.error is None
    assert reader.messages() == [
        MESSAGES[4],
        MESSAGES[6],
        "x: live one",
        "written while no tail was open",
        "after the reconnection",
        "exported",
    ]
    assert reader.seen[2].component == "Trainer"
    assert reader.seen[2].time.ToDatetime(tzinfo=UTC) == T0
    assert reader.seen[5].severity == SEVERITY.SEVERITY_INFO

    # Following an ended job sends the tail and ends (no tail is opened).
    tails = len(stack.cloud.tail_requests)
    ended = list(
        stack.logs.TailJobLogs(
            pb.TailJobLogsRequest(
                job="jobs/a1", limit=10, follow=True, min_severity=SEVERITY.SEVERITY_WARNING
            )
        )
    )
    assert [e.message for e in ended] == [MESSAGES[2], MESSAGES[5], MESSAGES[4]]
    assert len(stack.cloud.tail_requests) == tails


def test_follow_misses_nothing_between_the_backfill_and_the_tail(stack: Stack) -> None:
    """A tail follows from some time after it is opened: what arrives in between is listed
    before its first batch, and nothing is sent twice."""
    for make in ENTRIES:
        stack.cloud.append(make())
    stack.cloud.tail_delay_seconds = 2.0
    reader = Reader(
        stack.logs.TailJobLogs(pb.TailJobLogsRequest(job="jobs/a1", limit=1, follow=True))
    )
    assert reader.wait_for(1) == [MESSAGES[6]]
    deadline = time.monotonic() + 10
    while not stack.cloud.tail_requests:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert stack.cloud.open_tails() == 0
    stack.cloud.append(pipeline_entry("in the gap", 50))
    stack.cloud.wait_for_tails(1)
    stack.cloud.append(pipeline_entry("followed", 51))
    assert reader.wait_for(3) == [MESSAGES[6], "in the gap", "followed"]
    stack.scheduler.set_state("jobs/a1", job_pb2.JOB_STATE_FAILED)
    reader.thread.join(30)
    assert not reader.thread.is_alive() and reader.error is None
    assert reader.messages() == [MESSAGES[6], "in the gap", "followed"]


def test_cloud_logging_errors_are_clear_cairn_errors(stack: Stack) -> None:
    stack.cloud.append(ENTRIES[0]())
    for code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        stack.cloud.fail("ListLogEntries", code, "Permission 'logging.logEntries.list' denied")
        error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, stack.list_logs, stack.a)
        info = error_info(error)
        assert info.reason == "NO_CLOUD_LOGGING_ACCESS" and info.metadata["project"] == PROJECT
        assert "logging.logEntries.list" in error.details()

    # UNAVAILABLE is retried a moment, then reported.
    stack.cloud.fail("ListLogEntries", grpc.StatusCode.UNAVAILABLE)
    assert stack.messages(stack.a) == [MESSAGES[0]]
    stack.cloud.fail("ListLogEntries", grpc.StatusCode.UNAVAILABLE, times=1000)
    error = expect_error(grpc.StatusCode.UNAVAILABLE, stack.list_logs, stack.a)
    assert error_info(error).reason == "CLOUD_LOGGING_UNAVAILABLE"
    stack.cloud.heal()

    stack.cloud.fail("ListLogEntries", grpc.StatusCode.RESOURCE_EXHAUSTED)
    error = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, stack.list_logs, stack.a)
    assert error_info(error).reason == "CLOUD_LOGGING_QUOTA_EXCEEDED"

    # A filter Cloud Logging refuses is the job's log source's fault, not the caller's.
    bad = stack.scheduler.put(
        _job("bad", {"project": PROJECT, "filter": 'resource.labels.pipeline_job_id=~"a.*"'})
    )
    error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, stack.list_logs, bad)
    assert error_info(error).reason == "INVALID_LOG_FILTER"
    half = stack.scheduler.put(_job("half", {"filter": FILTER_A}))
    error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, stack.list_logs, half)
    assert error_info(error).reason == "INVALID_LOG_SOURCE"

    # A tail refused while following ends the stream with the error, after the backfill.
    stack.cloud.fail("TailLogEntries", grpc.StatusCode.PERMISSION_DENIED)
    stream = stack.logs.TailJobLogs(pb.TailJobLogsRequest(job="jobs/a1", follow=True))
    assert next(stream).message == MESSAGES[0]
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(raised.value).reason == "NO_CLOUD_LOGGING_ACCESS"

    # Still serving.
    assert stack.messages(stack.a) == [MESSAGES[0]]


def test_without_credentials_the_log_proxy_says_so(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production path (Application Default Credentials) when there are none."""
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS", str(Path(stack.settings.data_dir) / "none.json")
    )
    server = ServerThread(stack.settings, ("logproxy",)).start()
    try:
        with grpc.insecure_channel(server.address("logproxy")) as channel:
            logs = logproxy_service_pb2_grpc.LogProxyServiceStub(channel)
            error = expect_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                logs.ListJobLogs,
                pb.ListJobLogsRequest(job="jobs/a1"),
            )
            assert error_info(error).reason == "NO_CLOUD_LOGGING_ACCESS"
            assert "none.json" in error.details()
    finally:
        server.stop()
