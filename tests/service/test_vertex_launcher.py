"""The Vertex AI launcher through the official google-cloud-aiplatform PipelineServiceClient,
over an insecure channel to a local server speaking the real
google.cloud.aiplatform.v1.PipelineService (tests/vertex_api.py), with its results on a local
GCS emulator: the PipelineJob it creates (pipeline spec, Trainer resources per tier, labels,
service account, output directory), idempotent launch, state and per-task stage mapping,
cancel, adoption by resource name after a restart, results downloaded; and the real
scheduler running jobs through it. The pipeline compile step is the trainer runtime's (see
tests/e2e/test_vertex_pipeline.py); here a compiler returns a PipelineJob document of the
same shape, so these tests stay fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as google_errors
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.services.pipeline_service.transports import (
    PipelineServiceGrpcTransport,
)
from test_scheduler_jobs import get_run, history, in_state, submit
from vertex_api import FakeVertex, State, TaskState

from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2
from cairn.tracker.v1 import run_pb2, tracker_service_pb2
from services.common.clients import RETRYABLE_CODES, BackendError
from services.common.gcs import storage_client
from services.common.settings import Settings
from services.scheduler import reconciler
from services.scheduler.launchers import MACHINE_TYPES, LaunchSpec, LogLocation
from services.scheduler.launchers.vertex import VertexLauncher, VertexLaunchError, pipeline_job_id

from artifact_emulators import Emulator
from cairn_testing import make_configs, scheduler_with_launcher, wait_job

PROJECT = "cairn-test"
LOCATION = "europe-west4"
IMAGE = "europe-docker.pkg.dev/cairn-test/cairn/trainer:1.2.3"
SERVICE_ACCOUNT = "trainer@cairn-test.iam.gserviceaccount.com"
TASKS = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer")


def pipeline_document(job_id: str) -> dict[str, Any]:
    """A PipelineJob document of the shape KubeflowV2DagRunner writes (five tasks, each with
    its component and executor)."""
    tasks = {
        name: {"componentRef": {"name": f"{name}"}, "taskInfo": {"name": name}} for name in TASKS
    }
    return {
        "displayName": f"cairn-{job_id}",
        "labels": {"tfx_version": "1-16-0", "tfx_runner": "kubeflow_v2"},
        "pipelineSpec": {
            "pipelineInfo": {"name": f"cairn-{job_id}"},
            "schemaVersion": "2.0.0",
            "sdkVersion": "tfx-1.16.0",
            "root": {"dag": {"tasks": tasks}},
            "components": {name: {"executorLabel": f"{name}_executor"} for name in TASKS},
            "deploymentSpec": {
                "executors": {
                    f"{name}_executor": {"container": {"image": IMAGE, "command": ["python"]}}
                    for name in TASKS
                }
            },
        },
        "runtimeConfig": {},
    }


class Compiles:
    """Records what the launcher asks to compile."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, spec: LaunchSpec, root: str) -> dict[str, Any]:
        self.calls.append((spec.job_id, root))
        return pipeline_document(spec.job_id)


def pipeline_client(vertex: FakeVertex) -> aiplatform_v1.PipelineServiceClient:
    return aiplatform_v1.PipelineServiceClient(
        transport=PipelineServiceGrpcTransport(channel=vertex.channel())
    )


def make_launcher(
    vertex: FakeVertex, bucket: str = "cairn-test-artifacts", **options: Any
) -> VertexLauncher:
    options.setdefault("compiler", Compiles())
    return VertexLauncher(
        project=PROJECT,
        location=LOCATION,
        pipeline_root=f"gs://{bucket}/pipelines",
        image=IMAGE,
        service_account=SERVICE_ACCOUNT,
        pipeline_client=pipeline_client(vertex),
        **options,
    )


def launch_spec(job_id: str, tmp: Path, tier: str = "SMALL") -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        work_dir=tmp / job_id,
        trainer_spec={"job_id": job_id},
        machine=MACHINE_TYPES[tier],
    )


def resource(job_id: str) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/pipelineJobs/{pipeline_job_id(job_id)}"


@pytest.mark.parametrize(("tier", "cpus", "memory"), [("SMALL", 4, 16), ("LARGE", 16, 64)])
def test_launch_creates_the_pipeline_job(
    vertex: FakeVertex, tmp_path: Path, tier: str, cpus: int, memory: int
) -> None:
    compiles = Compiles()
    launcher = make_launcher(vertex, compiler=compiles)
    handle = launcher.launch(launch_spec("Job_42", tmp_path, tier))
    assert pipeline_job_id("Job_42") == "cairn-job-42"
    assert handle["name"] == resource("Job_42")
    assert handle["launcher"] == "vertex" and handle["root"] == (
        "gs://cairn-test-artifacts/pipelines/Job_42"
    )
    assert compiles.calls == [("Job_42", "gs://cairn-test-artifacts/pipelines/Job_42")]
    job = vertex.job(resource("Job_42"))
    assert job.display_name == "cairn Job_42"
    assert job.service_account == SERVICE_ACCOUNT
    assert job.runtime_config.gcs_output_directory == (
        "gs://cairn-test-artifacts/pipelines/Job_42/tfx"
    )
    assert dict(job.labels) == {
        "tfx_version": "1-16-0",
        "tfx_runner": "kubeflow_v2",
        "managed-by": "cairn",
        "cairn-job-id": "job_42",
        "cairn-hardware-tier": tier.lower(),
        "cairn-machine-type": MACHINE_TYPES[tier].machine_type,
    }
    executors = dict(job.pipeline_spec)["deploymentSpec"]["executors"]
    trainer = executors["Trainer_executor"]["container"]
    assert trainer["image"] == IMAGE
    assert trainer["resources"] == {"cpuLimit": cpus, "memoryLimit": memory}
    # Only the Trainer asks for the tier's machine; the rest run on Vertex's default.
    assert "resources" not in executors["Transform_executor"]["container"]
    assert launcher.log_location(handle) == LogLocation(
        "cloud_logging",
        {
            "project": PROJECT,
            "filter": 'resource.type="aiplatform.googleapis.com/PipelineJob" AND '
            'resource.labels.pipeline_job_id="cairn-job-42"',
        },
    )


def test_a_second_launch_adopts_the_existing_pipeline_job(
    vertex: FakeVertex, tmp_path: Path
) -> None:
    compiles = Compiles()
    launcher = make_launcher(vertex, compiler=compiles)
    first = launcher.launch(launch_spec("abc", tmp_path))
    second = launcher.launch(launch_spec("abc", tmp_path))
    assert first == second
    assert len(vertex.jobs) == 1
    assert len(compiles.calls) == 1, "an existing PipelineJob is adopted without compiling"


def test_a_create_that_lost_the_race_adopts_the_winner(vertex: FakeVertex, tmp_path: Path) -> None:
    """Another scheduler created the job between our lookup and our create: ALREADY_EXISTS
    means adopt, never a second job or a failed launch."""
    launcher = make_launcher(vertex)

    def racing_compile(spec: LaunchSpec, root: str) -> dict[str, Any]:
        make_launcher(vertex).launch(spec)  # the other scheduler wins meanwhile
        return pipeline_document(spec.job_id)

    launcher._compile = racing_compile
    handle = launcher.launch(launch_spec("raced", tmp_path))
    assert handle["name"] == resource("raced") and len(vertex.jobs) == 1
    assert (
        vertex.calls.count(("CreatePipelineJob", f"projects/{PROJECT}/locations/{LOCATION}")) == 2
    )


def test_status_maps_states_and_task_stages(vertex: FakeVertex, tmp_path: Path) -> None:
    launcher = make_launcher(vertex)
    handle = launcher.launch(launch_spec("s1", tmp_path))
    name = handle["name"]
    assert launcher.status(handle).phase == "pending"
    vertex.run(name)
    status = launcher.status(handle)
    assert (status.phase, status.stage, status.progress_percent) == ("running", "", 0.0)
    vertex.task(name, "CsvExampleGen", TaskState.SUCCEEDED)
    vertex.task(name, "StatisticsGen", TaskState.SUCCEEDED)
    vertex.task(name, "SchemaGen", TaskState.SUCCEEDED)
    vertex.task(name, "Transform", TaskState.RUNNING)
    status = launcher.status(handle)
    assert (status.phase, status.stage, status.progress_percent) == ("running", "TRANSFORM", 60.0)
    assert status.message == "Transform running"
    vertex.task(name, "Transform", TaskState.SUCCEEDED)
    vertex.task(name, "Trainer", TaskState.RUNNING)
    assert launcher.status(handle).stage == "TRAINER"
    vertex.task(name, "Trainer", TaskState.SUCCEEDED)
    vertex.succeed(name)
    status = launcher.status(handle)
    assert (status.phase, status.stage, status.progress_percent) == (
        "succeeded",
        "TRAINER",
        100.0,
    )


def test_a_failed_pipeline_reports_the_failed_task(vertex: FakeVertex, tmp_path: Path) -> None:
    launcher = make_launcher(vertex)
    handle = launcher.launch(launch_spec("f1", tmp_path))
    name = handle["name"]
    vertex.run(name)
    # Vertex lists the root DAG as a task too, failed with the pipeline.
    vertex.task(name, "cairn-f1", TaskState.FAILED, error="some tasks failed")
    vertex.task(name, "CsvExampleGen", TaskState.SUCCEEDED)
    vertex.task(name, "StatisticsGen", TaskState.FAILED, error="out of memory")
    vertex.fail(name, "The DAG failed because some tasks failed.")
    status = launcher.status(handle)
    assert status.phase == "failed"
    assert status.message == (
        "the Vertex AI PipelineJob failed: The DAG failed because some tasks failed."
    )
    assert status.error_stage == "STATISTICS_GEN"
    assert status.details == "StatisticsGen: out of memory"


def test_cancel_asks_vertex_and_is_idempotent(vertex: FakeVertex, tmp_path: Path) -> None:
    launcher = make_launcher(vertex)
    handle = launcher.launch(launch_spec("c1", tmp_path))
    vertex.run(handle["name"])
    launcher.cancel(handle)
    assert vertex.job(handle["name"]).state == State.PIPELINE_STATE_CANCELLING
    assert launcher.status(handle).phase == "running"  # still stopping
    vertex.finish_cancel(handle["name"])
    launcher.cancel(handle)  # FAILED_PRECONDITION (it has ended): nothing to do
    status = launcher.status(handle)
    assert (status.phase, status.message) == ("failed", "the Vertex AI PipelineJob was cancelled")
    assert vertex.cancels == [handle["name"]]


def test_adopt_finds_the_job_by_resource_name(vertex: FakeVertex, tmp_path: Path) -> None:
    handle = make_launcher(vertex).launch(launch_spec("a1", tmp_path, "MEDIUM"))
    restarted = make_launcher(vertex)
    assert restarted.adopt("a1", tmp_path / "a1") == handle
    assert restarted.adopt("never-launched", tmp_path / "x") is None


def test_a_job_deleted_in_vertex_is_lost(vertex: FakeVertex, tmp_path: Path) -> None:
    launcher = make_launcher(vertex)
    handle = launcher.launch(launch_spec("gone", tmp_path))
    del vertex.jobs[handle["name"]]
    status = launcher.status(handle)
    assert status.phase == "lost" and "is gone" in status.message


def test_api_errors_reach_the_caller(vertex: FakeVertex, tmp_path: Path) -> None:
    launcher = make_launcher(vertex)
    vertex.fail_next["GetPipelineJob"] = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(google_errors.PermissionDenied):
        launcher.launch(launch_spec("denied", tmp_path))
    assert not vertex.jobs


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_a_create_whose_answer_was_lost_is_retried_without_a_second_job(
    vertex: FakeVertex, tmp_path: Path, code: grpc.StatusCode
) -> None:
    """Vertex created the job but the answer never came: the launch is postponed (a
    retryable error), and the next one adopts that job instead of creating another."""
    compiles = Compiles()
    launcher = make_launcher(vertex, compiler=compiles)
    vertex.fail_after_create = code
    with pytest.raises(BackendError) as raised:
        launcher.launch(launch_spec("lost", tmp_path))
    assert raised.value.code in RETRYABLE_CODES
    handle = launcher.launch(launch_spec("lost", tmp_path))
    assert handle["name"] == resource("lost") and len(vertex.jobs) == 1
    assert len(compiles.calls) == 1


def test_a_create_refused_for_good_fails_the_launch(vertex: FakeVertex, tmp_path: Path) -> None:
    vertex.fail_next["CreatePipelineJob"] = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(google_errors.InvalidArgument):
        make_launcher(vertex).launch(launch_spec("bad", tmp_path))
    assert not vertex.jobs


def test_a_pipeline_without_a_trainer_is_refused(vertex: FakeVertex, tmp_path: Path) -> None:
    def broken(spec: LaunchSpec, root: str) -> dict[str, Any]:
        document = pipeline_document(spec.job_id)
        del document["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]
        return document

    with pytest.raises(VertexLaunchError, match="no Trainer task"):
        make_launcher(vertex, compiler=broken).launch(launch_spec("b", tmp_path))
    assert not vertex.jobs


def test_the_launcher_needs_a_gcs_pipeline_root(vertex: FakeVertex) -> None:
    with pytest.raises(ValueError, match="gs:// URI"):
        VertexLauncher(
            project=PROJECT,
            location=LOCATION,
            pipeline_root="/local/dir",
            pipeline_client=pipeline_client(vertex),
        )


def upload_results(emulator: Emulator, job_id: str, files: dict[str, bytes]) -> None:
    """What the trainer's run_fn uploads at its end (cairn_trainer.remote.finish_remote)."""
    bucket = storage_client("test").bucket(emulator.bucket)
    for relative, content in files.items():
        bucket.blob(f"pipelines/{job_id}/results/{relative}").upload_from_string(content)


def test_results_are_downloaded_from_the_job_root(
    vertex: FakeVertex, tmp_path: Path, gcs_emulator: Emulator
) -> None:
    launcher = make_launcher(vertex, gcs_emulator.bucket)
    handle = launcher.launch(launch_spec("r1", tmp_path))
    upload_results(
        gcs_emulator,
        "r1",
        {
            "training_metrics.json": b'{"final_metrics": {"test/loss": 1.5}}',
            "outputs/manifest.json": b"[]",
            "outputs/serving_model/saved_model.pb": b"model bytes",
        },
    )
    # Names that would land outside the results directory are skipped (this emulator
    # refuses ".." segments itself; Cloud Storage allows them, and they are skipped too).
    upload_results(gcs_emulator, "r1", {"/escaped.txt": b"no", "a//b.txt": b"no"})
    # Another job's results under a similar prefix are not this job's.
    upload_results(gcs_emulator, "r10", {"training_metrics.json": b"{}"})
    results = launcher.results_dir(handle)
    assert results == tmp_path / "r1" / "results"
    found = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert found == [
        "outputs/manifest.json",
        "outputs/serving_model/saved_model.pb",
        "training_metrics.json",
    ]
    assert (results / "outputs/serving_model/saved_model.pb").read_bytes() == b"model bytes"
    assert not (tmp_path / "escaped.txt").exists() and not Path("/escaped.txt").exists()


def test_the_scheduler_runs_jobs_as_vertex_pipeline_jobs(
    vertex: FakeVertex, settings: Settings, sample_csv: Path, gcs_emulator: Emulator
) -> None:
    launcher = make_launcher(vertex, gcs_emulator.bucket)
    with scheduler_with_launcher(
        settings, launcher, scheduler_poll_seconds=0.1, scheduler_max_running_jobs=2
    ) as stack:
        configs = make_configs(stack.scheduler, sample_csv)
        job = submit(stack, configs, 10, hardware_tier=job_pb2.HARDWARE_TIER_MEDIUM)
        running = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_RUNNING))
        name = resource(running.job_id)
        assert running.log_source.kind == "cloud_logging"
        assert running.log_source.attributes["project"] == PROJECT
        created = vertex.job(name)
        trainer = dict(created.pipeline_spec)["deploymentSpec"]["executors"]["Trainer_executor"]
        assert trainer["container"]["resources"] == {"cpuLimit": 8, "memoryLimit": 32}
        vertex.run(name)
        vertex.task(name, "CsvExampleGen", TaskState.SUCCEEDED)
        vertex.task(name, "StatisticsGen", TaskState.SUCCEEDED)
        vertex.task(name, "SchemaGen", TaskState.RUNNING)
        at_schema = wait_job(stack.scheduler, job, lambda j: j.progress_percent >= 40.0)
        assert at_schema.stage == job_pb2.PIPELINE_STAGE_SCHEMA_GEN
        history_document = {
            "job_id": running.job_id,
            "history": [{"key": "train/loss", "epoch": 1, "value": 2.5}],
            "final_metrics": {"test/recall_at_10": 0.25},
        }
        upload_results(
            gcs_emulator,
            running.job_id,
            {
                "training_metrics.json": json.dumps(history_document).encode(),
                "outputs/manifest.json": json.dumps(
                    [{"path": "vocabulary_sizes.json", "type": "report"}]
                ).encode(),
                "outputs/vocabulary_sizes.json": b'{"user_id": 100}',
            },
        )
        for task in ("SchemaGen", "Transform", "Trainer"):
            vertex.task(name, task, TaskState.SUCCEEDED)
        vertex.succeed(name)
        done = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_SUCCEEDED))
        assert history(done) == ["QUEUED", "SUBMITTING", "RUNNING", "SUCCEEDED"]
        assert dict(done.final_metrics) == {"test/recall_at_10": 0.25}
        run = get_run(stack, done)
        assert run.status == run_pb2.RUN_STATUS_FINISHED
        points = stack.tracker.ListMetricHistory(
            tracker_service_pb2.ListMetricHistoryRequest(run=done.run, metric_key="train/loss")
        ).points
        assert [(p.step, p.value) for p in points] == [(1, 2.5)]
        artifacts = stack.tracker.ListArtifacts(
            tracker_service_pb2.ListArtifactsRequest(parent=done.run)
        )
        assert "vocabulary_sizes.json" in {a.path for a in artifacts.artifacts}

        # Cancel: Vertex is asked to cancel; the job ends CANCELLED once Vertex has.
        other = submit(stack, configs, 10)
        other_running = wait_job(stack.scheduler, other, in_state(job_pb2.JOB_STATE_RUNNING))
        other_name = resource(other_running.job_id)
        vertex.run(other_name)
        stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=other.name))
        wait_job(stack.scheduler, other, lambda j: other_name in vertex.cancels)
        vertex.finish_cancel(other_name)
        cancelled = wait_job(stack.scheduler, other, in_state(job_pb2.JOB_STATE_CANCELLED))
        assert history(cancelled)[-2:] == ["CANCELLING", "CANCELLED"]
        assert get_run(stack, cancelled).status == run_pb2.RUN_STATUS_KILLED


def test_results_that_cannot_be_collected_end_the_job_with_a_note(
    vertex: FakeVertex,
    settings: Settings,
    sample_csv: Path,
    gcs_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A results bucket the scheduler cannot read (gone, or no access): a few attempts,
    then the job ends and says why, instead of finalizing again and again."""
    monkeypatch.setattr(reconciler, "RESULTS_RETRY_SECONDS", (0.1, 0.1))
    launcher = make_launcher(vertex, "no-such-bucket")
    with scheduler_with_launcher(settings, launcher, scheduler_poll_seconds=0.1) as stack:
        configs = make_configs(stack.scheduler, sample_csv)
        job = submit(stack, configs, 10)
        running = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_RUNNING))
        vertex.succeed(resource(running.job_id))
        done = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_SUCCEEDED))
        assert "could not collect the results" in done.state_history[-1].message
        assert get_run(stack, done).status == run_pb2.RUN_STATUS_FINISHED
