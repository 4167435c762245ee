"""The scheduler's persistence: datasets, configs, jobs and their state history.

Job state only ever moves by compare-and-set (`transition`): an update names the states it
may leave, so a cancel racing the reconcile loop, or two scheduler replicas, can never both
win. Claiming queued jobs is one write transaction, serialized by an advisory lock (with row
locks, FOR UPDATE SKIP LOCKED) on PostgreSQL and by the single write lock on SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.filtering import Node, OrderKey
from services.common.sqlfilter import (
    Attribute,
    AttributeField,
    FieldSql,
    SortColumn,
    compile_filter,
    keyset_after,
    order_clauses,
    order_error,
    resolve_attribute,
    select_sort_values,
)
from services.common.timeutil import now_ms
from services.scheduler.store.models import (
    DatasetRow,
    FeatureConfigRow,
    JobRow,
    JobTransitionRow,
    ModelConfigRow,
    table_of,
)

Row = TypeVar("Row", DatasetRow, FeatureConfigRow, ModelConfigRow, JobRow)

ACTIVE_STATES = ("SUBMITTING", "RUNNING", "CANCELLING")
# PostgreSQL advisory lock key of claim_queued (any constant unique to Cairn's scheduler).
CLAIM_LOCK_KEY = 0x43414952_4E4A4F42 & 0x7FFFFFFFFFFFFFFF
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
JOB_STATES = ("QUEUED", *ACTIVE_STATES, *TERMINAL_STATES)

_datasets = table_of(DatasetRow)
_features = table_of(FeatureConfigRow)
_models = table_of(ModelConfigRow)
_jobs = table_of(JobRow)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class ListQuery:
    filter: Node | None
    order: Sequence[OrderKey]
    page_size: int
    after: list[Any] | None
    # Extra condition (the jobs' free-text search).
    where: ColumnElement[bool] | None = None


@dataclass(frozen=True)
class Page(Generic[Row]):
    items: list[Row]
    next_position: list[Any] | None


@dataclass(frozen=True)
class Listing:
    """How one resource is listed: its filterable attributes and its unique id column."""

    what: str
    model: type[Any]
    id_column: Any
    attributes: dict[str, Attribute]
    aliases: dict[str, str]

    def resolve(self, field: Any) -> FieldSql:
        if field.kind != "attributes":
            raise InvalidArgument(
                f"{self.what} filters take attributes only, not {field.kind}.{field.key}",
                field="filter",
                reason="UNKNOWN_FIELD",
            )
        return AttributeField(
            field, resolve_attribute(field, self.attributes, self.aliases, self.what)
        )

    def sort_columns(self, keys: Sequence[OrderKey]) -> list[SortColumn]:
        columns: list[SortColumn] = []
        for key in keys:
            if key.field.kind != "attributes":
                raise order_error(key.field, f"is not sortable for {self.what}s")
            attribute = resolve_attribute(
                key.field, self.attributes, self.aliases, self.what, "order_by"
            )
            if attribute.column is not self.id_column:
                columns.append(SortColumn(attribute.column, key.descending))
        columns.append(SortColumn(self.id_column, False))
        return columns


JOB_ATTRIBUTES: dict[str, Attribute] = {
    "job_id": Attribute(_jobs.c.job_id, "text"),
    "display_name": Attribute(_jobs.c.display_name, "text"),
    "description": Attribute(_jobs.c.description, "text", nullable_text=True),
    "state": Attribute(_jobs.c.state, "enum", choices=JOB_STATES, prefixes=("JOB_STATE_",)),
    "kind": Attribute(
        _jobs.c.kind, "enum", choices=("QUICK_TEST", "FULL_TRAINING"), prefixes=("JOB_KIND_",)
    ),
    "model_type": Attribute(
        _jobs.c.model_type,
        "enum",
        choices=("RETRIEVAL", "RANKING", "MULTITASK"),
        prefixes=("MODEL_TYPE_",),
    ),
    "hardware_tier": Attribute(
        _jobs.c.hardware_tier,
        "enum",
        choices=("SMALL", "MEDIUM", "LARGE"),
        prefixes=("HARDWARE_TIER_",),
    ),
    "dataset": Attribute(_jobs.c.dataset_id, "text"),
    "feature_config": Attribute(_jobs.c.feature_config_id, "text"),
    "model_config": Attribute(_jobs.c.model_config_id, "text"),
    "experiment": Attribute(_jobs.c.experiment, "text"),
    "stage": Attribute(_jobs.c.stage, "text", nullable_text=True),
    "run": Attribute(_jobs.c.run, "text", nullable_text=True),
    "rerun_of": Attribute(_jobs.c.rerun_of, "text", nullable_text=True),
    "create_time": Attribute(_jobs.c.create_time, "time"),
    "update_time": Attribute(_jobs.c.update_time, "time"),
    "start_time": Attribute(_jobs.c.start_time, "time"),
    "end_time": Attribute(_jobs.c.end_time, "time"),
}
JOBS = Listing(
    "job",
    JobRow,
    _jobs.c.job_id,
    JOB_ATTRIBUTES,
    {"status": "state", "id": "job_id", "name": "display_name", "type": "model_type"},
)
DATASETS = Listing(
    "dataset",
    DatasetRow,
    _datasets.c.dataset_id,
    {
        "dataset_id": Attribute(_datasets.c.dataset_id, "text"),
        "display_name": Attribute(_datasets.c.display_name, "text"),
        "description": Attribute(_datasets.c.description, "text", nullable_text=True),
        "uri": Attribute(_datasets.c.uri, "text"),
        "format": Attribute(
            _datasets.c.format, "enum", choices=("CSV", "PARQUET"), prefixes=("DATA_FORMAT_",)
        ),
        "row_count": Attribute(_datasets.c.row_count, "int"),
        "create_time": Attribute(_datasets.c.create_time, "time"),
    },
    {"id": "dataset_id", "name": "display_name"},
)
FEATURE_CONFIGS = Listing(
    "feature config",
    FeatureConfigRow,
    _features.c.feature_config_id,
    {
        "feature_config_id": Attribute(_features.c.feature_config_id, "text"),
        "display_name": Attribute(_features.c.display_name, "text"),
        "description": Attribute(_features.c.description, "text", nullable_text=True),
        "dataset": Attribute(_features.c.dataset_id, "text"),
        "target_column": Attribute(_features.c.target_column, "text", nullable_text=True),
        "create_time": Attribute(_features.c.create_time, "time"),
    },
    {"id": "feature_config_id", "name": "display_name"},
)
MODEL_CONFIGS = Listing(
    "model config",
    ModelConfigRow,
    _models.c.model_config_id,
    {
        "model_config_id": Attribute(_models.c.model_config_id, "text"),
        "display_name": Attribute(_models.c.display_name, "text"),
        "description": Attribute(_models.c.description, "text", nullable_text=True),
        "model_type": Attribute(
            _models.c.model_type,
            "enum",
            choices=("RETRIEVAL", "RANKING", "MULTITASK"),
            prefixes=("MODEL_TYPE_",),
        ),
        "optimizer": Attribute(
            _models.c.optimizer,
            "enum",
            choices=("ADAGRAD", "ADAM", "SGD"),
            prefixes=("OPTIMIZER_",),
        ),
        "create_time": Attribute(_models.c.create_time, "time"),
    },
    {"id": "model_config_id", "name": "display_name", "type": "model_type"},
)


class SchedulerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ generic resources

    def create(self, row: Row, what: str, unique_hint: str) -> Row:
        """Insert a resource; a retry of a request_id returns the first one."""
        model = type(row)
        if row.request_id:
            existing = self._by_request(model, row.request_id, row.request_fingerprint, what)
            if existing is not None:
                return existing
        try:
            with self.db.write() as session:
                session.add(row)
        except IntegrityError:
            if row.request_id:
                existing = self._by_request(model, row.request_id, row.request_fingerprint, what)
                if existing is not None:
                    return existing
            raise AlreadyExists(
                f"a {what} {unique_hint} already exists",
                reason=f"{what.upper().replace(' ', '_')}_EXISTS",
            ) from None
        return row

    def _by_request(
        self, model: type[Row], request_id: str, fingerprint: str | None, what: str
    ) -> Row | None:
        with self.db.read() as session:
            found = session.scalars(select(model).where(model.request_id == request_id)).first()
        if found is None:
            return None
        if found.request_fingerprint != fingerprint:
            raise InvalidArgument(
                f"request_id {request_id!r} was already used for a different {what}",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        return found

    def get(self, model: type[Row], resource_id: str, what: str) -> Row:
        with self.db.read() as session:
            row = session.get(model, resource_id)
        if row is None:
            raise NotFound(
                f"{what} {resource_id!r} not found",
                reason=f"{what.upper().replace(' ', '_')}_NOT_FOUND",
                metadata={"id": resource_id},
            )
        return row

    def list_page(self, listing: Listing, query: ListQuery) -> Page[Any]:
        columns = listing.sort_columns(query.order)
        statement: Select[Any] = (
            select(listing.model, *select_sort_values(columns))
            .where(compile_filter(query.filter, listing.resolve))
            .order_by(*order_clauses(columns))
            .limit(query.page_size + 1)
        )
        if query.where is not None:
            statement = statement.where(query.where)
        if query.after is not None:
            statement = statement.where(keyset_after(columns, query.after))
        with self.db.read() as session:
            result = session.execute(statement).all()
        rows = [r[0] for r in result[: query.page_size]]
        next_position = None
        if len(result) > query.page_size:
            next_position = list(result[query.page_size - 1][1 : 1 + len(columns)])
        return Page(rows, next_position)

    def delete(self, model: type[Row], resource_id: str, what: str, used_by: str) -> None:
        try:
            with self.db.write() as session:
                row = session.get(model, resource_id)
                if row is None:
                    raise NotFound(
                        f"{what} {resource_id!r} not found",
                        reason=f"{what.upper().replace(' ', '_')}_NOT_FOUND",
                    )
                session.delete(row)
                session.flush()
        except IntegrityError:
            raise FailedPrecondition(
                f"{what} {resource_id!r} is still used by {used_by}: delete those first",
                reason=f"{what.upper().replace(' ', '_')}_IN_USE",
            ) from None

    # ------------------------------------------------------------ jobs

    def create_job(self, row: JobRow, message: str) -> tuple[JobRow, bool]:
        """Insert a queued job with its first transition. Returns (job, created)."""
        if row.request_id:
            existing = self._by_request(JobRow, row.request_id, row.request_fingerprint, "job")
            if existing is not None:
                return existing, False
        try:
            with self.db.write() as session:
                session.add(row)
                session.flush()
                session.add(
                    JobTransitionRow(
                        job_id=row.job_id, state=row.state, time=row.create_time, message=message
                    )
                )
        except IntegrityError:
            if row.request_id:
                existing = self._by_request(JobRow, row.request_id, row.request_fingerprint, "job")
                if existing is not None:
                    return existing, False
            raise FailedPrecondition(
                "the job's dataset, feature config or model config was deleted meanwhile",
                reason="CONFIG_DELETED",
            ) from None
        return row, True

    def history(self, job_ids: Iterable[str]) -> dict[str, list[JobTransitionRow]]:
        ids = list(job_ids)
        found: dict[str, list[JobTransitionRow]] = {job_id: [] for job_id in ids}
        if not ids:
            return found
        with self.db.read() as session:
            rows = session.scalars(
                select(JobTransitionRow)
                .where(JobTransitionRow.job_id.in_(ids))
                .order_by(JobTransitionRow.transition_id)
            ).all()
        for row in rows:
            found[row.job_id].append(row)
        return found

    def transition(
        self,
        job_id: str,
        allowed_from: Sequence[str],
        to_state: str,
        message: str,
        **fields: Any,
    ) -> JobRow | None:
        """Move a job to `to_state` if it is in one of `allowed_from` (compare-and-set);
        None when it was not (someone else moved it first)."""
        now = now_ms()
        values: dict[str, Any] = {"state": to_state, "update_time": now, **fields}
        if to_state == "RUNNING":
            values.setdefault("start_time", now)
        if to_state in TERMINAL_STATES:
            values.setdefault("end_time", now)
        with self.db.write() as session:
            result = session.execute(
                update(JobRow)
                .where(JobRow.job_id == job_id, JobRow.state.in_(list(allowed_from)))
                .values(**values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            session.add(JobTransitionRow(job_id=job_id, state=to_state, time=now, message=message))
            return session.get(JobRow, job_id)

    def update_job(self, job_id: str, only_in: Sequence[str] | None = None, **fields: Any) -> bool:
        """Set fields of a job (progress, workload, run...) without changing its state;
        with only_in, only while it is in one of those states."""
        fields["update_time"] = now_ms()
        statement = update(JobRow).where(JobRow.job_id == job_id)
        if only_in is not None:
            statement = statement.where(JobRow.state.in_(list(only_in)))
        with self.db.write() as session:
            result = session.execute(statement.values(**fields))
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def claim_queued(self, owner: str, capacity: int) -> list[JobRow]:
        """Atomically move up to `capacity` minus the active jobs from QUEUED to SUBMITTING,
        oldest first, recording the claimant. Two reconcilers never claim one job: PostgreSQL
        serializes claims on an advisory lock and locks the rows (SKIP LOCKED); SQLite has one
        writer at a time."""
        now = now_ms()
        with self.db.write() as session:
            if not self.db.is_sqlite:
                # Serialize claims (not the rest of the work): the count of active jobs below
                # must include what another replica claimed a moment ago, or each would fill
                # the whole limit. Released when the transaction ends.
                session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
            active = session.scalar(
                select(func.count()).select_from(_jobs).where(_jobs.c.state.in_(ACTIVE_STATES))
            )
            room = capacity - int(active or 0)
            if room <= 0:
                return []
            candidates = (
                select(JobRow.job_id)
                .where(JobRow.state == "QUEUED")
                .order_by(JobRow.create_time, JobRow.job_id)
                .limit(room)
            )
            if not self.db.is_sqlite:
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list(session.scalars(candidates).all())
            if not ids:
                return []
            session.execute(
                update(JobRow)
                .where(JobRow.job_id.in_(ids), JobRow.state == "QUEUED")
                .values(state="SUBMITTING", claimed_by=owner, claim_time=now, update_time=now)
            )
            session.add_all(
                JobTransitionRow(
                    job_id=job_id, state="SUBMITTING", time=now, message=f"claimed by {owner}"
                )
                for job_id in ids
            )
            claimed = session.scalars(select(JobRow).where(JobRow.job_id.in_(ids))).all()
        return sorted(claimed, key=lambda r: (r.create_time, r.job_id))

    def jobs_in(self, states: Sequence[str]) -> list[JobRow]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(JobRow)
                    .where(JobRow.state.in_(list(states)))
                    .order_by(JobRow.create_time, JobRow.job_id)
                ).all()
            )

    def unfinalized_terminal_jobs(self) -> list[JobRow]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(JobRow).where(JobRow.state.in_(TERMINAL_STATES), JobRow.finalized == 0)
                ).all()
            )

    def delete_job(self, job_id: str) -> JobRow:
        """Delete a finished job (its history goes with it)."""
        with self.db.write() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND")
            if row.state not in TERMINAL_STATES:
                raise FailedPrecondition(
                    f"job {job_id!r} is {row.state}: cancel it first",
                    reason="JOB_NOT_FINISHED",
                    metadata={"state": row.state},
                )
            session.execute(delete(JobTransitionRow).where(JobTransitionRow.job_id == job_id))
            session.delete(row)
        return row

    def dataset_in_use(self, dataset_id: str) -> bool:
        with self.db.read() as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(_features)
                    .where(_features.c.dataset_id == dataset_id)
                )
                or 0
            ) > 0


def search_condition(text: str) -> ColumnElement[bool]:
    """Free text over a job's name and description, case-insensitive, as a substring."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return or_(
        func.lower(_jobs.c.display_name).like(pattern, escape="\\"),
        func.lower(_jobs.c.description).like(pattern, escape="\\"),
    )
