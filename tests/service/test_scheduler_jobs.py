"""The scheduler end to end over gRPC with its reconcile loop and the real local launcher,
which runs tests/fake_trainer.py (the trainer's file contract without TensorFlow) instead of
the TFX trainer: job lifecycle, tracker runs, ingestion, cancel in each state, restart
adoption, lost workloads, the hardware tier reaching the workload, rerun and delete.
The real trainer runs in tests/e2e/test_training_jobs.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from cairn.scheduler.v1 import (
    job_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)
from cairn.tracker.v1 import metric_pb2, run_pb2, tracker_service_pb2, tracker_service_pb2_grpc
from services.common.settings import Settings
from services.scheduler import app as scheduler_app
from services.scheduler.launchers.local import LocalLauncher

from cairn_testing import ServerThread, expect_error, make_configs

FAKE_TRAINER = Path(__file__).resolve().parent.parent / "fake_trainer.py"
SUCCEED, FAIL, HANG, CRASH, STUBBORN = 10, 5, 25, 50, 100
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


def fake_launcher(gate: threading.Event | None = None) -> LocalLauncher:
    """The real local launcher running the fake trainer. With a `gate`, launching waits for
    it (as a first launch waits for the trainer runtime to build): the job stays
    SUBMITTING until the test opens it."""

    def runtime() -> tuple[str, dict[str, str]]:
        if gate is not None:
            assert gate.wait(30), "the test never opened the gate"
        return sys.executable, dict(os.environ)

    return LocalLauncher(runtime, cancel_grace_seconds=1.0, command=[str(FAKE_TRAINER)])


class Stack:
    """A tracker + a scheduler with its reconcile loop, restartable on the same database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(
            update={"scheduler_poll_seconds": 0.1, "scheduler_max_running_jobs": 2}
        )
        self.server: ServerThread | None = None
        self.channels: list[grpc.Channel] = []

    def start(self, gate: threading.Event | None = None, **overrides: Any) -> Stack:
        settings = self.settings.model_copy(update=overrides)
        launcher = fake_launcher(gate)
        self.server = ServerThread(
            settings,
            ("tracker", "scheduler"),
            specs={"scheduler": partial(scheduler_app.build_spec, launcher=launcher)},
        ).start()
        scheduler_channel = grpc.insecure_channel(self.server.address("scheduler"))
        tracker_channel = grpc.insecure_channel(self.server.address("tracker"))
        self.channels = [scheduler_channel, tracker_channel]
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(scheduler_channel)
        self.tracker = tracker_service_pb2_grpc.TrackerServiceStub(tracker_channel)
        return self

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def work_dir(self, job: job_pb2.Job) -> Path:
        return self.settings.resolved_scheduler_work_dir() / job.job_id

    def pid(self, job: job_pb2.Job) -> int:
        return int(json.loads((self.work_dir(job) / "workload.json").read_text())["pid"])

    def kill_leftovers(self) -> None:
        root = self.settings.resolved_scheduler_work_dir()
        for workload in root.glob("*/workload.json"):
            with contextlib.suppress(ProcessLookupError, ValueError, OSError):
                os.killpg(int(json.loads(workload.read_text())["pid"]), signal.SIGKILL)


@pytest.fixture
def stack(settings: Settings) -> Iterator[Stack]:
    running = Stack(settings).start()
    yield running
    running.stop()
    running.kill_leftovers()


@pytest.fixture
def configs(stack: Stack, sample_csv: Path) -> dict[str, str]:
    return make_configs(stack.scheduler, sample_csv)


def submit(stack: Stack, configs: dict[str, str], sample: int, **training: Any) -> job_pb2.Job:
    return stack.scheduler.CreateJob(
        scheduler_service_pb2.CreateJobRequest(
            job=job_pb2.Job(
                feature_config=configs["features"],
                model_config=configs["model"],
                training=job_pb2.TrainingParameters(sample_percent=sample, epochs=3, **training),
            )
        )
    )


def wait_for(
    stack: Stack, job: job_pb2.Job, done: Callable[[job_pb2.Job], bool], timeout: float = 30
) -> job_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        current = stack.scheduler.GetJob(scheduler_service_pb2.GetJobRequest(name=job.name))
        if done(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"job never reached the expected state: {current}")
        time.sleep(0.05)


def in_state(*states: int) -> Callable[[job_pb2.Job], bool]:
    return lambda job: job.state in states


def history(job: job_pb2.Job) -> list[str]:
    return [job_pb2.JobState.Name(t.state).removeprefix("JOB_STATE_") for t in job.state_history]


def get_run(stack: Stack, job: job_pb2.Job) -> run_pb2.Run:
    return stack.tracker.GetRun(
        tracker_service_pb2.GetRunRequest(name=job.run, view=run_pb2.RUN_VIEW_FULL)
    )


def metric_points(stack: Stack, run: str, key: str) -> list[tuple[int, float]]:
    response = stack.tracker.ListMetricHistory(
        tracker_service_pb2.ListMetricHistoryRequest(run=run, metric_key=key)
    )
    return [(p.step, p.value) for p in response.points]


# ------------------------------------------------------------------------------ tests


def test_a_quick_test_runs_to_success_and_fills_its_tracker_run(
    stack: Stack, configs: dict[str, str]
) -> None:
    job = submit(stack, configs, SUCCEED)
    assert job.run.startswith("experiments/")
    assert job.training.batch_size == 4096 and job.training.learning_rate == 0.05
    assert job.training.hardware_tier == job_pb2.HARDWARE_TIER_SMALL
    updates = list(
        stack.scheduler.WatchJob(scheduler_service_pb2.WatchJobRequest(name=job.name), timeout=60)
    )
    final = updates[-1]
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED, final
    assert history(final) == ["QUEUED", "SUBMITTING", "RUNNING", "SUCCEEDED"]
    assert final.progress_percent == 100.0 and final.current_epoch == 3
    assert dict(final.final_metrics) == {"test/recall_at_10": 0.25, "test/loss": 0.5}
    assert final.workload.startswith("pid ")

    run = get_run(stack, final)
    assert run.status == run_pb2.RUN_STATUS_FINISHED
    assert run.lineage.job_id == final.job_id and run.lineage.model_type == "retrieval"
    assert run.params["epochs"] == "3" and run.params["sample_percent"] == str(SUCCEED)
    assert run.params["learning_rate"] == "0.05" and run.params["machine_type"] == "e2-standard-4"
    assert metric_points(stack, final.run, "train/loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    # Nothing was reported live (the fake trainer does not report): all came from the file.
    assert run.tags["cairn.metrics_reported_live"] == "0"
    assert run.tags["cairn.metrics_from_file"] == "8"
    paths = {a.path: a.artifact_type for a in run.artifacts}
    assert paths["serving_model/saved_model.pb"] == 1  # ARTIFACT_TYPE_MODEL
    assert "serving_model/variables/variables.index" in paths
    assert "schema.pbtxt" in paths and "training_metrics.json" in paths
    assert not any("escape" in p for p in paths), "a manifest cannot reach outside outputs/"

    # The ingest used the trainer's batch ids (job/key/epoch): a live report of the same
    # point, arriving late, is recognised and stored once.
    late = stack.tracker.LogMetrics(
        tracker_service_pb2.LogMetricsRequest(
            run=final.run,
            batch_id=f"{final.job_id}/train/loss/2",
            metrics=[metric_pb2.Metric(key="train/loss", value=0.5, step=2)],
        )
    )
    assert late.duplicate
    assert len(metric_points(stack, final.run, "train/loss")) == 3


def test_the_chosen_hardware_tier_reaches_the_workload(
    stack: Stack, configs: dict[str, str]
) -> None:
    job = submit(stack, configs, SUCCEED, hardware_tier=job_pb2.HARDWARE_TIER_LARGE)
    wait_for(stack, job, in_state(*TERMINAL))
    spec = json.loads((stack.work_dir(job) / "spec.json").read_text())
    environment = json.loads((stack.work_dir(job) / "env.json").read_text())
    assert spec["hardware_tier"] == "large" and spec["machine_type"] == "e2-standard-16"
    assert environment["CAIRN_HARDWARE_TIER"] == "LARGE"
    assert environment["CAIRN_MACHINE_TYPE"] == "e2-standard-16"
    run = get_run(stack, job)
    assert run.params["hardware_tier"] == "large"


def test_a_failing_trainer_fails_the_job_with_its_reason(
    stack: Stack, configs: dict[str, str]
) -> None:
    job = wait_for(stack, submit(stack, configs, FAIL), in_state(*TERMINAL))
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.message == "loss became NaN"
    assert job.error.stage == job_pb2.PIPELINE_STAGE_TRAINER
    assert "Traceback" in job.error.details
    assert get_run(stack, job).status == run_pb2.RUN_STATUS_FAILED


def test_a_crashed_trainer_fails_the_job(stack: Stack, configs: dict[str, str]) -> None:
    job = wait_for(stack, submit(stack, configs, CRASH), in_state(*TERMINAL))
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert "exited with code 3" in job.error.message


def test_cancel_a_running_job_stops_its_process(stack: Stack, configs: dict[str, str]) -> None:
    job = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_RUNNING))
    pid = stack.pid(job)
    cancelled = stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=job.name))
    assert cancelled.state in (job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED)
    # Cancelling again while it is being cancelled is a no-op.
    stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=job.name))
    final = wait_for(stack, job, in_state(*TERMINAL))
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert history(final)[-2:] == ["CANCELLING", "CANCELLED"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert get_run(stack, final).status == run_pb2.RUN_STATUS_KILLED
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stack.scheduler.CancelJob,
        scheduler_service_pb2.CancelJobRequest(name=job.name),
    )


def test_a_trainer_ignoring_sigterm_is_killed(stack: Stack, configs: dict[str, str]) -> None:
    job = wait_for(stack, submit(stack, configs, STUBBORN), in_state(job_pb2.JOB_STATE_RUNNING))
    stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=job.name))
    final = wait_for(stack, job, in_state(*TERMINAL))
    assert final.state == job_pb2.JOB_STATE_CANCELLED


def test_the_concurrency_limit_holds_and_queued_jobs_cancel_at_once(
    settings: Settings, sample_csv: Path
) -> None:
    stack = Stack(settings).start(scheduler_max_running_jobs=1)
    try:
        configs = make_configs(stack.scheduler, sample_csv)
        first = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_RUNNING))
        second = submit(stack, configs, SUCCEED)
        time.sleep(0.5)  # several reconcile passes
        second = wait_for(stack, second, lambda j: True)
        assert second.state == job_pb2.JOB_STATE_QUEUED
        cancelled = stack.scheduler.CancelJob(
            scheduler_service_pb2.CancelJobRequest(name=second.name)
        )
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
        assert history(cancelled) == ["QUEUED", "CANCELLED"]
        assert not (stack.work_dir(second) / "workload.json").exists(), "never launched"
        killed = wait_for(
            stack, second, lambda j: get_run(stack, j).status == run_pb2.RUN_STATUS_KILLED
        )
        assert killed.state == job_pb2.JOB_STATE_CANCELLED
        stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=first.name))
        wait_for(stack, first, in_state(*TERMINAL))
    finally:
        stack.stop()
        stack.kill_leftovers()


def test_a_restarted_scheduler_adopts_running_jobs_without_launching_twice(
    settings: Settings, sample_csv: Path
) -> None:
    stack = Stack(settings).start()
    try:
        configs = make_configs(stack.scheduler, sample_csv)
        hanging = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_RUNNING))
        doomed = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_RUNNING))
        pid = stack.pid(hanging)
        stack.stop()  # the scheduler goes away; its workloads keep running
        assert psutil.pid_exists(pid)
        os.killpg(stack.pid(doomed), signal.SIGKILL)  # this one dies while nobody watches
        time.sleep(0.2)

        stack.start()
        adopted = wait_for(stack, hanging, lambda j: True)
        assert adopted.state == job_pb2.JOB_STATE_RUNNING
        assert stack.pid(adopted) == pid, "adopted, not launched again"
        spec = str(stack.work_dir(adopted) / "spec.json")
        trainers = [
            p for p in psutil.process_iter(["cmdline"]) if spec in (p.info["cmdline"] or [])
        ]
        assert len(trainers) == 1

        lost = wait_for(stack, doomed, in_state(*TERMINAL))
        assert lost.state == job_pb2.JOB_STATE_FAILED
        assert "gone and left no result" in lost.error.message

        stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=hanging.name))
        assert wait_for(stack, hanging, in_state(*TERMINAL)).state == job_pb2.JOB_STATE_CANCELLED
    finally:
        stack.stop()
        stack.kill_leftovers()


def test_rerun_and_delete(stack: Stack, configs: dict[str, str]) -> None:
    running = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_RUNNING))
    for call, request in (
        (stack.scheduler.RerunJob, scheduler_service_pb2.RerunJobRequest(name=running.name)),
        (stack.scheduler.DeleteJob, scheduler_service_pb2.DeleteJobRequest(name=running.name)),
    ):
        expect_error(grpc.StatusCode.FAILED_PRECONDITION, call, request)
    stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=running.name))
    wait_for(stack, running, in_state(*TERMINAL))

    done = wait_for(stack, submit(stack, configs, SUCCEED), in_state(*TERMINAL))
    request = scheduler_service_pb2.RerunJobRequest(name=done.name, request_id="rerun-1")
    rerun = stack.scheduler.RerunJob(request)
    assert stack.scheduler.RerunJob(request).name == rerun.name, "a retried rerun is one job"
    assert rerun.rerun_of == done.name and rerun.name != done.name
    assert rerun.training == done.training and rerun.run != done.run
    assert wait_for(stack, rerun, in_state(*TERMINAL)).state == job_pb2.JOB_STATE_SUCCEEDED

    stack.scheduler.DeleteJob(scheduler_service_pb2.DeleteJobRequest(name=done.name))
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stack.scheduler.GetJob,
        scheduler_service_pb2.GetJobRequest(name=done.name),
    )
    assert not stack.work_dir(done).exists()
    run = stack.tracker.GetRun(tracker_service_pb2.GetRunRequest(name=done.run))
    assert run.lifecycle_state == 2  # LIFECYCLE_STATE_DELETED: purge frees its artifacts


def test_cancel_while_submitting_stops_the_workload_it_was_starting(
    settings: Settings, sample_csv: Path
) -> None:
    gate = threading.Event()
    stack = Stack(settings).start(gate=gate)
    try:
        configs = make_configs(stack.scheduler, sample_csv)
        job = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_SUBMITTING))
        cancelling = stack.scheduler.CancelJob(
            scheduler_service_pb2.CancelJobRequest(name=job.name)
        )
        assert cancelling.state == job_pb2.JOB_STATE_CANCELLING
        gate.set()  # the launch completes after the cancel: the loop must stop what started
        final = wait_for(stack, job, in_state(*TERMINAL))
        assert final.state == job_pb2.JOB_STATE_CANCELLED
        assert "RUNNING" not in history(final)
        pid = stack.pid(final)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert get_run(stack, final).status == run_pb2.RUN_STATUS_KILLED
    finally:
        gate.set()
        stack.stop()
        stack.kill_leftovers()


def test_a_job_whose_run_was_deleted_still_ends(stack: Stack, configs: dict[str, str]) -> None:
    """A refusal that retrying cannot cure (the run is gone) must not keep the job active
    forever, holding a slot that no cancel or delete could free."""
    job = wait_for(stack, submit(stack, configs, HANG), in_state(job_pb2.JOB_STATE_RUNNING))
    stack.tracker.DeleteRun(tracker_service_pb2.DeleteRunRequest(name=job.run))
    stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=job.name))
    final = wait_for(stack, job, in_state(*TERMINAL))
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert "could not end the run" in final.state_history[-1].message
    stack.scheduler.DeleteJob(scheduler_service_pb2.DeleteJobRequest(name=job.name))


def test_unknown_enum_values_are_invalid_arguments(stack: Stack, configs: dict[str, str]) -> None:
    for training in (
        job_pb2.TrainingParameters(split_strategy=9),  # type: ignore[arg-type]
        job_pb2.TrainingParameters(hardware_tier=7),  # type: ignore[arg-type]
    ):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stack.scheduler.CreateJob,
            scheduler_service_pb2.CreateJobRequest(
                job=job_pb2.Job(
                    feature_config=configs["features"],
                    model_config=configs["model"],
                    training=training,
                )
            ),
        )
        assert "has no value" in error.details()
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stack.scheduler.GetJob,
        scheduler_service_pb2.GetJobRequest(name="jobs/\x00"),
    )


def _claimed_by(job: job_pb2.Job) -> str:
    (claim,) = [t.message for t in job.state_history if t.state == job_pb2.JOB_STATE_SUBMITTING]
    return claim.removeprefix("claimed by ")


def test_one_scheduler_leads_and_a_standby_takes_over_when_it_dies(
    settings: Settings, sample_csv: Path
) -> None:
    """Two schedulers on one database: both serve the API, only the leader launches; when
    it stops, the standby becomes the leader, adopts the running workload and goes on."""
    base = settings.model_copy(update={"scheduler_poll_seconds": 0.1})
    tracker_server = ServerThread(base, ("tracker",)).start()
    shared = base.model_copy(update={"tracker_address": tracker_server.address("tracker")})

    def scheduler_server() -> tuple[ServerThread, grpc.Channel, Any]:
        server = ServerThread(
            shared,
            ("scheduler",),
            specs={"scheduler": partial(scheduler_app.build_spec, launcher=fake_launcher())},
        ).start()
        channel = grpc.insecure_channel(server.address("scheduler"))
        return server, channel, scheduler_service_pb2_grpc.SchedulerServiceStub(channel)

    first_server, first_channel, _ = scheduler_server()
    time.sleep(0.5)  # the first one takes the lead before the second starts
    second_server, second_channel, second = scheduler_server()
    work_root = shared.resolved_scheduler_work_dir()
    running = [second_server, first_server, tracker_server]

    def submit_to(stub: Any, configs: dict[str, str], sample: int) -> job_pb2.Job:
        return stub.CreateJob(
            scheduler_service_pb2.CreateJobRequest(
                job=job_pb2.Job(
                    feature_config=configs["features"],
                    model_config=configs["model"],
                    training=job_pb2.TrainingParameters(sample_percent=sample, epochs=1),
                )
            )
        )

    def wait(stub: Any, job: job_pb2.Job, states: tuple[int, ...]) -> job_pb2.Job:
        deadline = time.monotonic() + 30
        while True:
            current = stub.GetJob(scheduler_service_pb2.GetJobRequest(name=job.name))
            if current.state in states:
                return current
            assert time.monotonic() < deadline, f"stuck: {current}"
            time.sleep(0.05)

    def pid_of(job: job_pb2.Job) -> int:
        return int(json.loads((work_root / job.job_id / "workload.json").read_text())["pid"])

    try:
        configs = make_configs(second, sample_csv)  # a standby's API works too
        hanging = wait(second, submit_to(second, configs, HANG), (job_pb2.JOB_STATE_RUNNING,))
        quick = wait(second, submit_to(second, configs, SUCCEED), TERMINAL)
        assert quick.state == job_pb2.JOB_STATE_SUCCEEDED
        leaders = {_claimed_by(hanging), _claimed_by(quick)}
        assert len(leaders) == 1, leaders  # one loop claimed both
        pid = pid_of(hanging)

        first_channel.close()
        running.remove(first_server)
        first_server.stop()  # the leader goes away; its trainer keeps running
        assert psutil.pid_exists(pid)
        later = wait(second, submit_to(second, configs, SUCCEED), TERMINAL)
        assert later.state == job_pb2.JOB_STATE_SUCCEEDED
        assert _claimed_by(later) not in leaders, "the standby took over and launched it"
        adopted = wait(second, hanging, (job_pb2.JOB_STATE_RUNNING,))
        assert pid_of(adopted) == pid, "adopted, not launched again"
        second.CancelJob(scheduler_service_pb2.CancelJobRequest(name=hanging.name))
        assert wait(second, hanging, TERMINAL).state == job_pb2.JOB_STATE_CANCELLED
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        for channel in (first_channel, second_channel):
            channel.close()
        for server in running:
            server.stop()
        for workload in work_root.glob("*/workload.json"):
            with contextlib.suppress(ProcessLookupError, ValueError, OSError):
                os.killpg(int(json.loads(workload.read_text())["pid"]), signal.SIGKILL)
