"""The Vertex AI launcher with its real compile step, end to end as far as this machine
reaches: the scheduler launches a quick test through the VertexLauncher; the trainer runtime
prepares the data, uploads it to Cloud Storage (a local GCS emulator) and compiles the TFX
pipeline with KubeflowV2DagRunner; the PipelineJob is created through the official client on
a local server speaking google.cloud.aiplatform.v1.PipelineService (tests/vertex_api.py).
Vertex AI's own orchestrator cannot run here, so the test plays it: it runs the Trainer's
code on this machine with the very spec the compiled pipeline gives the Trainer task (its
results_uri on the emulator), marks the tasks done, and the scheduler collects the results
the trainer uploaded: metrics, serving model, schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.services.pipeline_service.transports import (
    PipelineServiceGrpcTransport,
)
from vertex_api import FakeVertex, TaskState

from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2
from cairn.tracker.v1 import run_pb2, tracker_service_pb2
from cairn.trainer_runtime import ensure_trainer_runtime
from services.common.gcs import storage_client
from services.common.settings import Settings
from services.scheduler.launchers.vertex import VertexLauncher, pipeline_job_id

from artifact_emulators import Emulator
from cairn_testing import make_configs, scheduler_with_launcher, wait_job

pytestmark = pytest.mark.slow

PROJECT = "cairn-e2e"
LOCATION = "us-central1"
IMAGE = "us-docker.pkg.dev/cairn-e2e/cairn/trainer:test"
TASKS = ["CsvExampleGen", "SchemaGen", "StatisticsGen", "Trainer", "Transform"]


@pytest.mark.timeout(900)
def test_a_quick_test_compiles_runs_and_reports_through_vertex(
    vertex: FakeVertex,
    settings: Settings,
    sample_csv: Path,
    gcs_emulator: Emulator,
    tmp_path: Path,
) -> None:
    if "postgresql" in settings.database_url:
        pytest.skip("one database is enough for this slow test")
    runtime = ensure_trainer_runtime()
    launcher = VertexLauncher(
        project=PROJECT,
        location=LOCATION,
        pipeline_root=f"gs://{gcs_emulator.bucket}/vertex",
        image=IMAGE,
        pipeline_client=aiplatform_v1.PipelineServiceClient(
            transport=PipelineServiceGrpcTransport(channel=vertex.channel())
        ),
    )
    with scheduler_with_launcher(settings, launcher, scheduler_poll_seconds=0.2) as stack:
        scheduler, tracker = stack.scheduler, stack.tracker
        configs = make_configs(scheduler, sample_csv)
        job = scheduler.CreateJob(
            scheduler_service_pb2.CreateJobRequest(
                job=job_pb2.Job(
                    feature_config=configs["features"],
                    model_config=configs["model"],
                    training=job_pb2.TrainingParameters(
                        sample_percent=5, epochs=1, batch_size=1024
                    ),
                )
            )
        )
        running = wait_job(
            scheduler,
            job,
            lambda j: j.state in (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_FAILED),
            600,
        )
        assert running.state == job_pb2.JOB_STATE_RUNNING, running.error_message
        name = f"projects/{PROJECT}/locations/{LOCATION}/pipelineJobs/"
        name += pipeline_job_id(running.job_id)
        created = vertex.job(name)
        spec = json.loads(aiplatform_v1.PipelineJob.to_json(created))["pipelineSpec"]
        assert sorted(spec["root"]["dag"]["tasks"]) == TASKS
        executors = spec["deploymentSpec"]["executors"]
        assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
        root = f"gs://{gcs_emulator.bucket}/vertex/{running.job_id}"
        assert created.runtime_config.gcs_output_directory == f"{root}/tfx"

        # The data was prepared here and uploaded where CsvExampleGen reads it.
        bucket = storage_client("test").bucket(gcs_emulator.bucket)
        train = bucket.blob(f"vertex/{running.job_id}/data/train/part.csv").download_as_text()
        assert train.splitlines()[0].startswith("user_id,")
        assert len(train.splitlines()) > 1000
        assert json.dumps(f"{root}/data") in json.dumps(spec)

        # The Trainer task's own spec: the container's disk, results to the job root.
        parameters = spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]
        trainer_config = json.loads(
            parameters["custom_config"]["runtimeValue"]["constantValue"]["stringValue"]
        )
        trainer_spec = trainer_config["spec"]
        assert trainer_spec["work_dir"] == "/tmp/cairn-job"
        assert trainer_spec["results_uri"] == f"{root}/results"

        # Vertex runs the tasks; here the trainer runs with that spec on this machine.
        vertex.run(name)
        local_spec = {**trainer_spec, "work_dir": str(tmp_path / "trainer")}
        spec_path = tmp_path / "trainer-spec.json"
        spec_path.write_text(json.dumps(local_spec))
        trained = subprocess.run(
            [str(runtime.python), "-m", "cairn_trainer", "run", "--spec", str(spec_path)],
            env=runtime.env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert trained.returncode == 0, trained.stderr[-4000:]
        uploaded = {b.name for b in bucket.list_blobs(prefix=f"vertex/{running.job_id}/results/")}
        assert f"vertex/{running.job_id}/results/training_metrics.json" in uploaded
        assert f"vertex/{running.job_id}/results/outputs/manifest.json" in uploaded
        for task in TASKS:
            vertex.task(name, task, TaskState.SUCCEEDED)
        vertex.succeed(name)

        done = wait_job(
            scheduler,
            job,
            lambda j: j.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED),
            120,
        )
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error_message
        assert "test/recall_at_100" in done.final_metrics
        run = tracker.GetRun(
            tracker_service_pb2.GetRunRequest(name=done.run, view=run_pb2.RUN_VIEW_FULL)
        )
        assert run.status == run_pb2.RUN_STATUS_FINISHED
        paths = {
            a.path
            for a in tracker.ListArtifacts(
                tracker_service_pb2.ListArtifactsRequest(parent=done.run, page_size=1000)
            ).artifacts
        }
        assert "schema.pbtxt" in paths
        assert "training_metrics.json" in paths
        assert any(p.startswith("serving_model/") for p in paths)
