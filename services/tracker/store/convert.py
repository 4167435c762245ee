"""ORM rows <-> tracker protos. The only place that knows both shapes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cairn.common.v1 import environment_pb2, lineage_pb2
from cairn.tracker.v1 import artifact_pb2, experiment_pb2, lifecycle_pb2, metric_pb2, run_pb2
from services.common.timeutil import ms_to_timestamp
from services.tracker.store.models import (
    ArtifactRow,
    ExperimentRow,
    RunEnvironmentRow,
    RunRow,
    StoredArtifact,
)

LIFECYCLE_TO_PROTO = {
    "ACTIVE": lifecycle_pb2.LIFECYCLE_STATE_ACTIVE,
    "DELETED": lifecycle_pb2.LIFECYCLE_STATE_DELETED,
    # Claimed by a running PurgeDeleted: still deleted to every caller, no longer restorable.
    "PURGING": lifecycle_pb2.LIFECYCLE_STATE_DELETED,
}
STATUS_TO_PROTO = {
    "QUEUED": run_pb2.RUN_STATUS_QUEUED,
    "RUNNING": run_pb2.RUN_STATUS_RUNNING,
    "FINISHED": run_pb2.RUN_STATUS_FINISHED,
    "FAILED": run_pb2.RUN_STATUS_FAILED,
    "KILLED": run_pb2.RUN_STATUS_KILLED,
}
STATUS_FROM_PROTO: dict[int, str] = {v: k for k, v in STATUS_TO_PROTO.items()}
ARTIFACT_TYPE_TO_PROTO = {
    "MODEL": artifact_pb2.ARTIFACT_TYPE_MODEL,
    "PLOT": artifact_pb2.ARTIFACT_TYPE_PLOT,
    "DATA": artifact_pb2.ARTIFACT_TYPE_DATA,
    "REPORT": artifact_pb2.ARTIFACT_TYPE_REPORT,
    "CHECKPOINT": artifact_pb2.ARTIFACT_TYPE_CHECKPOINT,
    "OTHER": artifact_pb2.ARTIFACT_TYPE_OTHER,
}
ARTIFACT_TYPE_FROM_PROTO: dict[int, str] = {v: k for k, v in ARTIFACT_TYPE_TO_PROTO.items()}

ENVIRONMENT_FIELDS = (
    "git_commit",
    "git_branch",
    "git_remote",
    "git_dirty",
    "git_diff",
    "command",
    "python_version",
    "pip_freeze",
    "hostname",
    "platform",
    "device_info",
    "user",
)


def experiment_name(experiment_id: str) -> str:
    return f"experiments/{experiment_id}"


def run_name(experiment_id: str, run_id: str) -> str:
    return f"experiments/{experiment_id}/runs/{run_id}"


def metric_value_from_db(value: float | None) -> float:
    return math.nan if value is None else value


def metric_value_to_db(value: float) -> float | None:
    return None if math.isnan(value) else value


def experiment_to_proto(
    row: ExperimentRow, tags: Mapping[str, str], run_count: int
) -> experiment_pb2.Experiment:
    message = experiment_pb2.Experiment(
        name=experiment_name(row.experiment_id),
        experiment_id=row.experiment_id,
        display_name=row.display_name,
        description=row.description,
        tags=dict(tags),
        lifecycle_state=LIFECYCLE_TO_PROTO[row.lifecycle_state],
        run_count=run_count,
    )
    ms_to_timestamp(row.create_time, message.create_time)
    ms_to_timestamp(row.update_time, message.update_time)
    if row.delete_time is not None:
        ms_to_timestamp(row.delete_time, message.delete_time)
    return message


def run_to_proto(row: RunRow, artifact_uri: str) -> run_pb2.Run:
    """The BASIC view of a run; callers add params, metrics, tags, artifacts, environment."""
    message = run_pb2.Run(
        name=run_name(row.experiment_id, row.run_id),
        run_id=row.run_id,
        experiment_id=row.experiment_id,
        run_name=row.run_name,
        status=STATUS_TO_PROTO[row.status],
        lifecycle_state=LIFECYCLE_TO_PROTO[row.lifecycle_state],
        note=row.note,
        version=row.version,
        user=row.user,
        artifact_uri=artifact_uri,
        lineage=lineage_pb2.Lineage(
            dataset_id=row.dataset_id,
            dataset_name=row.dataset_name,
            pipeline_id=row.pipeline_id,
            node_id=row.node_id,
            job_id=row.job_id,
            model_type=row.model_type,
        ),
    )
    ms_to_timestamp(row.start_time, message.start_time)
    ms_to_timestamp(row.create_time, message.create_time)
    ms_to_timestamp(row.update_time, message.update_time)
    if row.end_time is not None:
        ms_to_timestamp(row.end_time, message.end_time)
    if row.delete_time is not None:
        ms_to_timestamp(row.delete_time, message.delete_time)
    return message


def environment_to_proto(row: RunEnvironmentRow) -> environment_pb2.Environment:
    return environment_pb2.Environment(
        **{field: getattr(row, field) for field in ENVIRONMENT_FIELDS}
    )


def environment_from_proto(run_id: str, env: environment_pb2.Environment) -> RunEnvironmentRow:
    return RunEnvironmentRow(
        run_id=run_id, **{field: getattr(env, field) for field in ENVIRONMENT_FIELDS}
    )


def artifact_to_proto(
    row: ArtifactRow | StoredArtifact, run_resource: str
) -> artifact_pb2.Artifact:
    message = artifact_pb2.Artifact(
        run=run_resource,
        path=row.path,
        artifact_type=ARTIFACT_TYPE_TO_PROTO.get(
            row.artifact_type, artifact_pb2.ARTIFACT_TYPE_OTHER
        ),
        size_bytes=row.size_bytes,
        sha256=row.sha256,
    )
    ms_to_timestamp(row.create_time, message.create_time)
    return message


@dataclass(frozen=True)
class HistoryColumns:
    """A stretch of a metric's history as stored, as three parallel columns in step order:
    point i is (steps[i], timestamps_ms[i], values[i]); a value of None is NaN."""

    steps: list[int]
    timestamps_ms: list[int]
    values: list[float | None]

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> HistoryColumns:
        """Columns of (step, timestamp ms, value, ...) rows."""
        return cls([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def __len__(self) -> int:
        return len(self.steps)


def metric_columns(history: HistoryColumns) -> metric_pb2.MetricColumns:
    """History as one MetricColumns: three extends of whole lists, no message per point."""
    columns = metric_pb2.MetricColumns()
    columns.steps.extend(history.steps)
    columns.timestamp_ms.extend(history.timestamps_ms)
    nan = math.nan
    columns.values.extend([nan if v is None else v for v in history.values])
    return columns


def metric_points(history: HistoryColumns) -> list[metric_pb2.MetricPoint]:
    """History as MetricPoint messages (the non-columnar form)."""
    points = []
    for step, timestamp, value in zip(
        history.steps, history.timestamps_ms, history.values, strict=True
    ):
        point = metric_pb2.MetricPoint(step=step, value=metric_value_from_db(value))
        ms_to_timestamp(timestamp, point.timestamp)
        points.append(point)
    return points
