"""A local gRPC server speaking Vertex AI's real google.cloud.aiplatform.v1.PipelineService,
for the Vertex AI launcher's tests.

Generic method handlers with the official library's own request and response types
(google-cloud-aiplatform's proto-plus messages) do the (de)serialization, so the launcher's
real PipelineServiceClient talks to it over an insecure channel exactly as it would to
{location}-aiplatform.googleapis.com. It keeps PipelineJobs in memory and behaves like the
service where the launcher relies on it: CreatePipelineJob takes a caller-chosen
pipeline_job_id (ALREADY_EXISTS on a second create), validates what Vertex validates at
create time (a pipeline spec with a root DAG, a gs:// output directory, label syntax),
GetPipelineJob answers NOT_FOUND for unknown names, CancelPipelineJob moves a running job to
CANCELLING and answers FAILED_PRECONDITION for one that has ended. The test moves jobs
through their states (`run`, `task`, `succeed`, `fail`, `finish_cancel`) as the real
orchestrator would.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.cloud.aiplatform_v1.types import pipeline_job as pipeline_job_types
from google.cloud.aiplatform_v1.types import pipeline_service, pipeline_state
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import status_pb2

SERVICE = "google.cloud.aiplatform.v1.PipelineService"
State = pipeline_state.PipelineState
TaskState = pipeline_job_types.PipelineTaskDetail.State
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_TERMINAL = (
    State.PIPELINE_STATE_SUCCEEDED,
    State.PIPELINE_STATE_FAILED,
    State.PIPELINE_STATE_CANCELLED,
)


class FakeVertex:
    def __init__(self) -> None:
        self.jobs: dict[str, pipeline_job_types.PipelineJob] = {}
        self.calls: list[tuple[str, str]] = []
        self.cancels: list[str] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.address = ""
        # The next call of a method fails with this code (a test of error handling).
        self.fail_next: dict[str, grpc.StatusCode] = {}
        # The next create is carried out, then answered with this code (a timeout the
        # client sees although the job exists).
        self.fail_after_create: grpc.StatusCode | None = None

    # ------------------------------------------------------------------ server

    def start(self) -> FakeVertex:
        def handler(request_type: Any, response_type: Any, method: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.deserialize,
                response_serializer=response_type.serialize,
            )

        handlers = {
            "CreatePipelineJob": handler(
                pipeline_service.CreatePipelineJobRequest,
                pipeline_job_types.PipelineJob,
                self._create,
            ),
            "GetPipelineJob": handler(
                pipeline_service.GetPipelineJobRequest,
                pipeline_job_types.PipelineJob,
                self._get,
            ),
            "CancelPipelineJob": grpc.unary_unary_rpc_method_handler(
                self._cancel,
                request_deserializer=pipeline_service.CancelPipelineJobRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString,
            ),
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    # ------------------------------------------------------------------ RPCs

    def _failing(self, method: str, context: grpc.ServicerContext) -> None:
        code = self.fail_next.pop(method, None)
        if code is not None:
            context.abort(code, f"{method} failed on purpose")

    def _create(
        self, request: pipeline_service.CreatePipelineJobRequest, context: grpc.ServicerContext
    ) -> pipeline_job_types.PipelineJob:
        self.calls.append(("CreatePipelineJob", request.parent))
        self._failing("CreatePipelineJob", context)
        if not re.fullmatch(r"projects/[^/]+/locations/[^/]+", request.parent):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad parent {request.parent!r}")
        job_id = request.pipeline_job_id
        if not _ID.match(job_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad pipeline_job_id {job_id!r}")
        job = pipeline_job_types.PipelineJob(request.pipeline_job)
        spec = dict(job.pipeline_spec or {})
        if "root" not in spec or "dag" not in dict(spec["root"]):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pipeline_spec has no root DAG")
        if not job.runtime_config.gcs_output_directory.startswith("gs://"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "runtime_config.gcs_output_directory must be a gs:// path",
            )
        for key, value in job.labels.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad label {key}={value}")
        name = f"{request.parent}/pipelineJobs/{job_id}"
        with self._lock:
            if name in self.jobs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} already exists")
            job.name = name
            job.state = State.PIPELINE_STATE_PENDING
            job.create_time = _now()
            self.jobs[name] = job
        if self.fail_after_create is not None:
            code, self.fail_after_create = self.fail_after_create, None
            context.abort(code, "created, but the answer was lost")
        return pipeline_job_types.PipelineJob(job)

    def _get(
        self, request: pipeline_service.GetPipelineJobRequest, context: grpc.ServicerContext
    ) -> pipeline_job_types.PipelineJob:
        self.calls.append(("GetPipelineJob", request.name))
        self._failing("GetPipelineJob", context)
        with self._lock:
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            return pipeline_job_types.PipelineJob(job)

    def _cancel(
        self, request: pipeline_service.CancelPipelineJobRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.calls.append(("CancelPipelineJob", request.name))
        self._failing("CancelPipelineJob", context)
        with self._lock:
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            if job.state in _TERMINAL:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{request.name} is in state {job.state.name}: it cannot be cancelled",
                )
            job.state = State.PIPELINE_STATE_CANCELLING
            self.cancels.append(request.name)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ the orchestrator

    def job(self, name: str) -> pipeline_job_types.PipelineJob:
        with self._lock:
            return self.jobs[name]

    def only_job(self) -> pipeline_job_types.PipelineJob:
        with self._lock:
            (job,) = self.jobs.values()
            return job

    def set_state(self, name: str, state: Any) -> None:
        with self._lock:
            job = self.jobs[name]
            job.state = state
            if state == State.PIPELINE_STATE_RUNNING and not job.start_time:
                job.start_time = _now()
            if state in _TERMINAL:
                job.end_time = _now()

    def run(self, name: str) -> None:
        self.set_state(name, State.PIPELINE_STATE_RUNNING)

    def task(self, name: str, task_name: str, state: Any, error: str = "") -> None:
        """Adds or updates the task detail of one pipeline task."""
        with self._lock:
            job = self.jobs[name]
            tasks = list(job.job_detail.task_details)
            found = next((t for t in tasks if t.task_name == task_name), None)
            if found is None:
                found = pipeline_job_types.PipelineTaskDetail(
                    task_id=len(tasks) + 1, task_name=task_name, create_time=_now()
                )
                tasks.append(found)
            found.state = state
            if error:
                found.error = status_pb2.Status(code=9, message=error)
            job.job_detail = pipeline_job_types.PipelineJobDetail(task_details=tasks)

    def succeed(self, name: str) -> None:
        self.set_state(name, State.PIPELINE_STATE_SUCCEEDED)

    def fail(self, name: str, message: str) -> None:
        with self._lock:
            self.jobs[name].error = status_pb2.Status(code=9, message=message)
        self.set_state(name, State.PIPELINE_STATE_FAILED)

    def finish_cancel(self, name: str) -> None:
        self.set_state(name, State.PIPELINE_STATE_CANCELLED)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@pytest.fixture
def vertex() -> Iterator[FakeVertex]:
    """A FakeVertex serving on loopback for one test."""
    fake = FakeVertex().start()
    yield fake
    fake.stop()
