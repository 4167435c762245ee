"""The Vertex AI launcher: each job is a Vertex AI PipelineJob running the same TFX pipeline.

Launch compiles the job's pipeline in the trainer runtime (`python -m cairn_trainer compile`,
KubeflowV2DagRunner; see cairn_trainer.remote): that step prepares the data here (sample,
clean, split), uploads the splits under the job's pipeline root (`<pipeline_root>/<job id>`
on gs://) and writes the PipelineJob document. The Trainer task gets the hardware tier's
vCPUs and memory (its executor's resources: Vertex picks a machine type that fits), the job
is labelled (cairn job id, tier, machine type), and it is created through the official
google-cloud-aiplatform PipelineServiceClient with the pipeline job id
`cairn-<job id>`: the id is the idempotency key (a second create answers ALREADY_EXISTS and
the existing job is adopted), and a scheduler that restarts finds the job by that resource
name.

`status` reads the PipelineJob: its state maps to a phase, its task details to the stage
(the task running now, else the last one that finished) and the progress (the share of the
pipeline's tasks done). The epoch and the loss are not known from here: the trainer reports
them live to the tracker. `cancel` asks Vertex to cancel (idempotent; a job that has ended
already is left alone). Logs are in Cloud Logging, under the PipelineJob resource.

The trainer cannot write the scheduler's disk, so at its end it uploads training_metrics.json,
progress.jsonl and outputs/ to `<job root>/results`; `results_dir` downloads them into the
job's work_dir (services.scheduler.launchers.results).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.api_core import exceptions as google_errors

from services.common.clients import BackendError
from services.common.errors import StatusCode
from services.common.gcs import storage_client
from services.scheduler.launchers import Handle, LaunchSpec, LogLocation, WorkloadStatus
from services.scheduler.launchers.local import SPEC_FILE, _write_json, default_runtime
from services.scheduler.launchers.results import RESULTS_DIR, download_results

log = logging.getLogger(__name__)

PIPELINE_JOB_FILE = "pipeline_job.json"
COMPILE_LOG_FILE = "logs/compile.log"
COMPILE_TIMEOUT_SECONDS = 1800.0
DEFAULT_IMAGE = "cairn-trainer:latest"
# The pipeline's tasks (TFX component ids) in order, with the stage each one is.
TASK_STAGES = {
    "CsvExampleGen": "EXAMPLE_GEN",
    "StatisticsGen": "STATISTICS_GEN",
    "SchemaGen": "SCHEMA_GEN",
    "Transform": "TRANSFORM",
    "Trainer": "TRAINER",
}
_DONE_TASK_STATES = ("SUCCEEDED", "SKIPPED")
_RUNNING_TASK_STATES = ("RUNNING", "PENDING", "CANCEL_PENDING", "CANCELLING")
_PHASES = {
    "PIPELINE_STATE_QUEUED": "pending",
    "PIPELINE_STATE_PENDING": "pending",
    "PIPELINE_STATE_RUNNING": "running",
    "PIPELINE_STATE_PAUSED": "running",
    "PIPELINE_STATE_CANCELLING": "running",
    "PIPELINE_STATE_SUCCEEDED": "succeeded",
    "PIPELINE_STATE_FAILED": "failed",
    "PIPELINE_STATE_CANCELLED": "failed",
}

# (launch spec, the job's gs:// pipeline root) -> the PipelineJob document.
Compiler = Callable[[LaunchSpec, str], dict[str, Any]]
RuntimeProvider = Callable[[], tuple[str, dict[str, str]]]


class VertexLaunchError(RuntimeError):
    pass


# Errors after which Vertex AI may well answer the same request: the launch is retried.
_TRANSIENT = (
    google_errors.ServiceUnavailable,
    google_errors.DeadlineExceeded,
    google_errors.InternalServerError,
    google_errors.TooManyRequests,
    google_errors.Aborted,
)


def pipeline_job_id(job_id: str) -> str:
    """`cairn-<job id>` as Vertex allows it: [a-z0-9-], at most 128 characters."""
    return "cairn-" + re.sub(r"[^a-z0-9-]", "-", job_id.lower()).strip("-")[:120]


def _label_value(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


class VertexLauncher:
    name = "vertex"

    def __init__(
        self,
        *,
        project: str,
        location: str,
        pipeline_root: str,
        image: str = DEFAULT_IMAGE,
        service_account: str | None = None,
        network: str | None = None,
        pipeline_client: Any | None = None,
        storage_client: Any | None = None,
        api_endpoint: str | None = None,
        compiler: Compiler | None = None,
        runtime: RuntimeProvider = default_runtime,
        request_timeout_seconds: float = 30.0,
    ) -> None:
        """`pipeline_client` (an aiplatform_v1 PipelineServiceClient) and `storage_client` (a
        google.cloud.storage Client) default to the real services with Application Default
        Credentials; tests pass clients on channels to local servers."""
        if not project:
            raise ValueError("the Vertex AI launcher needs a project")
        if not pipeline_root.startswith("gs://"):
            raise ValueError(f"the pipeline root must be a gs:// URI, got {pipeline_root!r}")
        self.project = project
        self.location = location
        self.pipeline_root = pipeline_root.rstrip("/")
        self.image = image
        self.service_account = service_account
        self.network = network
        self._timeout = request_timeout_seconds
        if pipeline_client is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import aiplatform_v1

            pipeline_client = aiplatform_v1.PipelineServiceClient(
                client_options=ClientOptions(
                    api_endpoint=api_endpoint or f"{location}-aiplatform.googleapis.com"
                )
            )
        self.pipelines = pipeline_client
        self._storage = storage_client
        self._compile = compiler or self._compile_in_runtime
        self._runtime = runtime

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def resource_name(self, job_id: str) -> str:
        return f"{self.parent}/pipelineJobs/{pipeline_job_id(job_id)}"

    def job_root(self, job_id: str) -> str:
        return f"{self.pipeline_root}/{job_id}"

    # ------------------------------------------------------------------ launch

    def launch(self, spec: LaunchSpec) -> Handle:
        try:
            return self._launch(spec)
        except _TRANSIENT as error:
            # The job stays SUBMITTING and the next pass launches again: it finds the
            # PipelineJob by its id if this create reached Vertex after all, so a timeout
            # never leaves a PipelineJob running behind a failed job, nor makes a second.
            raise BackendError(
                StatusCode.UNAVAILABLE,
                f"Vertex AI did not answer ({type(error).__name__}): {error.message}",
                reason="VERTEX_AI_UNAVAILABLE",
            ) from error

    def _launch(self, spec: LaunchSpec) -> Handle:
        existing = self.adopt(spec.job_id, spec.work_dir)
        if existing is not None:
            log.info("job %s already has a PipelineJob; adopting it", spec.job_id)
            return existing
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        root = self.job_root(spec.job_id)
        document = self._compile(spec, root)
        body = self._pipeline_job(spec, root, document)
        from google.cloud import aiplatform_v1

        try:
            job = self.pipelines.create_pipeline_job(
                request=aiplatform_v1.CreatePipelineJobRequest(
                    parent=self.parent,
                    pipeline_job=body,
                    pipeline_job_id=pipeline_job_id(spec.job_id),
                ),
                timeout=self._timeout,
            )
            log.info("created Vertex AI PipelineJob %s", job.name)
        except google_errors.AlreadyExists:
            job = self.pipelines.get_pipeline_job(
                name=self.resource_name(spec.job_id), timeout=self._timeout
            )
            log.info("job %s already has a PipelineJob; adopting it", spec.job_id)
        return self._handle(spec.job_id, spec.work_dir, job.name, spec.machine.machine_type)

    def _compile_in_runtime(self, spec: LaunchSpec, root: str) -> dict[str, Any]:
        """`python -m cairn_trainer compile` in the trainer runtime; its log beside the job's."""
        spec_path = spec.work_dir / SPEC_FILE
        _write_json(spec_path, spec.trainer_spec, mode=0o600)
        output = spec.work_dir / PIPELINE_JOB_FILE
        output.unlink(missing_ok=True)
        python, environment = self._runtime()
        log_path = spec.work_dir / COMPILE_LOG_FILE
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            python,
            *("-m", "cairn_trainer", "compile", "--spec", str(spec_path)),
            *("--pipeline-root", root, "--image", self.image, "--output", str(output)),
        ]
        with log_path.open("ab") as log_file:
            done = subprocess.run(
                command,
                cwd=spec.work_dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.PIPE,
                timeout=COMPILE_TIMEOUT_SECONDS,
                check=False,
            )
            log_file.write(done.stderr)
        if done.returncode < 0:
            raise VertexLaunchError(
                f"compiling the pipeline was killed by signal {-done.returncode} (out of "
                f"memory? see {log_path})"
            )
        if done.returncode != 0:
            lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line]
            reason = lines[-1] if lines else f"exit code {done.returncode}"
            raise VertexLaunchError(f"compiling the pipeline failed: {reason}")
        loaded: dict[str, Any] = json.loads(output.read_text())
        return loaded

    def _pipeline_job(self, spec: LaunchSpec, root: str, document: dict[str, Any]) -> Any:
        from google.cloud import aiplatform_v1

        pipeline_spec = dict(document.get("pipelineSpec") or {})
        if "root" not in pipeline_spec:
            raise VertexLaunchError("the compiled pipeline has no pipelineSpec.root")
        _size_the_trainer(pipeline_spec, spec.machine.cpus, spec.machine.memory_gb)
        runtime = dict(document.get("runtimeConfig") or {})
        runtime["gcsOutputDirectory"] = f"{root}/tfx"
        labels = {
            **{
                _label_value(k): _label_value(str(v))
                for k, v in dict(document.get("labels") or {}).items()
            },
            "managed-by": "cairn",
            "cairn-job-id": _label_value(spec.job_id),
            "cairn-hardware-tier": _label_value(spec.machine.tier),
            "cairn-machine-type": _label_value(spec.machine.machine_type),
        }
        body: dict[str, Any] = {
            "displayName": f"cairn {spec.job_id}",
            "pipelineSpec": pipeline_spec,
            "runtimeConfig": runtime,
            "labels": labels,
        }
        if self.service_account:
            body["serviceAccount"] = self.service_account
        if self.network:
            body["network"] = self.network
        return aiplatform_v1.PipelineJob.from_json(json.dumps(body), ignore_unknown_fields=True)

    def _handle(self, job_id: str, work_dir: Path, name: str, machine_type: str) -> Handle:
        return {
            "launcher": self.name,
            "job_id": job_id,
            "name": name,
            "root": self.job_root(job_id),
            "work_dir": str(work_dir),
            "machine_type": machine_type,
        }

    def adopt(self, job_id: str, work_dir: Path) -> Handle | None:
        try:
            job = self.pipelines.get_pipeline_job(
                name=self.resource_name(job_id), timeout=self._timeout
            )
        except google_errors.NotFound:
            return None
        labels = dict(job.labels)
        return self._handle(job_id, work_dir, job.name, labels.get("cairn-machine-type", ""))

    # ------------------------------------------------------------------ status

    def status(self, handle: Handle) -> WorkloadStatus:
        name = str(handle["name"])
        try:
            job = self.pipelines.get_pipeline_job(name=name, timeout=self._timeout)
        except google_errors.NotFound:
            return WorkloadStatus("lost", message=f"the Vertex AI PipelineJob {name} is gone")
        state = job.state.name
        phase = _PHASES.get(state, "pending")
        # Only the pipeline's components: Vertex also lists the root DAG as a task.
        ours = [t for t in job.job_detail.task_details if t.task_name in TASK_STAGES]
        tasks = {t.task_name: t.state.name for t in ours}
        done = [n for n in TASK_STAGES if tasks.get(n) in _DONE_TASK_STATES]
        running = [n for n in TASK_STAGES if tasks.get(n) in _RUNNING_TASK_STATES]
        failed_tasks = [t for t in ours if t.state.name == "FAILED"]
        current = running[-1] if running else (done[-1] if done else "")
        stage = TASK_STAGES.get(current, "")
        progress = 100.0 * len(done) / len(TASK_STAGES)
        common: dict[str, Any] = {
            "stage": stage,
            "progress_percent": progress,
            "message": f"{current} {tasks[current].lower()}" if current else state,
        }
        if phase == "succeeded":
            return WorkloadStatus("succeeded", **{**common, "progress_percent": 100.0})
        if phase == "failed":
            if state == "PIPELINE_STATE_CANCELLED":
                message = "the Vertex AI PipelineJob was cancelled"
            else:
                message = "the Vertex AI PipelineJob failed"
                if job.error.message:
                    message += f": {job.error.message}"
            details = "\n".join(
                f"{t.task_name}: {t.error.message}" for t in failed_tasks if t.error.message
            )
            error_stage = TASK_STAGES.get(failed_tasks[0].task_name, "") if failed_tasks else ""
            return WorkloadStatus(
                "failed",
                **{**common, "message": message},
                details=details,
                error_stage=error_stage or stage,
            )
        return WorkloadStatus(phase, **common)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ cancel

    def cancel(self, handle: Handle) -> None:
        try:
            self.pipelines.cancel_pipeline_job(name=str(handle["name"]), timeout=self._timeout)
        except (google_errors.NotFound, google_errors.FailedPrecondition) as error:
            # Gone, or ended already (cancelled or not): status says which.
            log.info("cancel of %s: %s", handle["name"], error.message)

    # ------------------------------------------------------------------ where things are

    def log_location(self, handle: Handle) -> LogLocation:
        job = str(handle["name"]).rsplit("/", 1)[-1]
        return LogLocation(
            "cloud_logging",
            {
                "project": self.project,
                "filter": (
                    'resource.type="aiplatform.googleapis.com/PipelineJob" AND '
                    f'resource.labels.pipeline_job_id="{job}"'
                ),
            },
        )

    def results_dir(self, handle: Handle) -> Path:
        if self._storage is None:
            self._storage = storage_client("the Vertex AI launcher's results", self.project)
        return download_results(
            f"{handle['root']}/{RESULTS_DIR}", Path(handle["work_dir"]), self._storage
        )


def _size_the_trainer(pipeline_spec: dict[str, Any], cpus: int, memory_gb: int) -> None:
    """The Trainer task's executor asks for the tier's vCPUs and memory (PipelineSpec
    container resources); the other tasks keep Vertex's default machine."""
    tasks = pipeline_spec.get("root", {}).get("dag", {}).get("tasks", {})
    trainer = tasks.get("Trainer")
    if trainer is None:
        raise VertexLaunchError("the compiled pipeline has no Trainer task")
    executor = trainer.get("componentRef", {}).get("name", "")
    component = pipeline_spec.get("components", {}).get(executor, {})
    executor_label = component.get("executorLabel", "")
    executors = pipeline_spec.get("deploymentSpec", {}).get("executors", {})
    container = executors.get(executor_label, {}).get("container")
    if container is None:
        raise VertexLaunchError("the compiled pipeline has no container for the Trainer")
    container["resources"] = {"cpuLimit": float(cpus), "memoryLimit": float(memory_gb)}
