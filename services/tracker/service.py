"""The tracker's domain rules: validation, lifecycles, immutability, idempotency, paging.

No grpc and no SQL here: the servicer translates RPCs into these calls, the store persists.
Every method is synchronous; the servicer runs them on the server's worker threads.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from google.protobuf.timestamp_pb2 import Timestamp

from cairn.common.v1 import environment_pb2
from cairn.tracker.v1 import artifact_pb2, experiment_pb2, lifecycle_pb2, metric_pb2, run_pb2
from cairn.validation import (
    MAX_ENTRIES_PER_CALL,
    MAX_ID_LENGTH,
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_POINTS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TEXT_LENGTH,
    key_problem,
)
from services.common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.common.filtering import FieldRef, parse_field, parse_filter, parse_order_by
from services.common.paging import PageTokenCodec, coerce_page_size
from services.common.timeutil import now_ms
from services.tracker.artifact_store import (
    MAX_PATH_LENGTH,
    ArtifactStore,
    run_prefix,
    validate_artifact_path,
)
from services.tracker.names import (
    parse_experiment_name,
    parse_experiment_parent,
    parse_run_name,
    run_resource,
)
from services.tracker.store import convert
from services.tracker.store.store import (
    ExperimentQuery,
    Lifecycle,
    MetricPointTuple,
    RunChanges,
    RunKeys,
    RunQuery,
    RunState,
    RunTableData,
    TrackerStore,
    artifact_exists_error,
)

# Documented limits (README "Limits"); beyond them requests are INVALID_ARGUMENT. The SDK
# checks the same ones, from cairn.validation, before it sends anything.
MAX_FULL_VIEW_PAGE = 25
MAX_TABLE_COLUMNS = 100
DEFAULT_TABLE_LIMIT = 10_000
MAX_TABLE_LIMIT = 100_000
MAX_GROUP_BY = 5
MAX_AGGREGATES = 20
MAX_KEYS_PER_KIND = 1_000
AGGREGATE_FUNCTIONS = frozenset({"COUNT", "MIN", "MAX", "AVG", "STDDEV"})
DEFAULT_HISTORY_PAGE = 10_000
MAX_HISTORY_PAGE = 100_000
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
# google.protobuf.Duration's range: +-315,576,000,000 seconds (about 10,000 years).
MAX_DURATION_MS = 315_576_000_000_000

TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
ALLOWED_TRANSITIONS = {
    "QUEUED": frozenset({"RUNNING", "FAILED", "KILLED"}),
    "RUNNING": frozenset(TERMINAL_STATUSES),
}
RUN_UPDATE_FIELDS = ("run_name", "status", "note", "start_time", "end_time")
EXPERIMENT_UPDATE_FIELDS = ("display_name", "description", "tags")

_LIFECYCLES: dict[int, Lifecycle] = {
    lifecycle_pb2.LIFECYCLE_FILTER_UNSPECIFIED: "ACTIVE",
    lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY: "ACTIVE",
    lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY: "DELETED",
    lifecycle_pb2.LIFECYCLE_FILTER_ALL: "ALL",
}


def _check_text(value: str, field: str, limit: int, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; the limit is {limit}",
            field=field,
            reason="TOO_LONG",
            metadata={"limit": limit, "length": len(value)},
        )
    _check_no_nul(value, field)


def _check_no_nul(value: str, field: str, key: str | None = None) -> None:
    """PostgreSQL text cannot hold NUL: refuse it on every database alike."""
    if "\x00" in value:
        what = f"{field} {key!r}" if key is not None else field
        raise InvalidArgument(
            f"{what} must not contain NUL characters",
            field=field,
            reason="NUL_CHARACTER",
            metadata={"key": key} if key is not None else None,
        )


def _check_key(key: str, field: str) -> None:
    problem = key_problem(key)
    if problem is None:
        return
    if not key:
        raise InvalidArgument(f"{field} keys {problem}", field=field)
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"{field} key {key[:40]!r}... {problem}", field=field, reason="TOO_LONG"
        )
    raise InvalidArgument(f"{field} key {key!r} {problem}", field=field)


def _check_entries(entries: Mapping[str, str], field: str, value_limit: int) -> None:
    if len(entries) > MAX_ENTRIES_PER_CALL:
        raise InvalidArgument(
            f"at most {MAX_ENTRIES_PER_CALL} {field} per call, got {len(entries)}", field=field
        )
    for key, value in entries.items():
        _check_key(key, field)
        if len(value) > value_limit:
            raise InvalidArgument(
                f"{field} {key!r} has a value of {len(value)} characters; "
                f"the limit is {value_limit}",
                field=field,
                reason="VALUE_TOO_LONG",
                metadata={"key": key, "limit": value_limit, "length": len(value)},
            )
        _check_no_nul(value, field, key)


def _check_ids(ids: Sequence[str], field: str) -> None:
    if len(ids) > MAX_ENTRIES_PER_CALL:
        raise InvalidArgument(f"at most {MAX_ENTRIES_PER_CALL} {field}", field=field)
    for value in ids:
        _check_text(value, field, MAX_ID_LENGTH, required=True)


def _view(value: int, default: int) -> int:
    if value == run_pb2.RUN_VIEW_UNSPECIFIED:
        return default
    if value not in run_pb2.RunView.values():
        raise InvalidArgument(f"unknown view {value}", field="view")
    return value


def _lifecycle(value: int) -> Lifecycle:
    try:
        return _LIFECYCLES[value]
    except KeyError:
        raise InvalidArgument(
            f"unknown lifecycle_filter {value}", field="lifecycle_filter"
        ) from None


@dataclass(frozen=True)
class UploadTarget:
    run: RunState
    path: str
    artifact_type: str
    overwrite: bool
    expected_sha256: str


@dataclass(frozen=True)
class PurgeResult:
    experiment_count: int
    run_ids: list[str]
    freed_bytes: int


class TrackerService:
    def __init__(
        self, store: TrackerStore, artifacts: ArtifactStore, page_tokens: PageTokenCodec
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.page_tokens = page_tokens

    # ------------------------------------------------------------------ experiments

    def create_experiment(
        self, experiment: experiment_pb2.Experiment, request_id: str
    ) -> experiment_pb2.Experiment:
        _check_text(
            experiment.display_name, "experiment.display_name", MAX_NAME_LENGTH, required=True
        )
        _check_text(experiment.description, "experiment.description", MAX_TEXT_LENGTH)
        _check_entries(experiment.tags, "tags", MAX_TAG_VALUE_LENGTH)
        _check_text(request_id, "request_id", MAX_ID_LENGTH)
        return self.store.create_experiment(
            experiment.display_name.strip(),
            experiment.description,
            dict(experiment.tags),
            request_id,
            request_fingerprint(experiment.SerializeToString(deterministic=True)),
        )

    def get_experiment(self, name: str) -> experiment_pb2.Experiment:
        return self.store.get_experiment(parse_experiment_name(name))

    def get_experiment_by_name(self, display_name: str) -> experiment_pb2.Experiment:
        _check_text(display_name, "display_name", MAX_NAME_LENGTH, required=True)
        return self.store.get_experiment_by_name(display_name.strip())

    def list_experiments(
        self,
        page_size: int,
        page_token: str,
        filter_text: str,
        order_by: str,
        lifecycle_filter: int,
    ) -> tuple[list[experiment_pb2.Experiment], str]:
        lifecycle = _lifecycle(lifecycle_filter)
        order = parse_order_by(order_by or "create_time DESC")
        query_id = self.page_tokens.fingerprint("experiments", filter_text, order_by, lifecycle)
        page = self.store.list_experiments(
            ExperimentQuery(
                filter=parse_filter(filter_text),
                order=order,
                lifecycle=lifecycle,
                page_size=coerce_page_size(page_size),
                after=self.page_tokens.decode(page_token, query_id) if page_token else None,
            )
        )
        return page.items, self._token(page.next_position, query_id)

    def update_experiment(
        self, experiment: experiment_pb2.Experiment, mask: Sequence[str]
    ) -> experiment_pb2.Experiment:
        experiment_id = parse_experiment_name(experiment.name, "experiment.name")
        fields = _mask_fields(mask, EXPERIMENT_UPDATE_FIELDS, "update_mask")
        if not mask:
            fields = {f for f in ("display_name", "description") if getattr(experiment, f)}
            if experiment.tags:
                fields.add("tags")
        if not fields:
            raise InvalidArgument(
                "nothing to update: set update_mask or one of "
                + ", ".join(EXPERIMENT_UPDATE_FIELDS),
                field="update_mask",
            )
        if "display_name" in fields:
            _check_text(
                experiment.display_name, "experiment.display_name", MAX_NAME_LENGTH, required=True
            )
        if "description" in fields:
            _check_text(experiment.description, "experiment.description", MAX_TEXT_LENGTH)
        if "tags" in fields:
            _check_entries(experiment.tags, "tags", MAX_TAG_VALUE_LENGTH)
        return self.store.update_experiment(
            experiment_id,
            display_name=experiment.display_name.strip() if "display_name" in fields else None,
            description=experiment.description if "description" in fields else None,
            tags=dict(experiment.tags) if "tags" in fields else None,
        )

    def set_experiment_tags(self, experiment: str, tags: Mapping[str, str]) -> None:
        _check_entries(tags, "tags", MAX_TAG_VALUE_LENGTH)
        self.store.set_experiment_tags(parse_experiment_name(experiment, "experiment"), tags)

    def delete_experiment_tag(self, experiment: str, key: str) -> None:
        _check_key(key, "key")
        self.store.delete_experiment_tag(parse_experiment_name(experiment, "experiment"), key)

    def delete_experiment(self, name: str) -> None:
        self.store.set_experiment_deleted(parse_experiment_name(name), True)

    def restore_experiment(self, name: str) -> experiment_pb2.Experiment:
        experiment_id = parse_experiment_name(name)
        self.store.set_experiment_deleted(experiment_id, False)
        return self.store.get_experiment(experiment_id)

    # ------------------------------------------------------------------ runs

    def create_run(self, parent: str, run: run_pb2.Run, request_id: str) -> run_pb2.Run:
        experiment_id = parse_experiment_name(parent, "parent")
        status = (
            "RUNNING"
            if run.status == run_pb2.RUN_STATUS_UNSPECIFIED
            else convert.STATUS_FROM_PROTO.get(run.status, "")
        )
        if status not in ("RUNNING", "QUEUED"):
            raise InvalidArgument(
                f"a run starts RUNNING or QUEUED, not {status or f'unknown status {run.status}'}",
                field="run.status",
            )
        _check_text(run.run_name, "run.run_name", MAX_NAME_LENGTH)
        _check_text(run.note, "run.note", MAX_TEXT_LENGTH)
        _check_text(run.user, "run.user", MAX_NAME_LENGTH)
        _check_text(request_id, "request_id", MAX_ID_LENGTH)
        _check_entries(run.tags, "tags", MAX_TAG_VALUE_LENGTH)
        lineage = {
            field: getattr(run.lineage, field)
            for field in (
                "dataset_id",
                "dataset_name",
                "pipeline_id",
                "node_id",
                "job_id",
                "model_type",
            )
        }
        for field, value in lineage.items():
            _check_text(value, f"run.lineage.{field}", MAX_NAME_LENGTH)
        environment = run.environment if run.HasField("environment") else None
        if environment is not None:
            _check_environment(environment)
        start = _ms(run, "start_time")
        return self.store.create_run(
            experiment_id,
            run_name=run.run_name.strip(),
            status=status,
            start_time=start,
            note=run.note,
            user=run.user or (environment.user if environment is not None else ""),
            tags=dict(run.tags),
            lineage=lineage,
            environment=environment,
            request_id=request_id,
            fingerprint=request_fingerprint(
                parent.encode(), run.SerializeToString(deterministic=True)
            ),
        )

    def _run_id(self, name: str, field: str = "name") -> str:
        """The run id of a run resource name, checking the experiment when it is given."""
        parsed = parse_run_name(name, field)
        if parsed.experiment_id is not None:
            state = self.store.run_state(parsed.run_id)
            if state.experiment_id != parsed.experiment_id:
                raise NotFound(
                    f"run {parsed.run_id!r} is not in experiment {parsed.experiment_id!r}",
                    reason="RUN_NOT_FOUND",
                )
        return parsed.run_id

    def _run_state(self, name: str, field: str = "run") -> RunState:
        parsed = parse_run_name(name, field)
        state = self.store.run_state(parsed.run_id)
        if parsed.experiment_id is not None and state.experiment_id != parsed.experiment_id:
            raise NotFound(
                f"run {parsed.run_id!r} is not in experiment {parsed.experiment_id!r}",
                reason="RUN_NOT_FOUND",
            )
        return state

    def get_run(self, name: str, view: int) -> run_pb2.Run:
        parsed = parse_run_name(name)
        run = self.store.get_run(parsed.run_id, _view(view, run_pb2.RUN_VIEW_FULL))
        if parsed.experiment_id is not None and run.experiment_id != parsed.experiment_id:
            raise NotFound(
                f"run {parsed.run_id!r} is not in experiment {parsed.experiment_id!r}",
                reason="RUN_NOT_FOUND",
            )
        return run

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_text: str,
        order_by: str,
        page_size: int,
        page_token: str,
        lifecycle_filter: int,
        view: int,
    ) -> tuple[list[run_pb2.Run], str]:
        _check_ids(experiment_ids, "experiment_ids")
        lifecycle = _lifecycle(lifecycle_filter)
        ids = sorted(set(experiment_ids))
        query_id = self.page_tokens.fingerprint("runs", ids, filter_text, order_by, lifecycle)
        run_view = _view(view, run_pb2.RUN_VIEW_STANDARD)
        size = coerce_page_size(page_size)
        if run_view == run_pb2.RUN_VIEW_FULL:
            # Each run may carry megabytes of environment (pip freeze, git diff): keep a page
            # well inside the message size limit.
            size = min(size, MAX_FULL_VIEW_PAGE)
        page = self.store.search_runs(
            RunQuery(
                experiment_ids=ids,
                filter=parse_filter(filter_text),
                order=parse_order_by(order_by or "start_time DESC"),
                lifecycle=lifecycle,
                page_size=size,
                after=self.page_tokens.decode(page_token, query_id) if page_token else None,
                view=run_view,
            )
        )
        return page.items, self._token(page.next_position, query_id)

    def list_runs(
        self,
        parent: str,
        filter_text: str,
        order_by: str,
        page_size: int,
        page_token: str,
        lifecycle_filter: int,
        view: int,
    ) -> tuple[list[run_pb2.Run], str]:
        experiment_id = parse_experiment_parent(parent)
        if experiment_id is not None:
            self.store.get_experiment(experiment_id)  # NOT_FOUND for an unknown experiment
        return self.search_runs(
            [experiment_id] if experiment_id else [],
            filter_text,
            order_by,
            page_size,
            page_token,
            lifecycle_filter,
            view,
        )

    def query_run_table(
        self,
        experiment_ids: Sequence[str],
        filter_text: str,
        lifecycle_filter: int,
        columns: Sequence[str],
        order_by: str,
        limit: int,
    ) -> RunTableData:
        _check_ids(experiment_ids, "experiment_ids")
        if not columns:
            raise InvalidArgument("columns must name at least one field", field="columns")
        if len(columns) > MAX_TABLE_COLUMNS:
            raise InvalidArgument(
                f"at most {MAX_TABLE_COLUMNS} columns, got {len(columns)}", field="columns"
            )
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        fields = [parse_field(column, "columns") for column in columns]
        return self.store.query_run_table(
            sorted(set(experiment_ids)),
            parse_filter(filter_text),
            _lifecycle(lifecycle_filter),
            fields,
            parse_order_by(order_by or "start_time ASC"),
            coerce_page_size(limit, default=DEFAULT_TABLE_LIMIT, maximum=MAX_TABLE_LIMIT),
        )

    def aggregate_runs(
        self,
        experiment_ids: Sequence[str],
        filter_text: str,
        lifecycle_filter: int,
        group_by: Sequence[str],
        aggregates: Sequence[tuple[str, str]],
    ) -> list[tuple[list[str], list[float]]]:
        """aggregates: (function name COUNT|MIN|MAX|AVG|STDDEV, column or "")."""
        _check_ids(experiment_ids, "experiment_ids")
        if len(group_by) > MAX_GROUP_BY:
            raise InvalidArgument(f"at most {MAX_GROUP_BY} group_by fields", field="group_by")
        if not aggregates or len(aggregates) > MAX_AGGREGATES:
            raise InvalidArgument(
                f"between 1 and {MAX_AGGREGATES} aggregates are needed", field="aggregates"
            )
        groups = [parse_field(g, "group_by") for g in group_by]
        for group in groups:
            if group.kind in ("metrics",):
                raise InvalidArgument(
                    f"group_by {group}: group by attributes, params or tags, not metrics",
                    field="group_by",
                )
        plan: list[tuple[str, FieldRef | None]] = []
        for function, column in aggregates:
            if function not in AGGREGATE_FUNCTIONS:
                raise InvalidArgument(
                    f"unknown aggregate function {function!r}; known: "
                    + ", ".join(sorted(AGGREGATE_FUNCTIONS)),
                    field="aggregates.function",
                )
            if not column:
                if function != "COUNT":
                    raise InvalidArgument(
                        f"{function} needs a metrics.<key> column", field="aggregates.column"
                    )
                plan.append((function, None))
                continue
            parsed = parse_field(column, "aggregates.column")
            if parsed.kind != "metrics":
                raise InvalidArgument(
                    f"aggregates work on metrics.<key> columns, not {parsed}",
                    field="aggregates.column",
                )
            plan.append((function, parsed))
        return self.store.aggregate_runs(
            sorted(set(experiment_ids)),
            parse_filter(filter_text),
            _lifecycle(lifecycle_filter),
            groups,
            plan,
        )

    def list_run_keys(
        self, experiment_ids: Sequence[str], filter_text: str, lifecycle_filter: int
    ) -> RunKeys:
        _check_ids(experiment_ids, "experiment_ids")
        return self.store.list_run_keys(
            sorted(set(experiment_ids)),
            parse_filter(filter_text),
            _lifecycle(lifecycle_filter),
            MAX_KEYS_PER_KIND,
        )

    def update_run(self, run: run_pb2.Run, mask: Sequence[str]) -> run_pb2.Run:
        run_id = self._run_id(run.name, "run.name")
        fields = _mask_fields(mask, RUN_UPDATE_FIELDS, "update_mask")
        if not mask:
            fields = {f for f in ("run_name", "note") if getattr(run, f)}
            if run.status:
                fields.add("status")
            fields |= {f for f in ("start_time", "end_time") if run.HasField(f)}
        if not fields:
            raise InvalidArgument(
                "nothing to update: set update_mask or one of " + ", ".join(RUN_UPDATE_FIELDS),
                field="update_mask",
            )
        if "run_name" in fields:
            _check_text(run.run_name, "run.run_name", MAX_NAME_LENGTH, required=True)
        if "note" in fields:
            _check_text(run.note, "run.note", MAX_TEXT_LENGTH)
        new_status = None
        if "status" in fields:
            new_status = convert.STATUS_FROM_PROTO.get(run.status)
            if new_status is None:
                raise InvalidArgument("run.status must be set to a status", field="run.status")
        start = _ms(run, "start_time") if "start_time" in fields else None
        end = _ms(run, "end_time") if "end_time" in fields else None

        def decide(state: RunState) -> RunChanges:
            if state.lifecycle_state != "ACTIVE":
                raise FailedPrecondition(
                    f"run {state.run_id!r} is deleted; restore it before changing it",
                    reason="RUN_DELETED",
                )
            end_time = end
            if new_status is not None and new_status != state.status:
                allowed = ALLOWED_TRANSITIONS.get(state.status, frozenset())
                if new_status not in allowed:
                    raise FailedPrecondition(
                        f"run {state.run_id!r} is {state.status} and cannot become {new_status}"
                        + (
                            " (a terminal status is final)"
                            if state.status in TERMINAL_STATUSES
                            else ""
                        ),
                        reason="INVALID_STATUS_TRANSITION",
                        metadata={"from": state.status, "to": new_status},
                    )
                if new_status in TERMINAL_STATUSES and end_time is None and state.end_time is None:
                    end_time = now_ms()
            effective_start = start if start is not None else state.start_time
            effective_end = end_time if end_time is not None else state.end_time
            if effective_end is not None and effective_end < effective_start:
                raise InvalidArgument(
                    "end_time must not be before start_time", field="run.end_time"
                )
            return RunChanges(
                run_name=run.run_name.strip() if "run_name" in fields else None,
                status=new_status,
                note=run.note if "note" in fields else None,
                start_time=start,
                end_time=end_time,
            )

        return self.store.update_run(run_id, decide)

    def delete_run(self, name: str) -> None:
        self.store.set_run_deleted(self._run_id(name), True)

    def restore_run(self, name: str) -> run_pb2.Run:
        run_id = self._run_id(name)
        self.store.set_run_deleted(run_id, False)
        return self.store.get_run(run_id, run_pb2.RUN_VIEW_FULL)

    # ------------------------------------------------------------------ params, tags, metrics

    def log_params(self, run: str, params: Mapping[str, str]) -> int:
        _check_entries(params, "params", MAX_PARAM_VALUE_LENGTH)
        return self.store.log_params(self._run_id(run, "run"), params)

    def set_run_tags(self, run: str, tags: Mapping[str, str]) -> None:
        _check_entries(tags, "tags", MAX_TAG_VALUE_LENGTH)
        self.store.set_run_tags(self._run_id(run, "run"), tags)

    def delete_run_tag(self, run: str, key: str) -> None:
        _check_key(key, "key")
        self.store.delete_run_tag(self._run_id(run, "run"), key)

    def log_metrics(
        self,
        run: str,
        batch_id: str,
        metrics: Sequence[metric_pb2.Metric],
        columns: metric_pb2.MetricPointColumns | None = None,
    ) -> tuple[int, bool]:
        _check_text(batch_id, "batch_id", MAX_ID_LENGTH)
        count = len(metrics) + (0 if columns is None else len(columns.key_indexes))
        if count > MAX_POINTS_PER_BATCH:
            raise InvalidArgument(
                f"at most {MAX_POINTS_PER_BATCH} points per batch, got {count}",
                field="metrics" if columns is None else "columns",
            )
        points = metric_tuples(metrics)
        if columns is not None:
            points.extend(column_tuples(columns))
        return self.store.log_metrics(
            self._run_id(run, "run"), batch_id, points, points_fingerprint(points)
        )

    def metric_history(
        self,
        run: str,
        key: str,
        page_size: int,
        page_token: str,
        max_points: int,
        start_step: int,
        end_step: int,
        columnar: bool = False,
    ) -> tuple[list[metric_pb2.MetricPoint] | metric_pb2.MetricColumns, str, bool, int]:
        """(points, or with `columnar` the same as MetricColumns; next_page_token;
        downsampled; total points in range)."""
        _check_key(key, "metric_key")
        if max_points < 0:
            raise InvalidArgument("max_points must not be negative", field="max_points")
        run_id = self._run_id(run, "run")
        start, end = (
            (None, None) if (start_step == 0 and end_step == 0) else (start_step, end_step or None)
        )
        if start is not None and end is not None and end < start:
            raise InvalidArgument("end_step must not be below start_step", field="end_step")
        if max_points:
            max_points = min(max(max_points, 4), MAX_HISTORY_PAGE)
            total = self.store.count_metric_points(run_id, key, start, end)
            if total <= max_points:
                rows, _ = self.store.metric_history_page(
                    run_id, key, start_step=start, end_step=end, page_size=max_points, after=None
                )
                return _history(rows, columnar), "", False, total
            rows = self.store.downsampled_history(
                run_id, key, start_step=start, end_step=end, buckets=max_points // 4, total=total
            )
            return _history(rows, columnar), "", True, total
        query_id = self.page_tokens.fingerprint("history", run_id, key, start, end)
        size = coerce_page_size(page_size, default=DEFAULT_HISTORY_PAGE, maximum=MAX_HISTORY_PAGE)
        after: list[Any] | None = None
        counted: int | None = None
        if page_token:
            # [last step, last id, the range's size as counted for the first page]: later
            # pages report that count rather than count again (on PostgreSQL, counting a
            # fresh million-point metric took longer than reading a page of it). Tokens of
            # [last step, last id] alone, from earlier versions, are still served.
            after = self.page_tokens.decode(page_token, query_id)
            if len(after) == 3:
                counted = int(after.pop())
        rows, position = self.store.metric_history_page(
            run_id, key, start_step=start, end_step=end, page_size=size, after=after
        )
        if counted is not None:
            total = counted
        elif after is None and position is None:
            total = len(rows)  # a first page that is also the last holds the whole range
        else:
            total = self.store.count_metric_points(run_id, key, start, end)
        if position is not None:
            position = [*position, total]
        return _history(rows, columnar), self._token(position, query_id), False, total

    # ------------------------------------------------------------------ artifacts

    def begin_upload(
        self, run: str, path: str, artifact_type: int, overwrite: bool, expected_sha256: str
    ) -> UploadTarget:
        """Checks an upload before any content is read, so bad requests fail fast."""
        state = self._run_state(run, "metadata.run")
        if state.lifecycle_state != "ACTIVE":
            raise FailedPrecondition(f"run {state.run_id!r} is deleted", reason="RUN_DELETED")
        validated = validate_artifact_path(path)
        type_name = convert.ARTIFACT_TYPE_FROM_PROTO.get(
            artifact_type or artifact_pb2.ARTIFACT_TYPE_OTHER
        )
        if type_name is None:
            raise InvalidArgument(
                f"unknown artifact_type {artifact_type}", field="metadata.artifact_type"
            )
        expected = expected_sha256.lower()
        if expected and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
            raise InvalidArgument(
                "expected_sha256 must be 64 hex digits", field="metadata.expected_sha256"
            )
        return UploadTarget(state, validated, type_name, overwrite, expected)

    def finish_upload(
        self, target: UploadTarget, content: BinaryIO, size: int, sha256: str
    ) -> artifact_pb2.Artifact:
        """Stores spooled content under its digest (content-addressed within the run) and
        records path -> digest. Re-uploading identical content is a no-op."""
        if target.expected_sha256 and target.expected_sha256 != sha256:
            raise DataLoss(
                f"content digest {sha256} does not match expected_sha256 {target.expected_sha256}",
                reason="DIGEST_MISMATCH",
            )
        run = target.run
        resource = run_resource(run.experiment_id, run.run_id)
        existing = self.store.get_artifact(run.run_id, target.path)
        if existing is not None and existing.sha256 == sha256:
            return convert.artifact_to_proto(existing, resource)
        if existing is not None and not target.overwrite:
            raise artifact_exists_error(target.path, existing.sha256, sha256)
        key = blob_key(run.experiment_id, run.run_id, sha256)
        if not self.artifacts.exists(key):
            content.seek(0)
            self.artifacts.put(key, content, size)
        # The check above spares storing content that is bound to be refused; the store
        # decides again atomically, for uploads racing each other to the same path.
        row = self.store.save_artifact(
            run.run_id,
            target.path,
            target.artifact_type,
            size,
            sha256,
            overwrite=target.overwrite,
        )
        if not self.artifacts.exists(key):
            # A purge swept this content as an orphan between our check and our record: the
            # record now references it again, so store it again.
            content.seek(0)
            self.artifacts.put(key, content, size)
        return convert.artifact_to_proto(row, resource)

    def open_download(self, run: str, path: str) -> tuple[artifact_pb2.Artifact, Iterator[bytes]]:
        state = self._run_state(run, "run")
        validated = validate_artifact_path(path)
        row = self.store.get_artifact(state.run_id, validated)
        if row is None:
            raise NotFound(
                f"run {state.run_id!r} has no artifact {validated!r}",
                reason="ARTIFACT_NOT_FOUND",
                metadata={"path": validated},
            )
        chunks = self.artifacts.open_chunks(blob_key(state.experiment_id, state.run_id, row.sha256))
        return convert.artifact_to_proto(
            row, run_resource(state.experiment_id, state.run_id)
        ), chunks

    def list_artifacts(
        self, parent: str, path_prefix: str, page_size: int, page_token: str
    ) -> tuple[list[artifact_pb2.Artifact], str]:
        _check_text(path_prefix, "path_prefix", MAX_PATH_LENGTH)
        state = self._run_state(parent, "parent")
        query_id = self.page_tokens.fingerprint("artifacts", state.run_id, path_prefix)
        after = self.page_tokens.decode(page_token, query_id)[0] if page_token else None
        rows, last = self.store.list_artifacts(
            state.run_id, path_prefix, coerce_page_size(page_size), after
        )
        resource = run_resource(state.experiment_id, state.run_id)
        return (
            [convert.artifact_to_proto(r, resource) for r in rows],
            self._token([last] if last is not None else None, query_id),
        )

    # ------------------------------------------------------------------ purge

    def purge_deleted(
        self, older_than_ms: int, experiment_ids: Sequence[str], dry_run: bool
    ) -> PurgeResult:
        if older_than_ms < 0:
            raise InvalidArgument("older_than must not be negative", field="older_than")
        if older_than_ms > MAX_DURATION_MS:
            raise InvalidArgument(
                "older_than is beyond what a google.protobuf.Duration may hold (10,000 years)",
                field="older_than",
            )
        _check_ids(experiment_ids, "experiment_ids")
        deleted_before = now_ms() - older_than_ms
        if dry_run:
            plan = self.store.plan_purge(deleted_before, experiment_ids)
            freed = sum(self.artifacts.total_bytes(run_prefix(e, r)) for e, r in plan.runs)
            orphans = self.store.claim_orphans(deleted_before, experiment_ids, dry_run=True)
            freed += sum(size for *_, size in orphans)
            return PurgeResult(len(plan.experiment_ids), [r for _, r in plan.runs], freed)
        # Claim first (one transaction marks the rows PURGING, which nothing restores), so a
        # restore racing this purge either wins before the claim or is refused after it.
        plan = self.store.claim_purge(deleted_before, experiment_ids)
        freed = 0
        for experiment_id, run_id in plan.runs:
            # Content first, rows second: an interrupted purge leaves PURGING rows that the
            # next purge claims again, never rows-less content that nothing would ever free.
            freed += self.artifacts.delete_prefix(run_prefix(experiment_id, run_id))
        run_ids = self.store.purge_run_rows([run_id for _, run_id in plan.runs])
        purged_experiments = self.store.purge_experiment_rows(plan.experiment_ids)
        # Content that overwrites left behind in live runs, once it has been unreferenced for
        # longer than the cut-off (an upload in flight may still reuse fresher orphans).
        for experiment_id, run_id, sha256, _size in self.store.claim_orphans(
            deleted_before, experiment_ids, dry_run=False
        ):
            freed += self.artifacts.delete(blob_key(experiment_id, run_id, sha256))
        return PurgeResult(len(purged_experiments), run_ids, freed)

    def _token(self, position: list[object] | None, query_id: str) -> str:
        return self.page_tokens.encode(position, query_id) if position is not None else ""


def request_fingerprint(*parts: bytes) -> str:
    """Identity of a create request, so a reused request_id can be told from a retry."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def points_fingerprint(points: Sequence[MetricPointTuple]) -> str:
    """Identity of a metric batch: its (key, step, value) points in order. Timestamps are
    left out so re-sending the same measurements later is still recognised as a retry."""
    digest = hashlib.sha256()
    digest.update("\x00".join(key for key, _, _, _ in points).encode())
    digest.update(struct.pack(f"<{len(points)}q", *(step for _, _, step, _ in points)))
    digest.update(struct.pack(f"<{len(points)}d", *(value for _, value, _, _ in points)))
    return digest.hexdigest()


def blob_key(experiment_id: str, run_id: str, sha256: str) -> str:
    return f"{run_prefix(experiment_id, run_id)}/sha256/{sha256}"


def metric_tuples(metrics: Sequence[metric_pb2.Metric]) -> list[MetricPointTuple]:
    """Validates points and turns them into (key, value, step, timestamp_ms) tuples."""
    now = now_ms()
    points: list[MetricPointTuple] = []
    checked: set[str] = set()
    for metric in metrics:
        key = metric.key
        if key not in checked:
            _check_key(key, "metrics")
            checked.add(key)
        ts = metric.timestamp
        timestamp = _timestamp_ms(ts, "metrics.timestamp") if (ts.seconds or ts.nanos) else now
        points.append((key, metric.value, metric.step, timestamp))
    return points


def column_tuples(columns: metric_pb2.MetricPointColumns) -> list[MetricPointTuple]:
    """Validates columnar points and turns them into (key, value, step, timestamp_ms) tuples,
    column at a time: no Python work per point beyond building its tuple."""
    count = len(columns.key_indexes)
    if len(columns.steps) != count or len(columns.values) != count:
        raise InvalidArgument(
            f"columns.key_indexes, steps and values must be equally long; got {count}, "
            f"{len(columns.steps)} and {len(columns.values)}",
            field="columns",
        )
    if columns.timestamp_ms and len(columns.timestamp_ms) != count:
        raise InvalidArgument(
            f"columns.timestamp_ms must be empty or as long as the other columns ({count}); "
            f"got {len(columns.timestamp_ms)}",
            field="columns.timestamp_ms",
        )
    names = list(columns.keys)
    for name in set(names):
        _check_key(name, "columns.keys")
    if count == 0:
        return []
    indexes = list(columns.key_indexes)
    if min(indexes) < 0 or max(indexes) >= len(names):
        raise InvalidArgument(
            f"columns.key_indexes must lie in 0..{len(names) - 1} (the indexes of "
            f"columns.keys); got {min(indexes)} to {max(indexes)}",
            field="columns.key_indexes",
        )
    now = now_ms()
    if columns.timestamp_ms:
        stamps = list(columns.timestamp_ms)
        low, high = min(stamps), max(stamps)
        if low < MIN_TIMESTAMP_SECONDS * 1000 or high > MAX_TIMESTAMP_SECONDS * 1000 + 999:
            bad = low if low < MIN_TIMESTAMP_SECONDS * 1000 else high
            raise InvalidArgument(
                f"columns.timestamp_ms holds {bad}, not a valid time: it must lie between "
                "the years 1 and 9999",
                field="columns.timestamp_ms",
            )
        if 0 in stamps:
            stamps = [stamp or now for stamp in stamps]
    else:
        stamps = [now] * count
    keys = [names[0]] * count if len(names) == 1 else [names[i] for i in indexes]
    return list(zip(keys, columns.values, columns.steps, stamps, strict=True))


def _mask_fields(paths: Sequence[str], allowed: Sequence[str], field: str) -> set[str]:
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise InvalidArgument(
            f"{field} names fields that cannot be updated: {', '.join(unknown)}; "
            f"updatable: {', '.join(allowed)}",
            field=field,
            metadata={"unknown": ",".join(unknown)},
        )
    return set(paths)


def _ms(run: run_pb2.Run, field: str) -> int | None:
    if not run.HasField(field):
        return None
    return _timestamp_ms(getattr(run, field), f"run.{field}")


def _timestamp_ms(ts: Timestamp, field: str) -> int:
    """Epoch milliseconds of a Timestamp within the range google.protobuf.Timestamp allows
    (years 1 to 9999); beyond it the value would not even fit the 64-bit time columns."""
    if not (
        MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= ts.nanos < 1_000_000_000
    ):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (seconds {ts.seconds}, nanos {ts.nanos}): "
            "it must lie between the years 1 and 9999",
            field=field,
        )
    return int(ts.seconds * 1000 + ts.nanos // 1_000_000)


# Per-field limits of the captured environment (README "Limits"); the short ones match
# their columns, so no database ever sees a longer value.
ENVIRONMENT_LIMITS = {
    "git_commit": MAX_NAME_LENGTH,
    "git_branch": MAX_NAME_LENGTH,
    "python_version": MAX_NAME_LENGTH,
    "hostname": MAX_NAME_LENGTH,
    "platform": MAX_NAME_LENGTH,
    "user": MAX_NAME_LENGTH,
    "git_remote": MAX_TEXT_LENGTH,
    "command": MAX_TEXT_LENGTH,
    "device_info": MAX_TEXT_LENGTH,
    "git_diff": 1_000_000,
    "pip_freeze": 1_000_000,
}


def _check_environment(env: environment_pb2.Environment) -> None:
    for descriptor, value in env.ListFields():
        if isinstance(value, str):
            limit = ENVIRONMENT_LIMITS[descriptor.name]
            _check_text(value, f"run.environment.{descriptor.name}", limit)


def _history(
    rows: convert.HistoryColumns, columnar: bool
) -> list[metric_pb2.MetricPoint] | metric_pb2.MetricColumns:
    return convert.metric_columns(rows) if columnar else convert.metric_points(rows)
