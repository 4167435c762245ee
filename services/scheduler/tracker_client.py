"""The scheduler's writes into the tracker: each job's experiment and run, its params, its
metrics, its artifacts and its final status. Every call is safe to repeat: runs are created
with a request id derived from the job, metric batches carry deterministic ids, artifacts
are uploaded with overwrite, so the reconcile loop can retry any step after a failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2, timestamp_pb2

from cairn.common.v1 import lineage_pb2
from cairn.tracker.v1 import (
    artifact_pb2,
    experiment_pb2,
    metric_pb2,
    run_pb2,
    tracker_service_pb2,
    tracker_service_pb2_grpc,
)
from services.common.clients import backend_error

BACKEND = "tracker"
UPLOAD_CHUNK_BYTES = 1 << 20
# StreamMetrics messages per call: a long history goes in several calls, each small.
MESSAGES_PER_STREAM = 2_000


@dataclass(frozen=True)
class MetricBatch:
    batch_id: str
    key: str
    value: float
    step: int


class TrackerWriter:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, token: str = "") -> None:
        self._stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        # The scheduler acts on its own behalf (the reconcile loop has no caller to forward):
        # with auth on it presents one of the configured service tokens.
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    async def ensure_experiment(self, display_name: str) -> str:
        """The experiment's resource name, created when missing (concurrently safe)."""
        try:
            found = await self._stub.GetExperimentByName(
                tracker_service_pb2.GetExperimentByNameRequest(display_name=display_name),
                timeout=self._timeout,
                metadata=self._metadata,
            )
            return str(found.name)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise backend_error(error, BACKEND) from None
        digest = hashlib.sha256(display_name.encode()).hexdigest()[:40]
        try:
            created = await self._stub.CreateExperiment(
                tracker_service_pb2.CreateExperimentRequest(
                    experiment=experiment_pb2.Experiment(
                        display_name=display_name,
                        description="Training jobs launched by the Cairn scheduler.",
                    ),
                    request_id=f"cairn-scheduler-experiment-{digest}",
                ),
                timeout=self._timeout,
                metadata=self._metadata,
            )
            return str(created.name)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise backend_error(error, BACKEND) from None
        return await self.ensure_experiment(display_name)

    async def create_run(
        self,
        experiment: str,
        job_id: str,
        run_name: str,
        lineage: lineage_pb2.Lineage,
        tags: Mapping[str, str],
    ) -> str:
        try:
            run = await self._stub.CreateRun(
                tracker_service_pb2.CreateRunRequest(
                    parent=experiment,
                    run=run_pb2.Run(
                        run_name=run_name,
                        status=run_pb2.RUN_STATUS_QUEUED,
                        lineage=lineage,
                        tags=dict(tags),
                        user="cairn-scheduler",
                    ),
                    request_id=f"cairn-scheduler-job-{job_id}",
                ),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None
        return str(run.name)

    async def log_params(self, run: str, params: Mapping[str, str]) -> None:
        await self._call(
            self._stub.LogParams, tracker_service_pb2.LogParamsRequest(run=run, params=params)
        )

    async def set_tags(self, run: str, tags: Mapping[str, str]) -> None:
        await self._call(
            self._stub.SetRunTags, tracker_service_pb2.SetRunTagsRequest(run=run, tags=tags)
        )

    async def set_status(
        self, run: str, status: int, *, start_ms: int | None = None, end_ms: int | None = None
    ) -> None:
        fields = ["status"]
        update = run_pb2.Run(name=run, status=status)  # type: ignore[arg-type]
        if start_ms is not None:
            update.start_time.CopyFrom(_timestamp(start_ms))
            fields.append("start_time")
        if end_ms is not None:
            update.end_time.CopyFrom(_timestamp(end_ms))
            fields.append("end_time")
        await self._call(
            self._stub.UpdateRun,
            tracker_service_pb2.UpdateRunRequest(
                run=update, update_mask=field_mask_pb2.FieldMask(paths=fields)
            ),
        )

    async def log_metric_batches(self, run: str, batches: Sequence[MetricBatch]) -> tuple[int, int]:
        """Stream batches (one point each, deterministic ids): (stored points, duplicates)."""
        stored = duplicates = 0
        for start in range(0, len(batches), MESSAGES_PER_STREAM):
            part = batches[start : start + MESSAGES_PER_STREAM]

            async def requests(
                part: Sequence[MetricBatch] = part,
            ) -> AsyncIterator[tracker_service_pb2.StreamMetricsRequest]:
                for batch in part:
                    yield tracker_service_pb2.StreamMetricsRequest(
                        run=run,
                        batch_id=batch.batch_id,
                        metrics=[
                            metric_pb2.Metric(key=batch.key, value=batch.value, step=batch.step)
                        ],
                    )

            try:
                response = await self._stub.StreamMetrics(
                    requests(), timeout=self._timeout, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as error:
                raise backend_error(error, BACKEND) from None
            stored += response.stored_point_count
            duplicates += response.duplicate_batch_count
        return stored, duplicates

    async def upload_file(self, run: str, path: str, source: Path, artifact_type: int) -> None:
        async def requests() -> AsyncIterator[tracker_service_pb2.UploadArtifactRequest]:
            yield tracker_service_pb2.UploadArtifactRequest(
                metadata=tracker_service_pb2.UploadArtifactMetadata(
                    run=run,
                    path=path,
                    artifact_type=artifact_type,  # type: ignore[arg-type]
                    overwrite=True,
                )
            )
            with source.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                    yield tracker_service_pb2.UploadArtifactRequest(chunk=chunk)

        try:
            await self._stub.UploadArtifact(
                requests(), timeout=self._timeout * 10, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None

    async def delete_run(self, run: str) -> None:
        try:
            await self._stub.DeleteRun(
                tracker_service_pb2.DeleteRunRequest(name=run),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            mapped = backend_error(error, BACKEND)
            # Gone already (not found, or deleted by someone else): what was asked for holds.
            if error.code() != grpc.StatusCode.NOT_FOUND and mapped.reason != "RUN_DELETED":
                raise mapped from None

    async def _call(self, method: object, request: object) -> None:
        try:
            await method(request, timeout=self._timeout, metadata=self._metadata)  # type: ignore[operator]
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None


ARTIFACT_TYPES: dict[str, int] = {
    "model": artifact_pb2.ARTIFACT_TYPE_MODEL,
    "data": artifact_pb2.ARTIFACT_TYPE_DATA,
    "report": artifact_pb2.ARTIFACT_TYPE_REPORT,
    "plot": artifact_pb2.ARTIFACT_TYPE_PLOT,
    "checkpoint": artifact_pb2.ARTIFACT_TYPE_CHECKPOINT,
}


def artifact_type(name: str) -> int:
    return ARTIFACT_TYPES.get(name, artifact_pb2.ARTIFACT_TYPE_OTHER)


def files_under(root: Path) -> Iterable[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp
