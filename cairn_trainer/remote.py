"""The job's pipeline on Vertex AI: compiled to a pipeline spec here, its files through
Cloud Storage.

`python -m cairn_trainer compile` (run by the scheduler's Vertex AI launcher, in the trainer
runtime) prepares the data as a local run would (sample, clean, split), uploads the two
splits to `<pipeline root>/data/{train,test}/`, and compiles the same TFX pipeline with
KubeflowV2DagRunner: its data and its pipeline root on GCS, no local ML Metadata (Vertex
keeps its own), every component in the trainer image. The Trainer's copy of the spec points
its work_dir at the container's own disk and its results_uri at `<pipeline root>/results`:
at the end of run_fn the trainer uploads training_metrics.json, progress.jsonl and outputs/
(manifest included) there, where the scheduler reads them as it reads a local work_dir.

Cloud Storage is reached through google-cloud-storage (in the runtime through apache-beam's
gcp extra), which honours STORAGE_EMULATOR_HOST: tests run these paths against a local
emulator.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from cairn_trainer.fileio import write_json_atomic
from cairn_trainer.paths import JobPaths
from cairn_trainer.spec import Spec, SpecError, parse_spec

# The trainer container's own disk: where the Trainer component's run_fn writes before
# uploading to results_uri.
REMOTE_WORK_DIR = "/tmp/cairn-job"
RESULT_FILES = ("training_metrics.json", "progress.jsonl")


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://"):
        raise SpecError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise SpecError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def _storage_client() -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # The emulator takes no credentials; without these the client looks for some.
        return storage.Client(project="cairn", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    return storage.Client()


def upload_tree(local_dir: str, uri: str, client: Any = None) -> int:
    """Every file under local_dir to uri/<relative path>; returns how many."""
    client = client or _storage_client()
    bucket_name, prefix = split_gcs_uri(uri)
    bucket = client.bucket(bucket_name)
    count = 0
    for directory, _, files in os.walk(local_dir):
        for name in sorted(files):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
            bucket.blob(f"{prefix}/{relative}" if prefix else relative).upload_from_filename(path)
            count += 1
    return count


def upload_file(path: str, uri: str, client: Any = None) -> None:
    client = client or _storage_client()
    bucket_name, name = split_gcs_uri(uri)
    client.bucket(bucket_name).blob(name).upload_from_filename(path)


def compile_for_vertex(spec: Spec, *, pipeline_root: str, image: str) -> dict[str, Any]:
    """Prepares and uploads the data, then compiles the pipeline; returns the PipelineJob
    document KubeflowV2DagRunner builds ({"displayName", "pipelineSpec", "runtimeConfig",
    "labels"})."""
    from cairn_trainer.prepare import prepare_data

    root = pipeline_root.rstrip("/")
    split_gcs_uri(root)
    paths = JobPaths(spec.work_dir)
    for split in ("train", "test"):
        shutil.rmtree(os.path.join(paths.data, split), ignore_errors=True)
    prepared = prepare_data(spec, paths.data)
    client = _storage_client()
    for split in ("train", "test"):
        upload_tree(os.path.join(paths.data, split), f"{root}/data/{split}", client)
        # Uploaded: the scheduler's disk keeps no copy (jobs would pile them up).
        shutil.rmtree(os.path.join(paths.data, split), ignore_errors=True)

    remote = parse_spec({**spec.raw, "work_dir": REMOTE_WORK_DIR, "results_uri": f"{root}/results"})
    # TFX and TensorFlow load only now, so a bad spec or dataset fails in a second.
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kubeflow_v2

    from cairn_trainer.pipeline import build_pipeline

    pipeline = build_pipeline(
        remote,
        JobPaths(REMOTE_WORK_DIR),
        data_root=f"{root}/data",
        pipeline_root=f"{root}/tfx",
        local_metadata=False,
    )
    runner = kubeflow_v2.KubeflowV2DagRunner(
        config=kubeflow_v2.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=spec.work_dir,
    )
    document: dict[str, Any] = runner.run(pipeline, write_out=False)
    document.setdefault("runtimeConfig", {})["gcsOutputDirectory"] = f"{root}/tfx"
    document["cairnDataSummary"] = prepared.summary()
    return document


def finish_remote(spec: Spec, schema_path: str) -> int:
    """Run by the Trainer component on a remote orchestrator: the schema and the manifest
    into outputs/ (a local run's CLI writes these after the pipeline), then the job's files
    to results_uri. Returns how many files were uploaded."""
    from cairn_trainer.outputs import write_manifest

    paths = JobPaths(spec.work_dir)
    os.makedirs(paths.outputs, exist_ok=True)
    if schema_path:
        # On Vertex AI the schema is on gs://; tf.io.gfile reads both (TF is loaded: this
        # runs inside the Trainer's run_fn).
        import tensorflow as tf

        if tf.io.gfile.exists(schema_path):
            tf.io.gfile.copy(schema_path, paths.output("schema.pbtxt"), overwrite=True)
    write_manifest(paths)
    return upload_results(paths, spec.results_uri)


def upload_results(paths: JobPaths, results_uri: str) -> int:
    """outputs/, training_metrics.json and progress.jsonl to results_uri; how many files."""
    client = _storage_client()
    count = upload_tree(paths.outputs, f"{results_uri}/outputs", client)
    for name in RESULT_FILES:
        path = os.path.join(paths.work_dir, name)
        if os.path.exists(path):
            upload_file(path, f"{results_uri}/{name}", client)
            count += 1
    return count


def write_pipeline_job(document: dict[str, Any], output: str) -> None:
    write_json_atomic(output, document, indent=None)
