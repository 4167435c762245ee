"""The tracker's persistence: every query and write, in short transactions.

Returns proto messages (built by convert.py) or small records; raises domain errors. Rules
that need the current state atomically (status transitions, param immutability, version
numbers, idempotent batches) run inside the write transaction that applies them.
"""

from __future__ import annotations

import decimal
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import (
    Numeric,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from cairn.common.v1 import environment_pb2
from cairn.tracker.v1 import experiment_pb2, run_pb2
from services.common.db import Database, driver_cursor, fetch_tuples
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.filtering import FieldRef, Node, OrderKey
from services.common.sqlfilter import keyset_after, order_clauses, select_sort_values
from services.common.timeutil import ms_to_timestamp, now_ms
from services.tracker.store import convert
from services.tracker.store.convert import HistoryColumns
from services.tracker.store.models import (
    ArtifactOrphanRow,
    ArtifactRow,
    ExperimentRow,
    ExperimentTagRow,
    LatestMetricRow,
    MetricBatchRow,
    MetricRow,
    ModelVersionCounterRow,
    ParamRow,
    RunEnvironmentRow,
    RunRow,
    RunTagRow,
    StoredArtifact,
    table_of,
)
from services.tracker.store.search import (
    apply_experiment_order,
    compile_experiment_filter,
    compile_run_filter,
    join_run_values,
    plan_run_query,
)

Lifecycle = Literal["ACTIVE", "DELETED", "ALL"]
MetricPointTuple = tuple[str, float, int, int]  # key, value, step, timestamp_ms
T = TypeVar("T")

_runs = table_of(RunRow)
_experiments = table_of(ExperimentRow)
_metrics = table_of(MetricRow)
_latest = table_of(LatestMetricRow)
_params = table_of(ParamRow)
_run_tags = table_of(RunTagRow)
_artifacts = table_of(ArtifactRow)
_batches = table_of(MetricBatchRow)

# Above this many points per batch, PostgreSQL ingest switches from INSERT to COPY.
COPY_THRESHOLD = 64


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RunState:
    """What the hot paths and lifecycle rules need to know about a run."""

    run_id: str
    experiment_id: str
    status: str
    lifecycle_state: str
    start_time: int
    end_time: int | None


@dataclass(frozen=True)
class RunChanges:
    run_name: str | None = None
    status: str | None = None
    note: str | None = None
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True)
class RunQuery:
    experiment_ids: Sequence[str]
    filter: Node | None
    order: Sequence[OrderKey]
    lifecycle: Lifecycle
    page_size: int
    after: Sequence[Any] | None
    view: int


@dataclass(frozen=True)
class ExperimentQuery:
    filter: Node | None
    order: Sequence[OrderKey]
    lifecycle: Lifecycle
    page_size: int
    after: Sequence[Any] | None


@dataclass
class Page(Generic[T]):
    items: list[T]
    # Sort-key values of the last item when more items follow, else None.
    next_position: list[Any] | None


@dataclass
class ColumnData:
    name: str
    kind: Literal["number", "text"]
    numbers: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    present: list[bool] = field(default_factory=list)

    @classmethod
    def of_numbers(
        cls, name: str, values: Sequence[Any], present: Sequence[bool] | None = None
    ) -> ColumnData:
        """`present` defaults to "not NULL"; a metric whose latest value is NaN (NULL in the
        database) is present with a NaN."""
        return cls(
            name,
            "number",
            numbers=[math.nan if v is None else float(v) for v in values],
            present=list(present) if present is not None else [v is not None for v in values],
        )

    @classmethod
    def of_texts(cls, name: str, values: Sequence[Any]) -> ColumnData:
        return cls(
            name,
            "text",
            texts=["" if v is None else _group_text(v) for v in values],
            present=[v is not None for v in values],
        )


@dataclass
class RunTableData:
    run_ids: list[str]
    experiment_ids: list[str]
    truncated: bool
    columns: list[ColumnData] = field(default_factory=list)


@dataclass
class RunKeys:
    run_count: int = 0
    # (key, runs with it, distinct values among them)
    params: list[tuple[str, int, int]] = field(default_factory=list)
    metrics: list[tuple[str, int, int]] = field(default_factory=list)
    tags: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ParamConflict:
    key: str
    old_value: str
    new_value: str


def _group_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sample_stddev(n: int, squared_deviations: Any) -> float:
    """From the count and the sum of squared deviations from the mean (a float, or an exact
    Decimal from PostgreSQL, which may exceed the range of a float); NaN below 2 values."""
    if n < 2 or squared_deviations is None:
        return math.nan
    if isinstance(squared_deviations, decimal.Decimal):
        if squared_deviations.is_nan():
            return math.nan
        return float((max(squared_deviations, decimal.Decimal(0)) / (n - 1)).sqrt())
    return math.sqrt(max(float(squared_deviations), 0.0) / (n - 1))


def _check_replay(request_id: str, stored: str | None, fingerprint: str) -> None:
    """AIP-155: a retry carries the same request; another request under the key is refused."""
    if stored is not None and stored != fingerprint:
        raise InvalidArgument(
            f"request_id {request_id!r} was already used for a different request",
            field="request_id",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": request_id},
        )


def _shorten(value: str, limit: int = 200) -> str:
    return value if len(value) <= limit else value[:limit] + f"... ({len(value)} characters)"


def param_conflict_error(conflicts: Sequence[ParamConflict]) -> AlreadyExists:
    first = conflicts[0]
    described = "; ".join(
        f"{c.key!r} is {_shorten(c.old_value)!r}, not {_shorten(c.new_value)!r}" for c in conflicts
    )
    return AlreadyExists(
        f"params are immutable once logged: {described}",
        reason="PARAM_IMMUTABLE",
        metadata={
            "key": first.key,
            "old_value": _shorten(first.old_value, 1000),
            "new_value": _shorten(first.new_value, 1000),
            "keys": ",".join(c.key for c in conflicts),
        },
    )


def artifact_exists_error(path: str, sha256: str, new_sha256: str) -> AlreadyExists:
    return AlreadyExists(
        f"artifact {path!r} already exists with other content "
        f"(sha256 {sha256}); set overwrite to replace it",
        reason="ARTIFACT_EXISTS",
        metadata={"path": path, "sha256": sha256, "new_sha256": new_sha256},
    )


@dataclass
class PurgePlan:
    experiment_ids: list[str] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (experiment_id, run_id)


def _lifecycle_condition(column: Any, lifecycle: Lifecycle) -> Any:
    return column == lifecycle if lifecycle != "ALL" else literal_column("1") == 1


def _parse_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_RUN_STATE = select(
    _runs.c.run_id,
    _runs.c.experiment_id,
    _runs.c.status,
    _runs.c.lifecycle_state,
    _runs.c.start_time,
    _runs.c.end_time,
).where(_runs.c.run_id == bindparam("run_id"))


class TrackerStore:
    def __init__(self, database: Database, artifact_uri_for: Callable[[str, str], str]) -> None:
        self.db = database
        self._artifact_uri_for = artifact_uri_for
        # The metric write path's statements, built once: building an upsert (its `excluded`
        # columns above all) cost more than executing it, for a single-point LogMetrics.
        claim = self.db.insert(_batches)
        self._claim_batch = claim.on_conflict_do_nothing(
            index_elements=[_batches.c.run_id, _batches.c.batch_id]
        ).returning(_batches.c.batch_id)
        upsert = self.db.insert(_latest)
        excluded = upsert.excluded
        self._upsert_latest = upsert.on_conflict_do_update(
            index_elements=[_latest.c.run_id, _latest.c.key],
            set_={"value": excluded.value, "step": excluded.step, "timestamp": excluded.timestamp},
            where=or_(
                excluded.step > _latest.c.step,
                and_(excluded.step == _latest.c.step, excluded.timestamp >= _latest.c.timestamp),
            ),
        )

    # ------------------------------------------------------------------ experiments

    def create_experiment(
        self,
        display_name: str,
        description: str,
        tags: Mapping[str, str],
        request_id: str,
        fingerprint: str,
    ) -> experiment_pb2.Experiment:
        if request_id:
            existing = self._experiment_by_request(request_id, fingerprint)
            if existing is not None:
                return existing
        experiment_id = new_id()
        now = now_ms()
        try:
            with self.db.write() as session:
                session.add(
                    ExperimentRow(
                        experiment_id=experiment_id,
                        display_name=display_name,
                        description=description,
                        lifecycle_state="ACTIVE",
                        create_time=now,
                        update_time=now,
                        request_id=request_id or None,
                        request_fingerprint=fingerprint if request_id else None,
                    )
                )
                session.flush()
                session.add_all(
                    ExperimentTagRow(experiment_id=experiment_id, key=k, value=v)
                    for k, v in sorted(tags.items())
                )
        except IntegrityError:
            if request_id:
                existing = self._experiment_by_request(request_id, fingerprint)
                if existing is not None:
                    return existing
            raise AlreadyExists(
                f"an experiment named {display_name!r} already exists",
                reason="EXPERIMENT_EXISTS",
                metadata={"display_name": display_name},
            ) from None
        return self.get_experiment(experiment_id)

    def _experiment_by_request(
        self, request_id: str, fingerprint: str
    ) -> experiment_pb2.Experiment | None:
        with self.db.read() as session:
            found = session.execute(
                select(_experiments.c.experiment_id, _experiments.c.request_fingerprint).where(
                    _experiments.c.request_id == request_id
                )
            ).first()
        if found is None:
            return None
        _check_replay(request_id, found.request_fingerprint, fingerprint)
        return self.get_experiment(found.experiment_id)

    def get_experiment(self, experiment_id: str) -> experiment_pb2.Experiment:
        with self.db.read() as session:
            row = session.get(ExperimentRow, experiment_id)
            if row is None:
                raise NotFound(
                    f"experiment {experiment_id!r} not found",
                    reason="EXPERIMENT_NOT_FOUND",
                    metadata={"experiment_id": experiment_id},
                )
            return self._experiments_to_proto(session, [row])[0]

    def get_experiment_by_name(self, display_name: str) -> experiment_pb2.Experiment:
        with self.db.read() as session:
            row = session.scalars(
                select(ExperimentRow).where(ExperimentRow.display_name == display_name)
            ).first()
            if row is None:
                raise NotFound(
                    f"no experiment named {display_name!r}",
                    reason="EXPERIMENT_NOT_FOUND",
                    metadata={"display_name": display_name},
                )
            return self._experiments_to_proto(session, [row])[0]

    def _experiments_to_proto(
        self, session: Session, rows: Sequence[ExperimentRow]
    ) -> list[experiment_pb2.Experiment]:
        ids = [r.experiment_id for r in rows]
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        counts: dict[str, int] = {}
        if ids:
            for experiment_id, key, value in session.execute(
                select(
                    ExperimentTagRow.experiment_id, ExperimentTagRow.key, ExperimentTagRow.value
                ).where(ExperimentTagRow.experiment_id.in_(ids))
            ):
                tags[experiment_id][key] = value
            counts = dict(
                session.execute(  # type: ignore[arg-type]
                    select(_runs.c.experiment_id, func.count())
                    .where(_runs.c.experiment_id.in_(ids), _runs.c.lifecycle_state == "ACTIVE")
                    .group_by(_runs.c.experiment_id)
                ).all()
            )
        return [
            convert.experiment_to_proto(r, tags[r.experiment_id], counts.get(r.experiment_id, 0))
            for r in rows
        ]

    def list_experiments(self, query: ExperimentQuery) -> Page[experiment_pb2.Experiment]:
        columns = apply_experiment_order(query.order)
        statement = (
            select(ExperimentRow, *select_sort_values(columns))
            .where(_lifecycle_condition(_experiments.c.lifecycle_state, query.lifecycle))
            .where(compile_experiment_filter(query.filter))
            .order_by(*order_clauses(columns))
            .limit(query.page_size + 1)
        )
        if query.after is not None:
            statement = statement.where(keyset_after(columns, query.after))
        with self.db.read() as session:
            result = session.execute(statement).all()
            page = result[: query.page_size]
            items = self._experiments_to_proto(session, [r[0] for r in page])
        return Page(items, _next_position(result, query.page_size, len(columns)))

    def update_experiment(
        self,
        experiment_id: str,
        *,
        display_name: str | None,
        description: str | None,
        tags: Mapping[str, str] | None,
    ) -> experiment_pb2.Experiment:
        try:
            with self.db.write() as session:
                # Locked: concurrent updates replace the tags one after the other.
                row = session.get(ExperimentRow, experiment_id, with_for_update=True)
                if row is None:
                    raise NotFound(
                        f"experiment {experiment_id!r} not found", reason="EXPERIMENT_NOT_FOUND"
                    )
                if display_name is not None:
                    row.display_name = display_name
                if description is not None:
                    row.description = description
                if tags is not None:
                    session.execute(
                        delete(ExperimentTagRow).where(
                            ExperimentTagRow.experiment_id == experiment_id
                        )
                    )
                    session.add_all(
                        ExperimentTagRow(experiment_id=experiment_id, key=k, value=v)
                        for k, v in sorted(tags.items())
                    )
                row.update_time = now_ms()
        except IntegrityError:
            raise AlreadyExists(
                f"an experiment named {display_name!r} already exists",
                reason="EXPERIMENT_EXISTS",
                metadata={"display_name": display_name or ""},
            ) from None
        return self.get_experiment(experiment_id)

    def set_experiment_deleted(self, experiment_id: str, deleted: bool) -> None:
        """Soft-delete (or restore) an experiment together with the runs it hides."""
        now = now_ms()
        with self.db.write() as session:
            row = session.get(ExperimentRow, experiment_id, with_for_update=True)
            if row is None:
                raise NotFound(
                    f"experiment {experiment_id!r} not found", reason="EXPERIMENT_NOT_FOUND"
                )
            if row.lifecycle_state == "PURGING" and not deleted:
                raise FailedPrecondition(
                    f"experiment {experiment_id!r} is being purged and can no longer be restored",
                    reason="EXPERIMENT_PURGING",
                    metadata={"experiment_id": experiment_id},
                )
            if deleted:
                if row.lifecycle_state != "ACTIVE":
                    raise FailedPrecondition(
                        f"experiment {experiment_id!r} is already deleted",
                        reason="EXPERIMENT_DELETED",
                    )
                row.lifecycle_state, row.delete_time = "DELETED", now
                session.execute(
                    update(RunRow)
                    .where(
                        RunRow.experiment_id == experiment_id, RunRow.lifecycle_state == "ACTIVE"
                    )
                    .values(
                        lifecycle_state="DELETED",
                        delete_time=now,
                        deleted_with_experiment=True,
                        update_time=now,
                    )
                )
            else:
                if row.lifecycle_state == "ACTIVE":
                    raise FailedPrecondition(
                        f"experiment {experiment_id!r} is not deleted",
                        reason="EXPERIMENT_NOT_DELETED",
                    )
                row.lifecycle_state, row.delete_time = "ACTIVE", None
                session.execute(
                    update(RunRow)
                    .where(
                        RunRow.experiment_id == experiment_id,
                        RunRow.deleted_with_experiment,
                        # Never a run that a purge has claimed (PURGING): it is going away.
                        RunRow.lifecycle_state == "DELETED",
                    )
                    .values(
                        lifecycle_state="ACTIVE",
                        delete_time=None,
                        deleted_with_experiment=False,
                        update_time=now,
                    )
                )
            row.update_time = now

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        experiment_id: str,
        *,
        run_name: str,
        status: str,
        start_time: int | None,
        note: str,
        user: str,
        tags: Mapping[str, str],
        lineage: Mapping[str, str],
        environment: environment_pb2.Environment | None,
        request_id: str,
        fingerprint: str,
    ) -> run_pb2.Run:
        if request_id:
            existing = self._run_by_request(request_id, fingerprint)
            if existing is not None:
                return existing
        run_id = new_id()
        now = now_ms()
        try:
            with self.db.write() as session:
                # FOR SHARE (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers):
                # a concurrent DeleteExperiment (FOR UPDATE) waits for this run to commit and
                # then deletes it too, or this waits and sees the experiment deleted.
                experiment = session.get(
                    ExperimentRow, experiment_id, with_for_update={"read": True}
                )
                if experiment is None:
                    raise NotFound(
                        f"experiment {experiment_id!r} not found",
                        reason="EXPERIMENT_NOT_FOUND",
                        metadata={"experiment_id": experiment_id},
                    )
                if experiment.lifecycle_state != "ACTIVE":
                    raise FailedPrecondition(
                        f"experiment {experiment.display_name!r} is deleted; restore it first",
                        reason="EXPERIMENT_DELETED",
                    )
                version = 0
                if lineage.get("dataset_id") or lineage.get("model_type"):
                    version = self._next_version(
                        session, lineage.get("dataset_id", ""), lineage.get("model_type", "")
                    )
                session.add(
                    RunRow(
                        run_id=run_id,
                        experiment_id=experiment_id,
                        run_name=run_name or f"run-{run_id[:8]}",
                        status=status,
                        start_time=start_time if start_time is not None else now,
                        create_time=now,
                        update_time=now,
                        lifecycle_state="ACTIVE",
                        deleted_with_experiment=False,
                        note=note,
                        user=user,
                        version=version,
                        request_id=request_id or None,
                        request_fingerprint=fingerprint if request_id else None,
                        **{k: lineage.get(k, "") for k in _LINEAGE_FIELDS},
                    )
                )
                session.flush()
                if environment is not None:
                    session.add(convert.environment_from_proto(run_id, environment))
                if tags:
                    session.execute(
                        insert(_run_tags),
                        [{"run_id": run_id, "key": k, "value": v} for k, v in sorted(tags.items())],
                    )
        except IntegrityError:
            if request_id:
                existing = self._run_by_request(request_id, fingerprint)
                if existing is not None:
                    return existing
            raise
        return self.get_run(run_id, run_pb2.RUN_VIEW_FULL)

    def _next_version(self, session: Session, dataset_id: str, model_type: str) -> int:
        """Upsert-and-increment: the counter row's lock serializes concurrent creators, and
        the increment rolls back with a failed creation, so numbers stay gap-free."""
        table = table_of(ModelVersionCounterRow)
        statement = (
            self.db.insert(table)
            .values(dataset_id=dataset_id, model_type=model_type, last_version=1)
            .on_conflict_do_update(
                index_elements=[table.c.dataset_id, table.c.model_type],
                set_={"last_version": table.c.last_version + 1},
            )
            .returning(table.c.last_version)
        )
        return int(session.execute(statement).scalar_one())

    def _run_by_request(self, request_id: str, fingerprint: str) -> run_pb2.Run | None:
        with self.db.read() as session:
            found = session.execute(
                select(_runs.c.run_id, _runs.c.request_fingerprint).where(
                    _runs.c.request_id == request_id
                )
            ).first()
        if found is None:
            return None
        _check_replay(request_id, found.request_fingerprint, fingerprint)
        return self.get_run(found.run_id, run_pb2.RUN_VIEW_FULL)

    def run_state(self, run_id: str, session: Session | None = None) -> RunState:
        if session is None:
            with self.db.read() as own:
                row = own.execute(_RUN_STATE, {"run_id": run_id}).first()
        else:
            row = session.execute(_RUN_STATE, {"run_id": run_id}).first()
        if row is None:
            raise NotFound(
                f"run {run_id!r} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        return RunState(*row)

    def get_run(self, run_id: str, view: int) -> run_pb2.Run:
        with self.db.read() as session:
            row = session.get(RunRow, run_id)
            if row is None:
                raise NotFound(
                    f"run {run_id!r} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
                )
            return self._runs_to_proto(session, [row], view)[0]

    def _runs_to_proto(
        self, session: Session, rows: Sequence[RunRow], view: int
    ) -> list[run_pb2.Run]:
        runs = [
            convert.run_to_proto(r, self._artifact_uri_for(r.experiment_id, r.run_id)) for r in rows
        ]
        if view == run_pb2.RUN_VIEW_BASIC or not runs:
            return runs
        by_id = {run.run_id: run for run in runs}
        ids = list(by_id)
        # Core rows, not ORM objects, and maps filled a run at a time: a search page of 100
        # runs carries about 1,500 of these values.
        for table, target in ((_params, "params"), (_run_tags, "tags")):
            values: dict[str, dict[str, str]] = {}
            for run_id, key, value in session.execute(
                select(table.c.run_id, table.c.key, table.c.value).where(
                    self._one_of(table.c.run_id, ids)
                )
            ):
                values.setdefault(run_id, {})[key] = value
            for run_id, entries in values.items():
                getattr(by_id[run_id], target).update(entries)
        latest = _latest.c
        for run_id, key, value, step, timestamp in session.execute(
            select(latest.run_id, latest.key, latest.value, latest.step, latest.timestamp)
            .where(self._one_of(latest.run_id, ids))
            .order_by(latest.run_id, latest.key)
        ):
            metric = by_id[run_id].metrics.add(
                key=key, value=convert.metric_value_from_db(value), step=step
            )
            ms_to_timestamp(timestamp, metric.timestamp)
        if view == run_pb2.RUN_VIEW_FULL:
            for artifact in session.scalars(
                select(ArtifactRow)
                .where(self._one_of(ArtifactRow.run_id, ids))
                .order_by(ArtifactRow.path)
            ):
                run = by_id[artifact.run_id]
                run.artifacts.append(convert.artifact_to_proto(artifact, run.name))
            for env in session.scalars(
                select(RunEnvironmentRow).where(self._one_of(RunEnvironmentRow.run_id, ids))
            ):
                by_id[env.run_id].environment.CopyFrom(convert.environment_to_proto(env))
        return runs

    def _one_of(self, column: Any, ids: Sequence[str]) -> Any:
        """`column IN ids`; on PostgreSQL `= ANY(array)`, one parameter whatever the count:
        a hundred bound parameters (a search page's runs) cost more to render, convert and
        send than the query took."""
        if self.db.dialect == "postgresql":
            return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(Text)))
        return column.in_(ids)

    def search_runs(self, query: RunQuery) -> Page[run_pb2.Run]:
        """Late materialization: the first query picks the page reading only what the filter
        and the sort need (run ids and sort values); the page's runs are read afterwards. A
        sort then carries ids, not whole rows, and an index can serve it."""
        chosen: Select[Any] = select(_runs.c.run_id)
        chosen, columns, where = plan_run_query(chosen, query.order, query.filter)
        chosen = (
            chosen.add_columns(*select_sort_values(columns))
            .where(_lifecycle_condition(_runs.c.lifecycle_state, query.lifecycle))
            .where(where)
            .order_by(*order_clauses(columns))
            .limit(query.page_size + 1)
        )
        if query.experiment_ids:
            chosen = chosen.where(_runs.c.experiment_id.in_(list(query.experiment_ids)))
        if query.after is not None:
            chosen = chosen.where(keyset_after(columns, query.after))
        with self.db.read() as session:
            result = session.execute(chosen).all()
            page_ids = [r[0] for r in result[: query.page_size]]
            rows = {
                row.run_id: row
                for row in session.scalars(
                    select(RunRow).where(self._one_of(_runs.c.run_id, page_ids))
                )
            }
            # A run purged between the two statements (each its own snapshot under READ
            # COMMITTED) is left out of the page; the page token still follows the last
            # picked run.
            items = self._runs_to_proto(
                session, [rows[i] for i in page_ids if i in rows], query.view
            )
        return Page(items, _next_position(result, query.page_size, len(columns)))

    def query_run_table(
        self,
        experiment_ids: Sequence[str],
        filter_node: Node | None,
        lifecycle: Lifecycle,
        fields: Sequence[FieldRef],
        order: Sequence[OrderKey],
        limit: int,
    ) -> RunTableData:
        """Runs matching a filter with the chosen values, pivoted by the database.

        Late materialization: an inner query picks the rows (filter, order, limit) reading
        only what the filter and the sort need; the value columns are joined for those rows
        alone. A top 10 of 10,000 runs then joins its params for 10 runs, not 10,000."""
        chosen: Select[Any] = select(_runs.c.run_id)
        chosen, sort, where = plan_run_query(chosen, order, filter_node)
        clauses = order_clauses(sort)
        chosen = (
            chosen.add_columns(func.row_number().over(order_by=clauses).label("row_rank"))
            .where(_lifecycle_condition(_runs.c.lifecycle_state, lifecycle))
            .where(where)
            .order_by(*clauses)
            .limit(limit + 1)
        )
        if experiment_ids:
            chosen = chosen.where(_runs.c.experiment_id.in_(list(experiment_ids)))
        picked = chosen.subquery("picked")
        statement: Select[Any] = select(_runs.c.run_id, _runs.c.experiment_id).join(
            picked, picked.c.run_id == _runs.c.run_id
        )
        statement, values = join_run_values(statement, fields, "columns")
        selected: list[Any] = []
        for column in values:
            number = column.kind == "number"
            selected.append(self._clean_number(column.value) if number else column.value)
            if column.kind == "param":
                selected.append(column.number)
            elif column.present is not None:
                selected.append(column.present)
        statement = statement.add_columns(*selected).order_by(picked.c.row_rank)
        with self.db.read() as session:
            rows = session.execute(statement).all()
        truncated = len(rows) > limit
        rows = rows[:limit]
        table = RunTableData(
            run_ids=[r[0] for r in rows], experiment_ids=[r[1] for r in rows], truncated=truncated
        )
        position = 2
        for column in values:
            raw = [r[position] for r in rows]
            if column.kind == "param":
                parsed = [r[position + 1] for r in rows]
                position += 2
                numeric = any(t is not None for t in raw) and all(
                    p is not None for p, t in zip(parsed, raw, strict=True) if t is not None
                )
                table.columns.append(
                    ColumnData.of_numbers(column.name, parsed)
                    if numeric
                    else ColumnData.of_texts(column.name, raw)
                )
                continue
            if column.present is not None:
                present = [r[position + 1] is not None for r in rows]
                position += 2
                table.columns.append(ColumnData.of_numbers(column.name, raw, present))
                continue
            position += 1
            table.columns.append(
                ColumnData.of_numbers(column.name, raw)
                if column.kind == "number"
                else ColumnData.of_texts(column.name, raw)
            )
        return table

    def aggregate_runs(
        self,
        experiment_ids: Sequence[str],
        filter_node: Node | None,
        lifecycle: Lifecycle,
        group_fields: Sequence[FieldRef],
        aggregates: Sequence[tuple[str, FieldRef | None]],
    ) -> list[tuple[list[str], list[float]]]:
        """(group values, aggregate values) per group, in group order ("" first: the runs
        without a value), computed by the database.

        Two levels: the inner query reads one row per matching run (group values, latest
        metric values and, for STDDEV, the group's mean from a window), the outer one
        aggregates. STDDEV is the sample standard deviation from the sum of squared
        deviations from the mean (SQLite has no stddev; sums of squares would cancel
        catastrophically for large values with a small spread). PostgreSQL sums in exact
        numeric (see _exact_number): its float sums raise on overflow."""
        # Each metric is joined once, however many aggregates read it (COUNT, MIN and AVG
        # of one metric are one scan of latest_metrics, not three).
        metric_fields = list(dict.fromkeys(f for _, f in aggregates if f is not None))
        position = {f: i for i, f in enumerate(metric_fields)}
        statement = select().select_from(_runs)
        statement, groups = join_run_values(statement, group_fields, "group_by")
        statement, metrics = join_run_values(statement, metric_fields, "aggregates")
        # Text groups: no value and '' are one group, "" (both are shown as "").
        group_values = [
            g.value if g.kind == "number" else func.coalesce(g.value, literal("")) for g in groups
        ]
        cleaned = [self._clean_number(m.value) for m in metrics]
        # run_id: a query of COUNT()s alone still selects something per run.
        inner: list[Any] = [_runs.c.run_id]
        inner += [g.label(f"g{i}") for i, g in enumerate(group_values)]
        inner += [m.label(f"m{i}") for i, m in enumerate(cleaned)]
        for index in sorted(
            {position[f] for function, f in aggregates if f is not None and function == "STDDEV"}
        ):
            exact = self._exact_number(cleaned[index])
            mean = func.avg(exact).over(partition_by=group_values or None)
            inner.append(mean.label(f"mean{index}"))
        statement = statement.add_columns(*inner).where(
            _lifecycle_condition(_runs.c.lifecycle_state, lifecycle),
            compile_run_filter(filter_node),
        )
        if experiment_ids:
            statement = statement.where(_runs.c.experiment_id.in_(list(experiment_ids)))
        per_run = statement.subquery("per_run")
        outer_groups = [per_run.c[f"g{i}"] for i in range(len(groups))]
        selected: list[Any] = list(outer_groups)
        plan: list[tuple[str, int]] = []  # (function, index of its first selected column)
        for function, metric_field in aggregates:
            plan.append((function, len(selected)))
            value: Any = None
            if metric_field is not None:
                index = position[metric_field]
                value = per_run.c[f"m{index}"]
                if function == "STDDEV":
                    deviation = self._exact_number(value) - per_run.c[f"mean{index}"]
                    selected.extend(
                        [
                            func.count(value),
                            func.sum(deviation * deviation),
                            func.max(func.abs(value)),
                        ]
                    )
                    continue
            if function == "COUNT":
                selected.append(func.count(value) if value is not None else func.count())
            elif function == "MIN":
                selected.append(func.min(value))
            elif function == "MAX":
                selected.append(func.max(value))
            elif function == "AVG":
                selected.append(func.avg(self._exact_number(value)))
            else:  # STDDEV without a column: refused by the service
                raise InvalidArgument(f"{function} needs a metrics.<key> column")
        outer = select(*selected).select_from(per_run)
        if groups:
            outer = outer.group_by(*outer_groups).order_by(
                *[g.asc().nulls_first() for g in outer_groups]
            )
        with self.db.read() as session:
            rows = session.execute(outer).all()
        result = []
        for row in rows:
            group = ["" if v is None else _group_text(v) for v in row[: len(groups)]]
            values: list[float] = []
            for function, start in plan:
                if function == "STDDEV":
                    n, squared_deviations, largest = row[start : start + 3]
                    if largest is not None and math.isinf(largest):
                        values.append(math.nan)  # an infinite value: no finite spread
                    else:
                        values.append(_sample_stddev(int(n or 0), squared_deviations))
                else:
                    value_read = row[start]
                    values.append(math.nan if value_read is None else float(value_read))
            result.append((group, values))
        return result

    def list_run_keys(
        self,
        experiment_ids: Sequence[str],
        filter_node: Node | None,
        lifecycle: Lifecycle,
        limit: int,
    ) -> RunKeys:
        """The param, metric and tag keys of the matching runs with how many runs have each."""
        matching = select(_runs.c.run_id).where(
            _lifecycle_condition(_runs.c.lifecycle_state, lifecycle),
            compile_run_filter(filter_node),
        )
        if experiment_ids:
            matching = matching.where(_runs.c.experiment_id.in_(list(experiment_ids)))
        keys = RunKeys()
        with self.db.read() as session:
            keys.run_count = int(
                session.execute(select(func.count()).select_from(matching.subquery())).scalar_one()
            )
            for table, target in (
                (_params, keys.params),
                (_latest, keys.metrics),
                (_run_tags, keys.tags),
            ):
                statement = (
                    select(table.c.key, func.count(), func.count(table.c.value.distinct()))
                    .where(table.c.run_id.in_(matching))
                    .group_by(table.c.key)
                    .order_by(table.c.key)
                    .limit(limit)
                )
                target.extend(
                    (key, int(count), int(distinct))
                    for key, count, distinct in session.execute(statement)
                )
        return keys

    def _exact_number(self, column: Any) -> Any:
        """A float column for sums: PostgreSQL raises on float overflow (AVG of two 1e308s,
        the square of 1e200), so it sums exact numerics, converted through text (a direct
        cast keeps only 15 digits); SQLite sums floats (overflowing to infinity)."""
        if self.db.dialect != "postgresql":
            return column
        return cast(cast(column, Text), Numeric)

    def _clean_number(self, column: Any) -> Any:
        """NaN stays out of aggregates and ordering: SQLite already stores it as NULL;
        PostgreSQL keeps NaN, which would poison AVG and sort above every number."""
        if self.db.dialect != "postgresql":
            return column
        return case((column == literal(math.nan), None), else_=column)

    def update_run(self, run_id: str, decide: Callable[[RunState], RunChanges]) -> run_pb2.Run:
        """Apply the changes `decide` computes from the run's current state, atomically."""
        with self.db.write() as session:
            row = session.get(RunRow, run_id, with_for_update=True)
            if row is None:
                raise NotFound(
                    f"run {run_id!r} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
                )
            changes = decide(
                RunState(
                    row.run_id,
                    row.experiment_id,
                    row.status,
                    row.lifecycle_state,
                    row.start_time,
                    row.end_time,
                )
            )
            for name in ("run_name", "status", "note", "start_time", "end_time"):
                value = getattr(changes, name)
                if value is not None:
                    setattr(row, name, value)
            row.update_time = now_ms()
        return self.get_run(run_id, run_pb2.RUN_VIEW_FULL)

    def set_run_deleted(self, run_id: str, deleted: bool) -> None:
        now = now_ms()
        with self.db.write() as session:
            experiment: ExperimentRow | None = None
            if not deleted:
                # A restored run needs its experiment ACTIVE until this commits: FOR SHARE makes
                # a concurrent DeleteExperiment (FOR UPDATE) wait for this, or this wait and see
                # the experiment deleted. Experiment before run is the order in which
                # DeleteExperiment and PurgeDeleted lock too, so none of them can deadlock.
                experiment_id = session.scalar(
                    select(_runs.c.experiment_id).where(_runs.c.run_id == run_id)
                )
                if experiment_id is not None:
                    experiment = session.get(
                        ExperimentRow, experiment_id, with_for_update={"read": True}
                    )
            row = session.get(RunRow, run_id, with_for_update=True)
            if row is None:
                raise NotFound(
                    f"run {run_id!r} not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
                )
            if deleted and row.lifecycle_state != "ACTIVE":  # DELETED, or PURGING
                raise FailedPrecondition(f"run {run_id!r} is already deleted", reason="RUN_DELETED")
            if not deleted and row.lifecycle_state == "ACTIVE":
                raise FailedPrecondition(
                    f"run {run_id!r} is already active", reason="RUN_NOT_DELETED"
                )
            if not deleted and row.lifecycle_state == "PURGING":
                raise FailedPrecondition(
                    f"run {run_id!r} is being purged and can no longer be restored",
                    reason="RUN_PURGING",
                    metadata={"run_id": run_id},
                )
            if experiment is not None and experiment.lifecycle_state != "ACTIVE":
                raise FailedPrecondition(
                    f"the run's experiment {experiment.display_name!r} is deleted; "
                    "restore it first",
                    reason="EXPERIMENT_DELETED",
                )
            row.lifecycle_state = "DELETED" if deleted else "ACTIVE"
            row.delete_time = now if deleted else None
            row.deleted_with_experiment = False
            row.update_time = now

    # ------------------------------------------------------------------ params, tags

    def log_params(self, run_id: str, params: Mapping[str, str]) -> int:
        """Insert new params and return how many were new. A key logged before with another
        value is ALREADY_EXISTS, and then nothing of the call is written."""
        if not params:
            self.run_state(run_id)
            return 0
        rows = [
            {"run_id": run_id, "key": k, "value": v, "value_num": _parse_number(v)}
            for k, v in sorted(params.items())  # key order: see set_run_tags
        ]
        with self.db.write() as session:
            self._require_active(session, run_id)
            inserted = set(
                session.scalars(
                    self.db.insert(_params)
                    .on_conflict_do_nothing(index_elements=[_params.c.run_id, _params.c.key])
                    .returning(_params.c.key),
                    rows,
                )
            )
            remaining = [k for k in params if k not in inserted]
            if remaining:
                conflicts = [
                    ParamConflict(key, value, params[key])
                    for key, value in session.execute(
                        select(_params.c.key, _params.c.value).where(
                            _params.c.run_id == run_id, _params.c.key.in_(remaining)
                        )
                    )
                    if value != params[key]
                ]
                if conflicts:
                    # Raising rolls the whole call back: a rejected call writes nothing.
                    raise param_conflict_error(sorted(conflicts, key=lambda c: c.key))
            return len(inserted)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        with self.db.write() as session:
            self._require_active(session, run_id)
            if not tags:
                return
            statement = self.db.insert(_run_tags)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[_run_tags.c.run_id, _run_tags.c.key],
                    set_={"value": statement.excluded.value},
                ),
                # In key order, as every multi-row write: concurrent writers then lock the
                # same rows in the same order and cannot deadlock (PostgreSQL).
                [{"run_id": run_id, "key": k, "value": v} for k, v in sorted(tags.items())],
            )

    def delete_run_tag(self, run_id: str, key: str) -> None:
        with self.db.write() as session:
            self._require_active(session, run_id)
            deleted = session.execute(
                delete(RunTagRow).where(RunTagRow.run_id == run_id, RunTagRow.key == key)
            ).rowcount  # type: ignore[attr-defined]
            if not deleted:
                raise NotFound(
                    f"run {run_id!r} has no tag {key!r}",
                    reason="TAG_NOT_FOUND",
                    metadata={"key": key},
                )

    def set_experiment_tags(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        table = table_of(ExperimentTagRow)
        with self.db.write() as session:
            self._require_active_experiment(session, experiment_id)
            if not tags:
                return
            statement = self.db.insert(table)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[table.c.experiment_id, table.c.key],
                    set_={"value": statement.excluded.value},
                ),
                [
                    {"experiment_id": experiment_id, "key": k, "value": v}
                    for k, v in sorted(tags.items())
                ],
            )
            session.execute(
                update(ExperimentRow)
                .where(ExperimentRow.experiment_id == experiment_id)
                .values(update_time=now_ms())
            )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        with self.db.write() as session:
            self._require_active_experiment(session, experiment_id)
            deleted = session.execute(
                delete(ExperimentTagRow).where(
                    ExperimentTagRow.experiment_id == experiment_id, ExperimentTagRow.key == key
                )
            ).rowcount  # type: ignore[attr-defined]
            if not deleted:
                raise NotFound(
                    f"experiment {experiment_id!r} has no tag {key!r}",
                    reason="TAG_NOT_FOUND",
                    metadata={"key": key},
                )

    def _require_active_experiment(self, session: Session, experiment_id: str) -> None:
        # Locked for update: tag writers of one experiment take turns (they also touch its
        # update_time, and upgrading a shared lock would deadlock), and a concurrent delete or
        # purge waits for this write.
        row = session.get(ExperimentRow, experiment_id, with_for_update=True)
        if row is None:
            raise NotFound(
                f"experiment {experiment_id!r} not found",
                reason="EXPERIMENT_NOT_FOUND",
                metadata={"experiment_id": experiment_id},
            )
        if row.lifecycle_state != "ACTIVE":
            raise FailedPrecondition(
                f"experiment {row.display_name!r} is deleted; restore it before changing it",
                reason="EXPERIMENT_DELETED",
            )

    def _require_active(self, session: Session, run_id: str) -> RunState:
        state = self.run_state(run_id, session)
        if state.lifecycle_state != "ACTIVE":
            raise FailedPrecondition(
                f"run {run_id!r} is deleted; restore it before changing it",
                reason="RUN_DELETED",
                metadata={"run_id": run_id},
            )
        return state

    # ------------------------------------------------------------------ metrics

    def log_metrics(
        self, run_id: str, batch_id: str, points: Sequence[MetricPointTuple], fingerprint: str
    ) -> tuple[int, bool]:
        """Store a batch once: returns (points stored, whether the batch was a duplicate).
        A batch id already stored with other points is INVALID_ARGUMENT, not a duplicate."""
        with self.db.write() as session:
            self._require_active(session, run_id)
            if batch_id:
                claimed = session.execute(
                    self._claim_batch,
                    {
                        "run_id": run_id,
                        "batch_id": batch_id,
                        "point_count": len(points),
                        "fingerprint": fingerprint,
                        "create_time": now_ms(),
                    },
                ).first()
                if claimed is None:
                    stored = session.scalar(
                        select(_batches.c.fingerprint).where(
                            _batches.c.run_id == run_id, _batches.c.batch_id == batch_id
                        )
                    )
                    if stored != fingerprint:
                        raise InvalidArgument(
                            f"batch_id {batch_id!r} was already used for other points of this "
                            "run; use a new batch id for new points",
                            field="batch_id",
                            reason="BATCH_ID_REUSED",
                            metadata={"batch_id": batch_id},
                        )
                    return 0, True
            if not points:
                return 0, False
            self._insert_points(session, run_id, points)
            self._update_latest(session, run_id, points)
        return len(points), False

    def _insert_points(
        self, session: Session, run_id: str, points: Sequence[MetricPointTuple]
    ) -> None:
        to_db = convert.metric_value_to_db
        if self.db.dialect == "postgresql" and len(points) >= COPY_THRESHOLD:
            with (
                driver_cursor(session) as cursor,
                cursor.copy(
                    "COPY metrics (run_id, key, step, timestamp, value) FROM STDIN"
                ) as copy,
            ):
                for key, value, step, timestamp in points:
                    copy.write_row((run_id, key, step, timestamp, to_db(value)))
            return
        # The driver's own executemany of plain tuples: SQLAlchemy's per-row parameter
        # processing was a third of a bulk ingest's server time. NaN goes in as NULL
        # (convert.metric_value_to_db, inlined: it runs once per point).
        statement = (
            "INSERT INTO metrics (run_id, key, step, timestamp, value) VALUES (?, ?, ?, ?, ?)"
            if self.db.dialect == "sqlite"
            else "INSERT INTO metrics (run_id, key, step, timestamp, value) "
            "VALUES (%s, %s, %s, %s, %s)"
        )
        rows = [(run_id, k, s, t, v if v == v else None) for k, v, s, t in points]
        with driver_cursor(session) as cursor:
            # One row is one plain execute: psycopg's executemany runs a pipeline, more round
            # trips than a single-point LogMetrics needs.
            if len(rows) == 1:
                cursor.execute(statement, rows[0])
            else:
                cursor.executemany(statement, rows)

    def _update_latest(
        self, session: Session, run_id: str, points: Sequence[MetricPointTuple]
    ) -> None:
        newest: dict[str, MetricPointTuple] = {}
        for point in points:
            key, _value, step, timestamp = point
            best = newest.get(key)
            if best is None or (step, timestamp) >= (best[2], best[3]):
                newest[key] = point
        rows = [
            {
                "run_id": run_id,
                "key": k,
                "value": convert.metric_value_to_db(v),
                "step": s,
                "timestamp": t,
            }
            # Key order, not batch order: writers that upsert overlapping keys of one run
            # then lock them in the same order and cannot deadlock (PostgreSQL).
            for k, v, s, t in sorted(newest.values(), key=lambda point: point[0])
        ]
        session.execute(self._upsert_latest, rows[0] if len(rows) == 1 else rows)

    def metric_history_page(
        self,
        run_id: str,
        key: str,
        *,
        start_step: int | None,
        end_step: int | None,
        page_size: int,
        after: Sequence[Any] | None,
    ) -> tuple[HistoryColumns, list[Any] | None]:
        """A page of points in step order (then id: the order they were stored), and where
        the next page starts: the last point's [step, id], or None after the last page.

        One scan of the (run_id, key, step, id) index in its own order, with no sort on
        either database: the next page starts after a row-value comparison (step, id) >
        (last step, last id), which both use as an index bound (the equivalent OR of two
        conditions scanned the metric from its first point on SQLite, and made PostgreSQL
        sort the rest in a bitmap scan). The rows come straight from the driver's cursor:
        building SQLAlchemy Rows cost more than the query itself."""
        c = _metrics.c
        statement = (
            select(c.step, c.timestamp, c.value, c.id)
            .where(c.run_id == run_id, c.key == key, *_step_range(c.step, start_step, end_step))
            .order_by(c.step, c.id)
            .limit(page_size + 1)
        )
        if after is not None:
            last_step, last_id = after
            statement = statement.where(tuple_(c.step, c.id) > tuple_(last_step, last_id))
        with self.db.read() as session:
            self.run_state(run_id, session)
            rows = fetch_tuples(session, statement)
        position = None
        if len(rows) > page_size:
            del rows[page_size:]
            if rows:
                position = [rows[-1][0], rows[-1][3]]
        return HistoryColumns.from_rows(rows), position

    def count_metric_points(
        self, run_id: str, key: str, start_step: int | None, end_step: int | None
    ) -> int:
        c = _metrics.c
        with self.db.read() as session:
            self.run_state(run_id, session)
            return int(
                session.scalar(
                    select(func.count()).where(
                        c.run_id == run_id, c.key == key, *_step_range(c.step, start_step, end_step)
                    )
                )
                or 0
            )

    def downsampled_history(
        self,
        run_id: str,
        key: str,
        *,
        start_step: int | None,
        end_step: int | None,
        buckets: int,
        total: int,
    ) -> HistoryColumns:
        """Cut the series into `buckets` runs of consecutive points and keep each run's first,
        last, minimum and maximum point — computed in SQL with window functions."""
        c = _metrics.c
        ordered = (
            select(
                c.step,
                c.timestamp,
                c.value,
                (func.row_number().over(order_by=(c.step, c.id)) - 1).label("position"),
            )
            .where(c.run_id == run_id, c.key == key, *_step_range(c.step, start_step, end_step))
            .subquery("ordered")
        )
        # Floor division of integers: SQLAlchemy's `/` is true division (numeric on PostgreSQL).
        bucket = (ordered.c.position * bindparam("buckets", buckets)) // bindparam("total", total)
        value = ordered.c.value
        # NaN (NULL) never wins min or max unless a bucket holds nothing else.
        missing = value.is_(None)
        ranked = select(
            ordered.c.step,
            ordered.c.timestamp,
            value,
            ordered.c.position,
            func.row_number()
            .over(partition_by=bucket, order_by=ordered.c.position)
            .label("first_rank"),
            func.row_number()
            .over(partition_by=bucket, order_by=ordered.c.position.desc())
            .label("last_rank"),
            func.row_number()
            .over(partition_by=bucket, order_by=(missing, value, ordered.c.position))
            .label("min_rank"),
            func.row_number()
            .over(partition_by=bucket, order_by=(missing, value.desc(), ordered.c.position))
            .label("max_rank"),
        ).subquery("ranked")
        r = ranked.c
        statement = (
            select(r.step, r.timestamp, r.value)
            .where(or_(r.first_rank == 1, r.last_rank == 1, r.min_rank == 1, r.max_rank == 1))
            .order_by(r.position)
        )
        with self.db.read() as session:
            return HistoryColumns.from_rows(fetch_tuples(session, statement))

    # ------------------------------------------------------------------ artifacts

    def get_artifact(self, run_id: str, path: str) -> StoredArtifact | None:
        with self.db.read() as session:
            row = session.get(ArtifactRow, (run_id, path))
            return StoredArtifact.of(row) if row is not None else None

    def save_artifact(
        self,
        run_id: str,
        path: str,
        artifact_type: str,
        size: int,
        sha256: str,
        *,
        overwrite: bool,
    ) -> StoredArtifact:
        """Record path -> content, deciding against the row as it is in this transaction, so
        that racing uploads behave as if they came one after the other: the same content
        returns the stored artifact, other content is ALREADY_EXISTS unless `overwrite`.
        Content an overwrite leaves unreferenced is recorded as an orphan for purge to free."""
        for attempt in (1, 2):
            try:
                with self.db.write() as session:
                    self._require_active(session, run_id)
                    row = session.get(ArtifactRow, (run_id, path), with_for_update=True)
                    if row is not None and row.sha256 == sha256:
                        return StoredArtifact.of(row)
                    if row is not None and not overwrite:
                        raise artifact_exists_error(path, row.sha256, sha256)
                    replaced = (row.sha256, row.size_bytes) if row is not None else None
                    if row is None:
                        row = ArtifactRow(run_id=run_id, path=path)
                        session.add(row)
                    row.artifact_type = artifact_type
                    row.size_bytes = size
                    row.sha256 = sha256
                    row.create_time = now_ms()
                    session.flush()
                    # Referenced again: no longer an orphan.
                    session.execute(
                        delete(ArtifactOrphanRow).where(
                            ArtifactOrphanRow.run_id == run_id, ArtifactOrphanRow.sha256 == sha256
                        )
                    )
                    if replaced is not None and not self._blob_referenced(
                        session, run_id, replaced[0]
                    ):
                        session.execute(
                            self.db.insert(table_of(ArtifactOrphanRow))
                            .values(
                                run_id=run_id,
                                sha256=replaced[0],
                                size_bytes=replaced[1],
                                orphan_time=now_ms(),
                            )
                            .on_conflict_do_nothing()
                        )
                    return StoredArtifact.of(row)
            except IntegrityError:
                # A concurrent upload inserted the path first: decide again against its row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _blob_referenced(session: Session, run_id: str, sha256: str) -> bool:
        return (
            session.scalar(
                select(func.count())
                .select_from(_artifacts)
                .where(_artifacts.c.run_id == run_id, _artifacts.c.sha256 == sha256)
            )
            or 0
        ) > 0

    def list_artifacts(
        self, run_id: str, prefix: str, page_size: int, after: str | None
    ) -> tuple[list[StoredArtifact], str | None]:
        statement = (
            select(ArtifactRow).where(ArtifactRow.run_id == run_id).order_by(ArtifactRow.path)
        )
        if prefix:
            statement = statement.where(func.substr(ArtifactRow.path, 1, len(prefix)) == prefix)
        if after is not None:
            statement = statement.where(ArtifactRow.path > after)
        with self.db.read() as session:
            self.run_state(run_id, session)
            rows = [StoredArtifact.of(r) for r in session.scalars(statement.limit(page_size + 1))]
        more = len(rows) > page_size
        rows = rows[:page_size]
        return rows, (rows[-1].path if more and rows else None)

    def claim_orphans(
        self, orphaned_before: int, experiment_ids: Sequence[str], dry_run: bool
    ) -> list[tuple[str, str, str, int]]:
        """Orphaned content older than the cut-off and still unreferenced, as
        (experiment_id, run_id, sha256, size); unless dry_run, their records are removed in
        the same transaction (the caller then deletes the content)."""
        orphans = table_of(ArtifactOrphanRow)
        statement = (
            select(_runs.c.experiment_id, orphans.c.run_id, orphans.c.sha256, orphans.c.size_bytes)
            .join(_runs, _runs.c.run_id == orphans.c.run_id)
            .where(orphans.c.orphan_time <= orphaned_before)
            .order_by(orphans.c.run_id, orphans.c.sha256)
        )
        if experiment_ids:
            statement = statement.where(_runs.c.experiment_id.in_(list(experiment_ids)))
        session_scope = self.db.read() if dry_run else self.db.write()
        with session_scope as session:
            claimed = []
            for experiment_id, run_id, sha256, size in session.execute(statement).all():
                if not dry_run:
                    session.execute(
                        delete(ArtifactOrphanRow).where(
                            ArtifactOrphanRow.run_id == run_id, ArtifactOrphanRow.sha256 == sha256
                        )
                    )
                if not self._blob_referenced(session, run_id, sha256):
                    claimed.append((experiment_id, run_id, sha256, int(size)))
        return claimed

    # ------------------------------------------------------------------ purge

    def plan_purge(self, deleted_before: int, experiment_ids: Sequence[str]) -> PurgePlan:
        """What `claim_purge` would claim now, without changing anything (a dry run)."""
        runs_claimable, experiments_claimable = _purgeable(deleted_before, experiment_ids)
        with self.db.read() as session:
            experiments = session.scalars(
                select(_experiments.c.experiment_id)
                .where(experiments_claimable)
                .order_by(_experiments.c.experiment_id)
            )
            runs = session.execute(
                select(_runs.c.experiment_id, _runs.c.run_id)
                .where(runs_claimable)
                .order_by(_runs.c.run_id)
            )
            return PurgePlan(list(experiments), [(e, r) for e, r in runs])

    def claim_purge(self, deleted_before: int, experiment_ids: Sequence[str]) -> PurgePlan:
        """Mark what is to be purged PURGING, atomically, and return it.

        A run is claimed when it was DELETED at `deleted_before` or earlier, an experiment
        when it is too and every run it owns is claimed with it. Rows a purge claimed but did
        not finish (PURGING) are claimed again. From the claim on, nothing restores them, so
        the artifacts of the claimed runs can go before their rows. Experiments are claimed
        before runs: the order in which DeleteExperiment and RestoreExperiment lock them.
        """
        runs_claimable, experiments_claimable = _purgeable(deleted_before, experiment_ids)
        with self.db.write() as session:
            experiments = session.scalars(
                update(_experiments)
                .where(experiments_claimable)
                .values(lifecycle_state="PURGING")
                .returning(_experiments.c.experiment_id)
            ).all()
            runs = session.execute(
                update(_runs)
                .where(runs_claimable)
                .values(lifecycle_state="PURGING")
                .returning(_runs.c.experiment_id, _runs.c.run_id)
            ).all()
        return PurgePlan(sorted(experiments), sorted(((e, r) for e, r in runs), key=_second))

    def purge_run_rows(self, run_ids: Sequence[str]) -> list[str]:
        """Delete claimed (PURGING) runs and everything hanging off them (metric points have
        no FK); returns the ids of the runs deleted. One transaction per chunk: what is left
        after an interruption stays PURGING, and the next purge claims it again."""
        purged: list[str] = []
        for chunk in _chunks(list(run_ids), 500):
            with self.db.write() as session:
                deleted = list(
                    session.scalars(
                        delete(_runs)
                        .where(_runs.c.run_id.in_(chunk), _runs.c.lifecycle_state == "PURGING")
                        .returning(_runs.c.run_id)
                    )
                )
                if deleted:
                    session.execute(delete(MetricRow).where(MetricRow.run_id.in_(deleted)))
                purged.extend(deleted)
        return sorted(purged)

    def purge_experiment_rows(self, experiment_ids: Sequence[str]) -> list[str]:
        """Delete claimed (PURGING) experiments that own no runs any more; returns their ids.
        One that still owns runs (which its claim rules out) goes back to DELETED instead:
        deleting it would cascade to runs whose artifacts were never freed."""
        owns_runs = (
            select(_runs.c.run_id)
            .where(_runs.c.experiment_id == _experiments.c.experiment_id)
            .exists()
        )
        purged: list[str] = []
        with self.db.write() as session:
            for chunk in _chunks(list(experiment_ids), 500):
                claimed = and_(
                    _experiments.c.experiment_id.in_(chunk),
                    _experiments.c.lifecycle_state == "PURGING",
                )
                purged.extend(
                    session.scalars(
                        delete(_experiments)
                        .where(claimed, ~owns_runs)
                        .returning(_experiments.c.experiment_id)
                    )
                )
                session.execute(
                    update(_experiments).where(claimed).values(lifecycle_state="DELETED")
                )
        return sorted(purged)


_LINEAGE_FIELDS = ("dataset_id", "dataset_name", "pipeline_id", "node_id", "job_id", "model_type")


def _purgeable(deleted_before: int, experiment_ids: Sequence[str]) -> tuple[Any, Any]:
    """WHERE clauses of the runs and of the experiments that a purge takes: the DELETED ones
    deleted at `deleted_before` or earlier, and those an unfinished purge left PURGING. An
    ACTIVE run never qualifies, and an experiment only with every run it owns."""

    def claimable(table: Any) -> Any:
        return or_(
            and_(table.c.lifecycle_state == "DELETED", table.c.delete_time <= deleted_before),
            table.c.lifecycle_state == "PURGING",
        )

    runs = claimable(_runs)
    kept_run = (
        select(_runs.c.run_id)
        .where(_runs.c.experiment_id == _experiments.c.experiment_id, ~runs)
        .exists()
    )
    experiments = and_(claimable(_experiments), ~kept_run)
    if experiment_ids:
        runs = and_(runs, _runs.c.experiment_id.in_(list(experiment_ids)))
        experiments = and_(experiments, _experiments.c.experiment_id.in_(list(experiment_ids)))
    return runs, experiments


def _second(pair: tuple[str, str]) -> str:
    return pair[1]


def _step_range(column: Any, start: int | None, end: int | None) -> list[Any]:
    conditions = []
    if start is not None:
        conditions.append(column >= start)
    if end is not None:
        conditions.append(column <= end)
    return conditions


def _next_position(result: Sequence[Any], page_size: int, sort_count: int) -> list[Any] | None:
    if len(result) <= page_size:
        return None
    last = result[page_size - 1]
    return list(last[1 : 1 + sort_count])


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
