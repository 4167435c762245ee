"""The log proxy reading a Kubernetes job's pod logs: the real scheduler runs the job through
the Kubernetes launcher against the local API server (tests/k8s_api.py), and the real log
proxy reads the pod's log through the official client pointed at the same server: entries
newest first with their components, severities and Kubernetes timestamps, paging, filters,
nothing (not an error) before the pod runs, and tail + follow until the Job succeeds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from k8s_api import FakeKubernetes
from test_kubernetes_launcher import NAMESPACE, api_client, make_launcher

from cairn.logproxy.v1 import log_entry_pb2, logproxy_service_pb2, logproxy_service_pb2_grpc
from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from services.common.settings import Settings
from services.logproxy import app as logproxy_app
from services.scheduler import app as scheduler_app
from services.scheduler.launchers.kubernetes import job_name

from cairn_testing import ServerThread, make_configs

pb = logproxy_service_pb2
SEVERITY = log_entry_pb2.Severity
# When Kubernetes says the lines were written (the trainer's own header times differ: the
# entries carry Kubernetes' times).
T0 = datetime(2026, 12, 4, 19, 0, 0, 123456, tzinfo=UTC)
LINES = [
    "2026-12-04 18:00:00,001 INFO cairn_trainer.progress: progress: ExampleGen 0.0% preparing",
    "2026-12-04 18:00:01,002 INFO cairn_trainer.progress: progress: Transform 25.0% started",
    "2026-12-04 18:00:02,003 WARNING absl: a warning from Transform",
    "  with a second line",
    "2026-12-04 18:00:03,004 INFO cairn_trainer.progress: progress: Trainer 40.0% training",
    "2026-12-04 18:00:04,005 ERROR cairn_trainer.cli: loss became NaN",
    "Traceback (most recent call last):",
    "ValueError: boom",
]


class Stack:
    def __init__(self, settings: Settings, cluster: FakeKubernetes) -> None:
        self.cluster = cluster
        self.server = ServerThread(
            settings.model_copy(update={"scheduler_poll_seconds": 0.1}),
            ("tracker", "scheduler", "logproxy"),
            specs={
                "scheduler": partial(scheduler_app.build_spec, launcher=make_launcher(cluster)),
                "logproxy": partial(logproxy_app.build_spec, kubernetes_api=api_client(cluster)),
            },
        ).start()
        self.channels = [
            grpc.insecure_channel(self.server.address("scheduler")),
            grpc.insecure_channel(self.server.address("logproxy")),
        ]
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(self.channels[0])
        self.logs = logproxy_service_pb2_grpc.LogProxyServiceStub(self.channels[1])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop()

    def wait(self, job: job_pb2.Job, done: Any, timeout: float = 30) -> job_pb2.Job:
        deadline = time.monotonic() + timeout
        while True:
            current = self.scheduler.GetJob(scheduler_service_pb2.GetJobRequest(name=job.name))
            if done(current):
                return current
            assert time.monotonic() < deadline, current
            time.sleep(0.05)

    def running_job(self, sample_csv: Path) -> job_pb2.Job:
        configs = make_configs(self.scheduler, sample_csv)
        job = self.scheduler.CreateJob(
            scheduler_service_pb2.CreateJobRequest(
                job=job_pb2.Job(
                    feature_config=configs["features"],
                    model_config=configs["model"],
                    training=job_pb2.TrainingParameters(sample_percent=10, epochs=2),
                )
            )
        )
        return self.wait(job, lambda j: j.state == job_pb2.JOB_STATE_RUNNING)

    def list(self, job: job_pb2.Job, **options: Any) -> pb.ListJobLogsResponse:
        return self.logs.ListJobLogs(pb.ListJobLogsRequest(job=job.name, **options))


@pytest.fixture
def cluster() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes().start()
    yield fake
    fake.stop()


@pytest.fixture
def stack(settings: Settings, cluster: FakeKubernetes) -> Iterator[Stack]:
    running = Stack(settings, cluster)
    yield running
    running.close()


def _start_pod(stack: Stack, job: job_pb2.Job) -> str:
    """The Job's pod waits for its image (no logs yet, and no error), then runs and logs."""
    name = job_name(job.job_id)
    pod = stack.cluster.run_job(name, NAMESPACE, pending=True)
    waiting = stack.list(job)
    assert list(waiting.entries) == [] and not waiting.next_page_token
    with stack.cluster.changed:
        stack.cluster.objects[("pods", NAMESPACE, pod)]["status"]["phase"] = "Running"
    for index, line in enumerate(LINES):
        stack.cluster.add_log(pod, line, namespace=NAMESPACE, at=T0 + timedelta(seconds=index))
    return pod


def test_pod_logs_newest_first_with_components_severities_pages_and_filters(
    stack: Stack, sample_csv: Path
) -> None:
    job = stack.running_job(sample_csv)
    assert job.log_source.kind == "kubernetes"
    assert job.log_source.attributes["namespace"] == NAMESPACE
    # The Job has no pod yet: no entries, not an error.
    empty = stack.list(job)
    assert list(empty.entries) == [] and not empty.next_page_token
    pod = _start_pod(stack, job)

    listed = stack.list(job, page_size=100)
    entries = list(listed.entries)
    assert not listed.next_page_token
    assert [(e.component, e.severity, e.message) for e in entries] == [
        (
            "Trainer",
            SEVERITY.SEVERITY_ERROR,
            "cairn_trainer.cli: loss became NaN\nTraceback (most recent call last):\n"
            "ValueError: boom",
        ),
        (
            "Trainer",
            SEVERITY.SEVERITY_INFO,
            "cairn_trainer.progress: progress: Trainer 40.0% training",
        ),
        (
            "Transform",
            SEVERITY.SEVERITY_WARNING,
            "absl: a warning from Transform\n  with a second line",
        ),
        (
            "Transform",
            SEVERITY.SEVERITY_INFO,
            "cairn_trainer.progress: progress: Transform 25.0% started",
        ),
        (
            "ExampleGen",
            SEVERITY.SEVERITY_INFO,
            "cairn_trainer.progress: progress: ExampleGen 0.0% preparing",
        ),
    ]
    assert {e.source for e in entries} == {f"pod/{pod}/trainer"}
    # Each entry's time is the one Kubernetes stamped its first line with.
    assert [e.time.ToDatetime(tzinfo=UTC) for e in entries] == [
        T0 + timedelta(seconds=s) for s in (5, 4, 2, 1, 0)
    ]

    # Pages of two, while the pod keeps writing: the pages stay where they were.
    pages: list[str] = []
    token = ""
    while True:
        page = stack.list(job, page_size=2, page_token=token)
        pages += [e.message for e in page.entries]
        token = page.next_page_token
        if not pages[2:]:
            stack.cluster.add_log(
                pod, "2026-12-04 18:00:09,000 INFO late: a new line", namespace=NAMESPACE
            )
        if not token:
            break
    assert pages == [e.message for e in entries]
    assert stack.list(job, page_size=1).entries[0].message == "late: a new line"

    warnings = stack.list(job, min_severity=SEVERITY.SEVERITY_WARNING)
    assert [(e.severity, e.component) for e in warnings.entries] == [
        (SEVERITY.SEVERITY_ERROR, "Trainer"),
        (SEVERITY.SEVERITY_WARNING, "Transform"),
    ]
    transform = stack.list(job, component="Transform")
    assert [e.component for e in transform.entries] == ["Transform", "Transform"]


def test_tail_and_follow_until_the_job_succeeds(stack: Stack, sample_csv: Path) -> None:
    job = stack.running_job(sample_csv)
    pod = _start_pod(stack, job)
    stream = stack.logs.TailJobLogs(pb.TailJobLogsRequest(job=job.name, limit=2, follow=True))
    seen: list[log_entry_pb2.LogEntry] = []
    changed = threading.Condition()

    def read() -> None:
        for entry in stream:
            with changed:
                seen.append(entry)
                changed.notify_all()

    def wait_for(count: int) -> None:
        with changed:
            assert changed.wait_for(lambda: len(seen) >= count, timeout=20), seen

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(2)
    assert [e.message.splitlines()[0] for e in seen] == [
        "cairn_trainer.progress: progress: Trainer 40.0% training",
        "cairn_trainer.cli: loss became NaN",
    ]
    later = T0 + timedelta(minutes=1)
    stack.cluster.add_log(
        pod,
        "2026-12-04 18:01:00,000 INFO cairn_trainer.progress: progress: Evaluation 95.0% eval",
        "2026-12-04 18:01:01,000 WARNING absl: a late warning",
        "  continued",
        namespace=NAMESPACE,
        at=later,
    )
    wait_for(3)  # the second completes when nothing more was written for a moment
    stack.cluster.add_log(
        pod, "2026-12-04 18:01:02,000 INFO cairn_trainer.cli: exported", namespace=NAMESPACE
    )
    wait_for(5)

    # A follower that goes away stops streaming the pod's log (the log proxy runs here).
    def streams() -> int:
        return sum(1 for t in threading.enumerate() if t.name == f"pod-log-{pod}")

    def eventually(predicate: Any) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    eventually(lambda: streams() == 1)
    other = stack.logs.TailJobLogs(pb.TailJobLogsRequest(job=job.name, limit=1, follow=True))
    assert next(other).message == "cairn_trainer.cli: exported"
    eventually(lambda: streams() == 2)
    other.cancel()
    eventually(lambda: streams() == 1)

    stack.cluster.succeed_job(job_name(job.job_id), NAMESPACE)
    stack.wait(job, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)
    # The stream ends by itself once the job has ended and the pod's log was read.
    reader.join(30)
    assert not reader.is_alive()
    assert [(e.component, e.severity, e.message) for e in seen[2:]] == [
        (
            "Evaluation",
            SEVERITY.SEVERITY_INFO,
            "cairn_trainer.progress: progress: Evaluation 95.0% eval",
        ),
        ("Evaluation", SEVERITY.SEVERITY_WARNING, "absl: a late warning\n  continued"),
        ("Evaluation", SEVERITY.SEVERITY_INFO, "cairn_trainer.cli: exported"),
    ]
    assert seen[2].time.ToDatetime(tzinfo=UTC) == later
    assert {e.source for e in seen} == {f"pod/{pod}/trainer"}

    # Following an ended job sends the tail and ends.
    tail = list(
        stack.logs.TailJobLogs(
            pb.TailJobLogsRequest(
                job=job.name, limit=10, follow=True, min_severity=SEVERITY.SEVERITY_WARNING
            )
        )
    )
    assert [e.message.splitlines()[0] for e in tail] == [
        "absl: a warning from Transform",
        "cairn_trainer.cli: loss became NaN",
        "absl: a late warning",
    ]
