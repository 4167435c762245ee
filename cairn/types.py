"""What SDK reads return: plain Python objects in the users' terms, never protos."""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

from google.protobuf.timestamp_pb2 import Timestamp

from cairn.common.v1 import environment_pb2
from cairn.tracker.v1 import artifact_pb2, experiment_pb2, metric_pb2, run_pb2


def to_datetime(ts: Timestamp, present: bool = True) -> datetime | None:
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def _status_word(value: int) -> str:
    return run_pb2.RunStatus.Name(value).removeprefix("RUN_STATUS_")


@dataclass(frozen=True)
class Artifact:
    path: str
    artifact_type: str  # model, plot, data, report, checkpoint, other
    size_bytes: int
    sha256: str
    created: datetime | None

    @classmethod
    def from_proto(cls, message: artifact_pb2.Artifact) -> Artifact:
        return cls(
            path=message.path,
            artifact_type=artifact_pb2.ArtifactType.Name(message.artifact_type)
            .removeprefix("ARTIFACT_TYPE_")
            .lower(),
            size_bytes=message.size_bytes,
            sha256=message.sha256,
            created=to_datetime(message.create_time),
        )


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float
    timestamp: datetime | None


@dataclass(frozen=True)
class Environment:
    git_commit: str = ""
    git_branch: str = ""
    git_remote: str = ""
    git_dirty: bool = False
    git_diff: str = ""
    command: str = ""
    python_version: str = ""
    pip_freeze: str = ""
    hostname: str = ""
    platform: str = ""
    device_info: str = ""
    user: str = ""

    @classmethod
    def from_proto(cls, message: environment_pb2.Environment) -> Environment:
        return cls(**{f: getattr(message, f) for f in cls.__dataclass_fields__})

    def to_proto(self) -> environment_pb2.Environment:
        return environment_pb2.Environment(
            **{f: getattr(self, f) for f in self.__dataclass_fields__}
        )


@dataclass(frozen=True)
class Run:
    run_id: str
    run_name: str
    experiment_id: str
    status: str  # QUEUED, RUNNING, FINISHED, FAILED, KILLED
    start_time: datetime | None
    end_time: datetime | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest values
    tags: dict[str, str] = field(default_factory=dict)
    note: str = ""
    artifacts: list[Artifact] = field(default_factory=list)
    version: int = 0
    dataset_id: str = ""
    dataset_name: str = ""
    model_type: str = ""
    pipeline_id: str = ""
    node_id: str = ""
    job_id: str = ""
    user: str = ""
    deleted: bool = False
    environment: Environment | None = None
    artifact_uri: str = ""
    name: str = ""  # resource name, experiments/{e}/runs/{r}

    @property
    def git_commit(self) -> str:
        return self.environment.git_commit if self.environment else ""

    @classmethod
    def from_proto(cls, message: run_pb2.Run) -> Run:
        lineage = message.lineage
        return cls(
            run_id=message.run_id,
            run_name=message.run_name,
            experiment_id=message.experiment_id,
            status=_status_word(message.status),
            start_time=to_datetime(message.start_time),
            end_time=to_datetime(message.end_time, message.HasField("end_time")),
            params=dict(message.params),
            metrics={m.key: m.value for m in message.metrics},
            tags=dict(message.tags),
            note=message.note,
            artifacts=[Artifact.from_proto(a) for a in message.artifacts],
            version=message.version,
            dataset_id=lineage.dataset_id,
            dataset_name=lineage.dataset_name,
            model_type=lineage.model_type,
            pipeline_id=lineage.pipeline_id,
            node_id=lineage.node_id,
            job_id=lineage.job_id,
            user=message.user,
            deleted=message.lifecycle_state == 2,
            environment=Environment.from_proto(message.environment)
            if message.HasField("environment")
            else None,
            artifact_uri=message.artifact_uri,
            name=message.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (times as ISO strings, NaN as None)."""
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "run_name": self.run_name,
            "experiment_id": self.experiment_id,
            "status": self.status,
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "end_time": self.end_time.isoformat() if self.end_time else None,
            "params": self.params,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},
            "tags": self.tags,
            "note": self.note,
            "version": self.version,
            "dataset_id": self.dataset_id,
            "dataset_name": self.dataset_name,
            "model_type": self.model_type,
            "pipeline_id": self.pipeline_id,
            "node_id": self.node_id,
            "job_id": self.job_id,
            "user": self.user,
            "deleted": self.deleted,
            "artifact_uri": self.artifact_uri,
            "artifacts": [
                {
                    "path": a.path,
                    "artifact_type": a.artifact_type,
                    "size_bytes": a.size_bytes,
                    "sha256": a.sha256,
                }
                for a in self.artifacts
            ],
        }
        if self.environment is not None:
            env = self.environment
            data["environment"] = {
                f: getattr(env, f)
                for f in env.__dataclass_fields__
                if f not in ("pip_freeze", "git_diff")
            }
        return data


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    description: str
    tags: dict[str, str]
    deleted: bool
    run_count: int
    created: datetime | None

    @classmethod
    def from_proto(cls, message: experiment_pb2.Experiment) -> Experiment:
        return cls(
            experiment_id=message.experiment_id,
            name=message.display_name,
            description=message.description,
            tags=dict(message.tags),
            deleted=message.lifecycle_state == 2,
            run_count=message.run_count,
            created=to_datetime(message.create_time),
        )


def metric_point(message: metric_pb2.MetricPoint) -> MetricPoint:
    return MetricPoint(message.step, message.value, to_datetime(message.timestamp))


def _datetime_from_ms(ms: int) -> datetime | None:
    """A timestamp in ms since the epoch as a UTC datetime; 0 (unset) is None."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


class MetricHistory(Sequence[MetricPoint]):
    """A metric's points in step order, as `Tracker.get_metric_history` returns them.

    A read-only sequence of MetricPoint (len, indexing, slicing, iteration; equal to a list
    of the same points) that holds the points as columns, as they arrived, and builds each
    MetricPoint, datetime included, only when it is read: a history of a million points is
    ready as soon as it has arrived. steps(), values() and timestamps_ms() give a whole column
    as a list without building any point (e.g. to plot it). Not a list: list(history) makes
    one.
    """

    __slots__ = ("_chunks", "_ends")

    def __init__(
        self,
        steps: Sequence[int] = (),
        values: Sequence[float] = (),
        timestamps_ms: Sequence[int] = (),
    ) -> None:
        """Point i is (steps[i], values[i], timestamps_ms[i]) (ms since the epoch, 0 for
        none)."""
        # Consecutive stretches of points (one per page read), and where each ends.
        self._chunks: list[tuple[Sequence[int], Sequence[float], Sequence[int]]] = []
        self._ends: list[int] = []
        self._append(steps, values, timestamps_ms)

    @classmethod
    def from_columns(cls, pages: Iterable[metric_pb2.MetricColumns]) -> MetricHistory:
        """The points of columnar history pages, in page order (the pages are kept as they
        are: nothing is copied)."""
        history = cls()
        for page in pages:
            history._append(page.steps, page.values, page.timestamp_ms)
        return history

    def _append(
        self, steps: Sequence[int], values: Sequence[float], timestamps_ms: Sequence[int]
    ) -> None:
        if not len(steps) == len(values) == len(timestamps_ms):
            raise ValueError(
                f"columns of different lengths: {len(steps)} steps, {len(values)} values, "
                f"{len(timestamps_ms)} timestamps"
            )
        if len(steps):
            self._chunks.append((steps, values, timestamps_ms))
            self._ends.append(len(self) + len(steps))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> MetricPoint: ...

    @overload
    def __getitem__(self, index: slice) -> list[MetricPoint]: ...

    def __getitem__(self, index: int | slice) -> MetricPoint | list[MetricPoint]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        position = operator.index(index)
        if position < 0:
            position += size
        if not 0 <= position < size:
            raise IndexError("MetricHistory index out of range")
        chunk = bisect.bisect_right(self._ends, position)
        offset = position - (self._ends[chunk - 1] if chunk else 0)
        steps, values, timestamps_ms = self._chunks[chunk]
        return MetricPoint(steps[offset], values[offset], _datetime_from_ms(timestamps_ms[offset]))

    def __iter__(self) -> Iterator[MetricPoint]:
        for steps, values, timestamps_ms in self._chunks:
            for step, value, ms in zip(steps, values, timestamps_ms, strict=True):
                yield MetricPoint(step, value, _datetime_from_ms(ms))

    def steps(self) -> list[int]:
        """Every point's step, in order."""
        return [step for chunk in self._chunks for step in chunk[0]]

    def values(self) -> list[float]:
        """Every point's value, in order (NaN where NaN was logged)."""
        return [value for chunk in self._chunks for value in chunk[1]]

    def timestamps_ms(self) -> list[int]:
        """When every point was measured, in ms since the Unix epoch (0: not recorded)."""
        return [ms for chunk in self._chunks for ms in chunk[2]]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricHistory | list):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so unhashable like them

    def __reduce__(self) -> tuple[type[MetricHistory], tuple[list[int], list[float], list[int]]]:
        # The columns as lists: pickles and copies hold no protobuf containers.
        return (MetricHistory, (self.steps(), self.values(), self.timestamps_ms()))

    def __repr__(self) -> str:
        size = len(self)
        if size == 0:
            return "MetricHistory([])"
        return f"<MetricHistory of {size} points, steps {self[0].step} to {self[-1].step}>"
