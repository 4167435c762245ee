"""The log proxy over gRPC and REST: a job's log file (written by the fake trainer through
the real local launcher) listed newest first with paging and filters, tailed and followed
until the job ends, and the errors of jobs without logs."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from click.testing import CliRunner

from cairn.cli.main import cli
from cairn.logproxy.v1 import log_entry_pb2, logproxy_service_pb2, logproxy_service_pb2_grpc
from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from services.common.settings import Settings
from services.scheduler import app as scheduler_app
from services.scheduler.launchers.local import LocalLauncher

from cairn_testing import ServerThread, expect_error, make_configs

FAKE_TRAINER = Path(__file__).resolve().parent.parent / "fake_trainer.py"
pb = logproxy_service_pb2


class Stack:
    def __init__(self, settings: Settings) -> None:
        launcher = LocalLauncher(
            lambda: (sys.executable, dict(os.environ)),
            cancel_grace_seconds=1.0,
            command=[str(FAKE_TRAINER)],
        )
        self.server = ServerThread(
            settings.model_copy(update={"scheduler_poll_seconds": 0.1}),
            ("tracker", "scheduler", "logproxy", "gateway"),
            specs={"scheduler": partial(scheduler_app.build_spec, launcher=launcher)},
        ).start()
        self.channels = [
            grpc.insecure_channel(self.server.address("scheduler")),
            grpc.insecure_channel(self.server.address("logproxy")),
        ]
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(self.channels[0])
        self.logs = logproxy_service_pb2_grpc.LogProxyServiceStub(self.channels[1])
        self.gateway = f"http://{self.server.address('gateway')}"

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop()


@pytest.fixture
def stack(settings: Settings) -> Iterator[Stack]:
    running = Stack(settings)
    yield running
    running.close()


def _job(stack: Stack, sample_csv: Path, sample: int) -> job_pb2.Job:
    configs = make_configs(stack.scheduler, sample_csv)
    return stack.scheduler.CreateJob(
        scheduler_service_pb2.CreateJobRequest(
            job=job_pb2.Job(
                feature_config=configs["features"],
                model_config=configs["model"],
                training=job_pb2.TrainingParameters(sample_percent=sample, epochs=2),
            )
        )
    )


def _wait(stack: Stack, job: job_pb2.Job, states: tuple[int, ...]) -> job_pb2.Job:
    deadline = time.monotonic() + 30
    while True:
        current = stack.scheduler.GetJob(scheduler_service_pb2.GetJobRequest(name=job.name))
        if current.state in states:
            return current
        assert time.monotonic() < deadline, current
        time.sleep(0.05)


TERMINAL = (5, 6, 7)


def test_logs_of_a_finished_job_newest_first_with_filters_and_pages(
    stack: Stack, sample_csv: Path
) -> None:
    job = _wait(stack, _job(stack, sample_csv, 10), TERMINAL)
    assert job.log_source.kind == "file"
    assert job.log_source.attributes["path"].endswith("logs/trainer.log")
    everything = stack.logs.ListJobLogs(pb.ListJobLogsRequest(job=job.name, page_size=1000))
    entries = list(everything.entries)
    assert entries and not everything.next_page_token
    assert entries[0].message.endswith("progress: Evaluation 100.0% Evaluation")
    assert [e.component for e in entries][-1] == "ExampleGen"
    assert {e.component for e in entries} >= {"ExampleGen", "Transform", "Trainer", "Evaluation"}

    warnings = stack.logs.ListJobLogs(
        pb.ListJobLogsRequest(job=job.name, min_severity=log_entry_pb2.SEVERITY_WARNING)
    )
    assert [e.message for e in warnings.entries] == [
        "cairn_trainer.fake: a warning from Transform\n  with a second line"
    ]
    assert warnings.entries[0].component == "Transform"
    trainer = stack.logs.ListJobLogs(pb.ListJobLogsRequest(job=job.name, component="Trainer"))
    assert trainer.entries and {e.component for e in trainer.entries} == {"Trainer"}

    pages: list[str] = []
    token = ""
    while True:
        page = stack.logs.ListJobLogs(
            pb.ListJobLogsRequest(job=job.name, page_size=2, page_token=token)
        )
        pages += [e.message for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert pages == [e.message for e in entries]

    # Over REST, and the CLI.
    with httpx.Client(base_url=stack.gateway, timeout=30) as http:
        listed = http.get(f"/v1/{job.name}/logs", params={"minSeverity": "SEVERITY_WARNING"})
        assert listed.status_code == 200
        assert listed.json()["entries"][0]["component"] == "Transform"
        tail = http.get(f"/v1/{job.name}/logs:tail", params={"limit": 3})
        lines = [json.loads(line) for line in tail.text.splitlines()]
        assert [line["message"] for line in lines] == [e.message for e in entries[:3]][::-1]
    result = CliRunner().invoke(
        cli,
        ["jobs", "logs", job.job_id, "--severity", "warning"],
        env={
            "CAIRN_SCHEDULER_URI": stack.server.address("scheduler"),
            "CAIRN_LOGPROXY_URI": stack.server.address("logproxy"),
            "COLUMNS": "200",
        },
    )
    assert result.exit_code == 0, result.output
    assert "WARN [Transform] cairn_trainer.fake: a warning from Transform" in result.output


def test_follow_streams_new_entries_until_the_job_ends(stack: Stack, sample_csv: Path) -> None:
    job = _wait(stack, _job(stack, sample_csv, 25), (3,))  # RUNNING, logging a beat
    stream = stack.logs.TailJobLogs(pb.TailJobLogsRequest(job=job.name, limit=1, follow=True))
    seen: list[Any] = []
    for entry in stream:
        seen.append(entry)
        beats = [e for e in seen if "still training" in e.message]
        if len(beats) == 3:
            stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=job.name))
        if len(seen) > 500:
            break
    # The stream ended by itself once the job was cancelled and its log read to the end.
    assert _wait(stack, job, TERMINAL).state == 7
    numbers = [int(e.message.rsplit("(", 1)[1].rstrip(")")) for e in seen if "(" in e.message]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert len(numbers) >= 3


def test_jobs_without_logs_and_bad_requests(stack: Stack) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stack.logs.ListJobLogs,
        pb.ListJobLogsRequest(job="jobs/0123456789abcdef"),
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stack.logs.ListJobLogs,
        pb.ListJobLogsRequest(job="experiments/x"),
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stack.logs.ListJobLogs,
        pb.ListJobLogsRequest(job="jobs/0123456789abcdef", component="Pusher"),
    )
