"""The Python SDK: `cairn.Tracker`, in the words of the experiment-tracking guide users know.

    tracker = cairn.Tracker()                      # CAIRN_TRACKING_URI or 127.0.0.1:50051
    with tracker.run("risk_prediction", run_name="xgb", tags={"team": "ds"}):
        tracker.log_params({"max_depth": 8, "learning_rate": 0.05})
        for epoch in range(10):
            tracker.log_metrics({"accuracy": acc, "loss": loss}, step=epoch)
        tracker.log_artifact("model.pkl", artifact_type="model")

Metrics are buffered and sent in the background in batches; end_run, reads in the same
process, flush() and process exit deliver everything first.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import numbers
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from cairn._sender import RETRYABLE, MetricSender, PendingPoint
from cairn.common.v1 import lineage_pb2
from cairn.environment import capture_environment
from cairn.errors import CairnError, InvalidArgumentError, NotFoundError, from_rpc_error
from cairn.tracker.v1 import (
    artifact_pb2,
    experiment_pb2,
    lifecycle_pb2,
    metric_pb2,
    run_pb2,
    tracker_service_pb2_grpc,
)
from cairn.tracker.v1 import (
    tracker_service_pb2 as pb,
)
from cairn.types import Artifact, Experiment, MetricHistory, Run
from cairn.validation import (
    MAX_ENTRIES_PER_CALL,
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_POINTS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    key_problem,
)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_EXPERIMENT = "Default"
UPLOAD_CHUNK = 1 << 20

T = TypeVar("T")

# Retry UNAVAILABLE (and ABORTED: a transaction the database gave up on, e.g. a deadlock)
# transparently in the channel: every call is idempotent (creates carry a request_id, metric
# batches a batch_id).
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "cairn.tracker.v1.TrackerService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"],
                },
            }
        ]
    }
)

ARTIFACT_TYPES = {
    name.removeprefix("ARTIFACT_TYPE_").lower(): value
    for name, value in artifact_pb2.ArtifactType.items()
    if value != artifact_pb2.ARTIFACT_TYPE_UNSPECIFIED
}
STATUSES: dict[str, Any] = {
    name.removeprefix("RUN_STATUS_"): value
    for name, value in run_pb2.RunStatus.items()
    if value != run_pb2.RUN_STATUS_UNSPECIFIED
}


def _normalize_target(target: str) -> str:
    for prefix in ("grpc://", "cairn://"):
        if target.startswith(prefix):
            return target[len(prefix) :].rstrip("/")
    if "://" in target:
        raise InvalidArgumentError(
            f"tracking URI {target!r}: use host:port (or grpc://host:port) of the tracker"
        )
    return target


def _is_numpy(value: object) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "item")


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds (np.int64(8) -> 8); anything else as is."""
    if _is_numpy(value):
        try:
            return value.item()  # type: ignore[attr-defined]
        except (TypeError, ValueError):  # an array of several values
            return value
    return value


def _json_default(value: object) -> object:
    if _is_numpy(value):
        plain = _plain(value)
        if plain is not value:
            return plain
        if hasattr(value, "tolist"):
            return value.tolist()
    return str(value)


def _param_text(value: object) -> str:
    """Params and tags are text; numbers are stored as their plain digits, so filters such as
    `params.max_depth > 5` compare them as numbers (numpy scalars included)."""
    plain = _plain(value)
    if isinstance(plain, float) and plain is not value:
        # numpy prints a float32/float16 with the digits of its own precision: 0.1, not the
        # 0.10000000149011612 of the Python float it converts to.
        return str(value)
    if isinstance(plain, str):
        return plain
    if isinstance(plain, numbers.Number) or plain is None:
        return str(plain)
    try:
        return json.dumps(plain, sort_keys=True, default=_json_default)
    except (TypeError, ValueError):
        return str(plain)


def _check_key(key: object, what: str) -> None:
    """Refuse, before anything is queued or sent, a key the tracker would refuse."""
    problem = key_problem(key)
    if problem is not None:
        shown = repr(key)
        if isinstance(key, str) and len(key) > MAX_KEY_LENGTH:
            shown = f"{key[:40]!r}..."
        raise InvalidArgumentError(f"{what} key {shown} {problem}", reason="INVALID_KEY")


def _check_metric_key(key: str) -> None:
    _check_key(key, "metric")


def _text_entries(entries: Mapping[str, object], what: str, value_limit: int) -> dict[str, str]:
    """Params or tags as the text the tracker stores, checked against its limits."""
    if len(entries) > MAX_ENTRIES_PER_CALL:
        raise InvalidArgumentError(
            f"at most {MAX_ENTRIES_PER_CALL} {what}s per call, got {len(entries)}",
            reason="TOO_MANY_ENTRIES",
        )
    texts: dict[str, str] = {}
    for key, value in entries.items():
        _check_key(key, what)
        text = _param_text(value)
        if len(text) > value_limit:
            raise InvalidArgumentError(
                f"{what} {key!r} has a value of {len(text)} characters; the limit is {value_limit}",
                reason="VALUE_TOO_LONG",
                metadata={"key": key, "limit": str(value_limit), "length": str(len(text))},
            )
        texts[key] = text
    return texts


def _metric_value(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            return float(value)  # type: ignore[arg-type]  # numpy scalars, tensors .item()
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"metric {key!r}: {value!r} is not a number", reason="INVALID_METRIC_VALUE"
            ) from None
    return float(value)


class _ActiveRun:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.name = run.name


class Tracker:
    """A client of the Cairn tracker. Thread-safe; one per process is typical."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        capture_environment: bool = True,
    ) -> None:
        self.target = _normalize_target(
            target or os.environ.get("CAIRN_TRACKING_URI") or DEFAULT_TARGET
        )
        token = token if token is not None else os.environ.get("CAIRN_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout = timeout
        self._capture = capture_environment
        self._channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.service_config", _SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self._stub = tracker_service_pb2_grpc.TrackerServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._sender = MetricSender(
            self._send_batch,
            max_batch=max(1, min(batch_size, MAX_POINTS_PER_BATCH)),
            interval=flush_interval,
        )
        self._active: _ActiveRun | None = None
        self._lock = threading.RLock()
        self._experiments: dict[str, str] = {}  # display name -> id
        self._closed = False
        _register_for_exit(self)

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: Callable[..., T], request: Any, **kwargs: Any) -> T:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata, **kwargs)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _send_batch(self, run: str, batch_id: str, metrics: list[metric_pb2.Metric]) -> None:
        self._stub.LogMetrics(
            pb.LogMetricsRequest(run=run, batch_id=batch_id, metrics=metrics),
            timeout=self._timeout,
            metadata=self._metadata,
        )

    def _run_name(self, run_id: str | None) -> str:
        if run_id is None:
            with self._lock:
                if self._active is None:
                    raise CairnError("no active run: call start_run() first or pass run_id=")
                return self._active.name
        return run_id if run_id.startswith("experiments/") else f"experiments/-/runs/{run_id}"

    @property
    def active_run(self) -> Run | None:
        with self._lock:
            return self._active.run if self._active else None

    # ------------------------------------------------------------------ experiments

    def create_experiment(
        self, name: str, description: str = "", tags: Mapping[str, str] | None = None
    ) -> Experiment:
        message = self._call(
            self._stub.CreateExperiment,
            pb.CreateExperimentRequest(
                experiment=experiment_pb2.Experiment(
                    display_name=name, description=description, tags=dict(tags or {})
                ),
                request_id=uuid.uuid4().hex,
            ),
        )
        return Experiment.from_proto(message)

    def get_experiment(self, name_or_id: str) -> Experiment:
        """By name first, then by id."""
        try:
            message = self._call(
                self._stub.GetExperimentByName,
                pb.GetExperimentByNameRequest(display_name=name_or_id),
            )
        except NotFoundError:
            try:
                message = self._call(
                    self._stub.GetExperiment,
                    pb.GetExperimentRequest(name=f"experiments/{name_or_id}"),
                )
            except (NotFoundError, InvalidArgumentError):
                raise NotFoundError(
                    f"no experiment named or with id {name_or_id!r}", reason="EXPERIMENT_NOT_FOUND"
                ) from None
        return Experiment.from_proto(message)

    def list_experiments(
        self, filter_string: str = "", include_deleted: bool = False, max_results: int = 10_000
    ) -> list[Experiment]:
        results: list[Experiment] = []
        token = ""
        while len(results) < max_results:
            response = self._call(
                self._stub.ListExperiments,
                pb.ListExperimentsRequest(
                    filter=filter_string,
                    page_size=min(1000, max_results - len(results)),
                    page_token=token,
                    lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL
                    if include_deleted
                    else lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY,
                ),
            )
            results.extend(Experiment.from_proto(e) for e in response.experiments)
            token = response.next_page_token
            if not token:
                break
        return results

    def delete_experiment(self, name_or_id: str) -> None:
        experiment = self.get_experiment(name_or_id)
        self._call(
            self._stub.DeleteExperiment,
            pb.DeleteExperimentRequest(name=f"experiments/{experiment.experiment_id}"),
        )
        self._experiments.pop(experiment.name, None)

    def restore_experiment(self, name_or_id: str) -> Experiment:
        experiment = self.get_experiment(name_or_id)
        message = self._call(
            self._stub.RestoreExperiment,
            pb.RestoreExperimentRequest(name=f"experiments/{experiment.experiment_id}"),
        )
        return Experiment.from_proto(message)

    def _experiment_id(self, name: str, create: bool) -> str:
        cached = self._experiments.get(name)
        if cached:
            return cached
        try:
            experiment = self._call(
                self._stub.GetExperimentByName, pb.GetExperimentByNameRequest(display_name=name)
            )
        except NotFoundError:
            if not create:
                raise
            try:
                experiment = self._call(
                    self._stub.CreateExperiment,
                    pb.CreateExperimentRequest(
                        experiment=experiment_pb2.Experiment(display_name=name),
                        request_id=uuid.uuid4().hex,
                    ),
                )
            except CairnError as error:
                if error.reason != "EXPERIMENT_EXISTS":
                    raise
                # Another process created it between our lookup and create.
                experiment = self._call(
                    self._stub.GetExperimentByName, pb.GetExperimentByNameRequest(display_name=name)
                )
        experiment_id = str(experiment.experiment_id)
        self._experiments[name] = experiment_id
        return experiment_id

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        note: str = "",
        dataset_id: str = "",
        dataset_name: str = "",
        model_type: str = "",
        pipeline_id: str = "",
        node_id: str = "",
        job_id: str = "",
        capture_environment: bool | None = None,
    ) -> Run:
        """Start a run (creating the experiment if needed) and make it the active run."""
        tag_texts = _text_entries(tags or {}, "tag", MAX_TAG_VALUE_LENGTH)
        experiment_id = self._experiment_id(experiment_name, create=True)
        capture = self._capture if capture_environment is None else capture_environment
        environment = _cached_environment() if capture else None
        request = pb.CreateRunRequest(
            parent=f"experiments/{experiment_id}",
            run=run_pb2.Run(
                run_name=run_name or "",
                note=note,
                tags=tag_texts,
                lineage=lineage_pb2.Lineage(
                    dataset_id=dataset_id,
                    dataset_name=dataset_name,
                    model_type=model_type,
                    pipeline_id=pipeline_id,
                    node_id=node_id,
                    job_id=job_id,
                ),
                user=environment.user if environment else "",
                environment=environment.to_proto() if environment else None,
            ),
            request_id=uuid.uuid4().hex,
        )
        run = Run.from_proto(self._call(self._stub.CreateRun, request))
        with self._lock:
            self._active = _ActiveRun(run)
        return run

    def end_run(self, status: str = "FINISHED", *, run_id: str | None = None) -> Run:
        """Flush pending metrics, then set the run's final status (FINISHED, FAILED, KILLED)."""
        value = STATUSES.get(status.upper())
        if value is None:
            raise InvalidArgumentError(
                f"unknown status {status!r}; use one of {', '.join(STATUSES)}"
            )
        name = self._run_name(run_id)
        self._sender.flush()
        message = self._call(
            self._stub.UpdateRun,
            pb.UpdateRunRequest(
                run=run_pb2.Run(name=name, status=value),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
        )
        with self._lock:
            if self._active is not None and self._active.name.endswith(message.run_id):
                self._active = None
        return Run.from_proto(message)

    @contextmanager
    def run(
        self,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        **lineage: Any,
    ) -> Iterator[Run]:
        """A run that ends FINISHED, or FAILED if the block raises (KILLED on Ctrl-C)."""
        run = self.start_run(experiment_name, run_name, tags, **lineage)
        try:
            yield run
        except KeyboardInterrupt:
            self.end_run("KILLED", run_id=run.run_id)
            raise
        except BaseException:
            self.end_run("FAILED", run_id=run.run_id)
            raise
        else:
            self.end_run("FINISHED", run_id=run.run_id)

    def get_run(self, run_id: str) -> Run:
        self.flush()
        return Run.from_proto(
            self._call(self._stub.GetRun, pb.GetRunRequest(name=self._run_name(run_id)))
        )

    def search_runs(
        self,
        experiment_name: str | Sequence[str] | None = None,
        filter_string: str = "",
        order_by: Sequence[str] | str | None = None,
        max_results: int = 1000,
        *,
        include_deleted: bool = False,
    ) -> list[Run]:
        """Runs matching the filter grammar, e.g. "params.model = 'xgb' AND metrics.acc > 0.9"."""
        self.flush()
        names = (
            [experiment_name] if isinstance(experiment_name, str) else list(experiment_name or [])
        )
        try:
            ids = [self._experiment_id(name, create=False) for name in names]
        except NotFoundError:
            return []
        order = order_by if isinstance(order_by, str) else ", ".join(order_by or [])
        runs: list[Run] = []
        token = ""
        while len(runs) < max_results:
            response = self._call(
                self._stub.SearchRuns,
                pb.SearchRunsRequest(
                    experiment_ids=ids,
                    filter=filter_string,
                    order_by=order,
                    page_size=min(1000, max_results - len(runs)),
                    page_token=token,
                    lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL
                    if include_deleted
                    else lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY,
                ),
            )
            runs.extend(Run.from_proto(r) for r in response.runs)
            token = response.next_page_token
            if not token:
                break
        return runs

    def compare_runs(
        self, run_ids: Sequence[str], metric_names: Sequence[str] | None = None
    ) -> Any:
        """Runs as rows; latest metrics (and params, as params.<key>) as columns.

        A pandas DataFrame when pandas is installed, a list of dicts otherwise.
        """
        runs = [self.get_run(run_id) for run_id in run_ids]
        metrics = (
            list(metric_names) if metric_names else sorted({k for r in runs for k in r.metrics})
        )
        params = sorted({k for r in runs for k in r.params})
        rows = []
        for run in runs:
            row: dict[str, Any] = {
                "run_id": run.run_id,
                "run_name": run.run_name,
                "status": run.status,
            }
            for key in metrics:
                row[key] = run.metrics.get(key, math.nan)
            for key in params:
                row[f"params.{key}"] = run.params.get(key)
            rows.append(row)
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows).set_index("run_id")

    def delete_run(self, run_id: str) -> None:
        self._call(self._stub.DeleteRun, pb.DeleteRunRequest(name=self._run_name(run_id)))

    def restore_run(self, run_id: str) -> Run:
        return Run.from_proto(
            self._call(self._stub.RestoreRun, pb.RestoreRunRequest(name=self._run_name(run_id)))
        )

    # ------------------------------------------------------------------ logging

    def log_params(self, params: Mapping[str, object], *, run_id: str | None = None) -> None:
        """Log hyperparameters. They are immutable: a different value for a logged key raises
        AlreadyExistsError naming the key and both values."""
        if not params:
            return
        texts = _text_entries(params, "param", MAX_PARAM_VALUE_LENGTH)
        self._call(
            self._stub.LogParams, pb.LogParamsRequest(run=self._run_name(run_id), params=texts)
        )

    def log_param(self, key: str, value: object, *, run_id: str | None = None) -> None:
        self.log_params({key: value}, run_id=run_id)

    def log_metrics(
        self,
        metrics: Mapping[str, object],
        step: int | None = None,
        *,
        run_id: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue metric values (sent in the background; see flush()).

        A key or value the tracker would refuse raises InvalidArgumentError here, and then
        none of this call's points is queued: one bad key never costs the good points."""
        run = self._run_name(run_id)
        when = timestamp_ms if timestamp_ms is not None else _now_ms()
        points = []
        for key, raw in metrics.items():
            _check_metric_key(key)
            value = _metric_value(key, raw)
            metric = metric_pb2.Metric(key=key, value=value, step=int(step or 0))
            metric.timestamp.FromMilliseconds(when)
            points.append(PendingPoint(run, metric))
        self._sender.add(points)

    def log_metric(
        self, key: str, value: object, step: int | None = None, *, run_id: str | None = None
    ) -> None:
        self.log_metrics({key: value}, step, run_id=run_id)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued metric point is stored; raise if a batch was refused."""
        self._sender.flush(timeout)

    def stream_metrics(
        self,
        points: Iterable[tuple[str, float, int] | tuple[str, float, int, int]],
        *,
        run_id: str | None = None,
        batch_size: int = 10_000,
        batch_id_prefix: str | None = None,
        attempts: int = 5,
    ) -> int:
        """Bulk-ingest (key, value, step[, timestamp_ms]) points over one client-streaming
        call; returns how many points the tracker holds from this call.

        Every batch's id is fixed before the first attempt (from batch_id_prefix when given,
        so a re-run of the same ingest is recognised too), and a broken stream is sent again
        whole: batches that already arrived are acknowledged without being stored twice.
        """
        run = self._run_name(run_id)
        batch_size = max(1, min(batch_size, MAX_POINTS_PER_BATCH))
        prefix = batch_id_prefix or uuid.uuid4().hex
        now = _now_ms()
        items = points if isinstance(points, list) else list(points)
        total = len(items)
        batches: list[pb.StreamMetricsRequest] = []
        # Columns, not a Metric message per point, built a column at a time: building,
        # sending and parsing them costs a fraction.
        for start in range(0, total, batch_size):
            chunk = items[start : start + batch_size]
            keys = [point[0] for point in chunk]
            index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
            for key in index:
                _check_metric_key(key)
            columns = metric_pb2.MetricPointColumns(keys=list(index))
            columns.key_indexes.extend(
                [0] * len(chunk) if len(index) == 1 else [index[key] for key in keys]
            )
            try:
                columns.values.extend([float(point[1]) for point in chunk])
                columns.steps.extend([int(point[2]) for point in chunk])
                columns.timestamp_ms.extend(
                    [int(point[3]) if len(point) > 3 else now for point in chunk]  # type: ignore[misc]
                )
            except (TypeError, ValueError) as error:
                raise InvalidArgumentError(
                    f"metric points are (key, value, step[, timestamp_ms]) with a number value "
                    f"and integer step and time: {error}",
                    reason="INVALID_POINT",
                ) from None
            batches.append(
                pb.StreamMetricsRequest(
                    run=run, batch_id=f"{prefix}-{len(batches)}", columns=columns
                )
            )
        for attempt in range(1, attempts + 1):
            try:
                response = self._stub.StreamMetrics(
                    iter(batches), timeout=self._timeout * 10, metadata=self._metadata
                )
                if not response.duplicate_batch_count and response.stored_point_count != total:
                    # A tracker that predates columnar batches would acknowledge them empty.
                    raise CairnError(
                        f"the tracker stored {response.stored_point_count} of {total} points: "
                        "is it older than this SDK?"
                    )
                return total
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE or attempt == attempts:  # type: ignore[attr-defined]
                    raise from_rpc_error(error) from None
                time.sleep(min(0.2 * 2**attempt, 5.0))
        return total

    def set_tags(self, tags: Mapping[str, object], *, run_id: str | None = None) -> None:
        texts = _text_entries(tags, "tag", MAX_TAG_VALUE_LENGTH)
        self._call(
            self._stub.SetRunTags, pb.SetRunTagsRequest(run=self._run_name(run_id), tags=texts)
        )

    def set_tag(self, key: str, value: object, *, run_id: str | None = None) -> None:
        self.set_tags({key: value}, run_id=run_id)

    def delete_tag(self, key: str, *, run_id: str | None = None) -> None:
        _check_key(key, "tag")
        self._call(
            self._stub.DeleteRunTag, pb.DeleteRunTagRequest(run=self._run_name(run_id), key=key)
        )

    def set_note(self, text: str, *, run_id: str | None = None) -> None:
        """Free text on the run, e.g. "PUBLISH: best model" or "BEST"."""
        self._call(
            self._stub.UpdateRun,
            pb.UpdateRunRequest(
                run=run_pb2.Run(name=self._run_name(run_id), note=text),
                update_mask=field_mask_pb2.FieldMask(paths=["note"]),
            ),
        )

    def get_metric_history(
        self, run_id: str, key: str, max_points: int | None = None
    ) -> MetricHistory:
        """Every point of a metric in step order, or about max_points of them (first, last,
        minimum and maximum of each stretch are kept): a sequence of MetricPoint, built as
        they are read; steps(), values() and timestamps_ms() give whole columns."""
        self.flush()
        pages: list[metric_pb2.MetricColumns] = []
        token = ""
        while True:
            response = self._call(
                self._stub.ListMetricHistory,
                pb.ListMetricHistoryRequest(
                    run=self._run_name(run_id),
                    metric_key=key,
                    max_points=max_points or 0,
                    page_size=100_000,
                    page_token=token,
                    columnar=True,
                ),
            )
            pages.append(response.columns)
            token = response.next_page_token
            if not token:
                return MetricHistory.from_columns(pages)

    # ------------------------------------------------------------------ artifacts

    def log_artifact(
        self,
        path: str | os.PathLike[str],
        artifact_type: str = "other",
        *,
        artifact_path: str | None = None,
        run_id: str | None = None,
        overwrite: bool = False,
    ) -> list[Artifact]:
        """Upload a file (or every file under a directory) to the run.

        artifact_type: model, plot, data, report, checkpoint or other. artifact_path is the
        destination inside the run (default: the file's or directory's name).
        """
        source = Path(path)
        type_value = ARTIFACT_TYPES.get(artifact_type.lower())
        if type_value is None:
            raise InvalidArgumentError(
                f"artifact_type {artifact_type!r}: use one of {', '.join(ARTIFACT_TYPES)}"
            )
        if not source.exists():
            raise FileNotFoundError(f"no such file or directory: {source}")
        run = self._run_name(run_id)
        destination = artifact_path if artifact_path is not None else source.name
        if source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file())
            targets = [
                (f, f"{destination}/{f.relative_to(source).as_posix()}".lstrip("/")) for f in files
            ]
        else:
            targets = [(source, destination)]
        return [self._upload(run, f, dest, type_value, overwrite) for f, dest in targets]

    def _upload(
        self, run: str, file: Path, destination: str, artifact_type: int, overwrite: bool
    ) -> Artifact:
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(UPLOAD_CHUNK), b""):
                digest.update(block)

        def messages() -> Iterator[pb.UploadArtifactRequest]:
            yield pb.UploadArtifactRequest(
                metadata=pb.UploadArtifactMetadata(
                    run=run,
                    path=destination,
                    artifact_type=artifact_type,  # type: ignore[arg-type]
                    overwrite=overwrite,
                    expected_sha256=digest.hexdigest(),
                )
            )
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(UPLOAD_CHUNK), b""):
                    yield pb.UploadArtifactRequest(chunk=block)

        return Artifact.from_proto(self._call(self._stub.UploadArtifact, messages()))

    def list_artifacts(self, run_id: str | None = None, prefix: str = "") -> list[Artifact]:
        artifacts: list[Artifact] = []
        token = ""
        while True:
            response = self._call(
                self._stub.ListArtifacts,
                pb.ListArtifactsRequest(
                    parent=self._run_name(run_id),
                    path_prefix=prefix,
                    page_size=1000,
                    page_token=token,
                ),
            )
            artifacts.extend(Artifact.from_proto(a) for a in response.artifacts)
            token = response.next_page_token
            if not token:
                return artifacts

    def download_artifact(
        self, run_id: str, path: str, destination: str | os.PathLike[str] = "."
    ) -> Path:
        """Download one artifact into `destination` (a directory, or a file path)."""
        target = Path(destination)
        if target.is_dir() or str(destination).endswith(os.sep):
            target = target / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        expected = ""
        try:
            stream = self._stub.DownloadArtifact(
                pb.DownloadArtifactRequest(run=self._run_name(run_id), path=path),
                timeout=self._timeout * 10,
                metadata=self._metadata,
            )
            with partial.open("wb") as handle:
                for message in stream:
                    if message.WhichOneof("payload") == "artifact":
                        expected = message.artifact.sha256
                    else:
                        digest.update(message.chunk)
                        handle.write(message.chunk)
        except grpc.RpcError as error:
            partial.unlink(missing_ok=True)
            raise from_rpc_error(error) from None
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise CairnError(f"artifact {path!r} arrived corrupted (sha256 mismatch)")
        partial.replace(target)
        return target

    # ------------------------------------------------------------------ admin

    def purge_deleted(
        self, older_than_seconds: float = 0, *, dry_run: bool = False
    ) -> pb.PurgeDeletedResponse:
        duration = duration_pb2.Duration()
        duration.FromMilliseconds(int(older_than_seconds * 1000))
        response: pb.PurgeDeletedResponse = self._call(
            self._stub.PurgeDeleted, pb.PurgeDeletedRequest(older_than=duration, dry_run=dry_run)
        )
        return response

    @property
    def stub(self) -> tracker_service_pb2_grpc.TrackerServiceStub:
        """The raw gRPC stub, for RPCs the SDK does not wrap."""
        return self._stub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Deliver pending metrics and close the channel."""
        if self._closed:
            return
        try:
            self._sender.flush()
        finally:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _at_exit(self, crashed: bool) -> None:
        """Process exit: deliver every queued point, then end a run left open."""
        if self._closed:
            return
        try:
            self._sender.flush(timeout=120)
            with self._lock:
                active = self._active
            if active is not None:
                self.end_run("FAILED" if crashed else "FINISHED", run_id=active.run.run_id)
        except Exception as error:
            print(f"cairn: could not finish at exit: {error}", file=sys.stderr)
        finally:
            self._closed = True
            self._channel.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_environment_cache: Any = None


def _cached_environment() -> Any:
    """Capture once per process: git, packages and machine do not change between runs."""
    global _environment_cache
    if _environment_cache is None:
        _environment_cache = capture_environment()
    return _environment_cache


# ---------------------------------------------------------------------- process exit

_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()
_crashed = False
_exit_hook_installed = False


def _register_for_exit(tracker: Tracker) -> None:
    global _exit_hook_installed
    _trackers.add(tracker)
    if _exit_hook_installed:
        return
    _exit_hook_installed = True
    previous_hook = sys.excepthook

    def record_crash(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        global _crashed
        _crashed = True
        previous_hook(exc_type, exc, tb)

    sys.excepthook = record_crash
    atexit.register(_flush_all_at_exit)


def _flush_all_at_exit() -> None:
    for tracker in list(_trackers):
        tracker._at_exit(_crashed)
