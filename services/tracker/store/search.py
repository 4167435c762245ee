"""The tracker's fields for the shared filter grammar and order_by (services.common.sqlfilter
does the SQL): which attributes runs and experiments have, and that params, tags and latest
metrics are key/value fields.

- A number compared with a param uses the param's numeric value (`params.depth > 5`
  compares numbers, not strings); a quoted value compares text.
- Time attributes take epoch milliseconds or an ISO-8601 string ('2026-01-31',
  '2026-01-31T12:00:00Z').
- Sorting puts missing values last in both directions; run_id breaks ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, func, literal, select
from sqlalchemy.orm import aliased

from services.common.errors import InvalidArgument
from services.common.filtering import And, Comparison, FieldRef, InList, Node, OrderKey
from services.common.sqlfilter import (
    Attribute,
    AttributeField,
    FieldSql,
    KeyValueField,
    SortColumn,
    ValueKind,
    compile_filter,
    joined_condition,
    order_error,
    resolve_attribute,
)
from services.tracker.store.models import (
    ExperimentRow,
    ExperimentTagRow,
    LatestMetricRow,
    ParamRow,
    RunRow,
    RunTagRow,
    table_of,
)

RUN_STATUSES = ("QUEUED", "RUNNING", "FINISHED", "FAILED", "KILLED")
LIFECYCLE_STATES = ("ACTIVE", "DELETED")


_runs = table_of(RunRow)
_experiments = table_of(ExperimentRow)

RUN_ATTRIBUTES: dict[str, Attribute] = {
    "run_id": Attribute(_runs.c.run_id, "text"),
    "run_name": Attribute(_runs.c.run_name, "text"),
    "experiment_id": Attribute(_runs.c.experiment_id, "text"),
    "status": Attribute(_runs.c.status, "enum", choices=RUN_STATUSES, prefixes=("RUN_STATUS_",)),
    "start_time": Attribute(_runs.c.start_time, "time"),
    "end_time": Attribute(_runs.c.end_time, "time"),
    "create_time": Attribute(_runs.c.create_time, "time"),
    "update_time": Attribute(_runs.c.update_time, "time"),
    "delete_time": Attribute(_runs.c.delete_time, "time"),
    "lifecycle_state": Attribute(
        _runs.c.lifecycle_state, "enum", choices=LIFECYCLE_STATES, prefixes=("LIFECYCLE_STATE_",)
    ),
    "note": Attribute(_runs.c.note, "text", nullable_text=True),
    "user": Attribute(_runs.c.user, "text", nullable_text=True),
    "dataset_id": Attribute(_runs.c.dataset_id, "text", nullable_text=True),
    "dataset_name": Attribute(_runs.c.dataset_name, "text", nullable_text=True),
    "pipeline_id": Attribute(_runs.c.pipeline_id, "text", nullable_text=True),
    "node_id": Attribute(_runs.c.node_id, "text", nullable_text=True),
    "job_id": Attribute(_runs.c.job_id, "text", nullable_text=True),
    "model_type": Attribute(_runs.c.model_type, "text", nullable_text=True),
    "version": Attribute(_runs.c.version, "int"),
}
# Names other tools use for the same attributes (MLflow's user_id and run name).
RUN_ATTRIBUTE_ALIASES = {"user_id": "user", "name": "run_name", "id": "run_id"}

EXPERIMENT_ATTRIBUTES: dict[str, Attribute] = {
    "experiment_id": Attribute(_experiments.c.experiment_id, "text"),
    "display_name": Attribute(_experiments.c.display_name, "text"),
    "description": Attribute(_experiments.c.description, "text", nullable_text=True),
    "lifecycle_state": Attribute(
        _experiments.c.lifecycle_state,
        "enum",
        choices=LIFECYCLE_STATES,
        prefixes=("LIFECYCLE_STATE_",),
    ),
    "create_time": Attribute(_experiments.c.create_time, "time"),
    "update_time": Attribute(_experiments.c.update_time, "time"),
}
EXPERIMENT_ATTRIBUTE_ALIASES = {"name": "display_name", "id": "experiment_id"}


# A run's key-value fields: their table and what their values are.
_KEY_VALUE_TABLES: dict[str, tuple[Table, ValueKind]] = {
    "params": (table_of(ParamRow), "text_or_number"),
    "tags": (table_of(RunTagRow), "text"),
    "metrics": (table_of(LatestMetricRow), "number"),
}


def _key_value_field(field: FieldRef, table: FromClause | None = None) -> KeyValueField:
    """The field's SQL over its table, or over `table` (an alias of it joined by the query)."""
    own, kind = _KEY_VALUE_TABLES[field.kind]
    return KeyValueField(field, own if table is None else table, _runs.c.run_id, kind)


def _run_field(field: FieldRef) -> FieldSql:
    if field.kind in _KEY_VALUE_TABLES:
        return _key_value_field(field)
    return AttributeField(
        field, resolve_attribute(field, RUN_ATTRIBUTES, RUN_ATTRIBUTE_ALIASES, "run")
    )


def _experiment_field(field: FieldRef) -> FieldSql:
    if field.kind == "tags":
        return KeyValueField(
            field, table_of(ExperimentTagRow), _experiments.c.experiment_id, "text"
        )
    if field.kind != "attributes":
        raise InvalidArgument(
            f"experiments have no {field.kind}: {field} at position {field.position}",
            field="filter",
            reason="UNKNOWN_FIELD",
            metadata={"position": field.position, "key": str(field)},
        )
    return AttributeField(
        field,
        resolve_attribute(field, EXPERIMENT_ATTRIBUTES, EXPERIMENT_ATTRIBUTE_ALIASES, "experiment"),
    )


def compile_run_filter(node: Node | None) -> ColumnElement[bool]:
    return compile_filter(node, _run_field)


def compile_experiment_filter(node: Node | None) -> ColumnElement[bool]:
    return compile_filter(node, _experiment_field)


# ---------------------------------------------------------------- ordering


def plan_run_query(
    query: Select[Any], keys: Sequence[OrderKey], filter_node: Node | None
) -> tuple[Select[Any], list[SortColumn], ColumnElement[bool]]:
    """Joins what the sort needs; returns the query, the sort columns (run_id last as
    tie-breaker) and the WHERE condition of the filter.

    A sort key that the filter also constrains at its top level (`metrics.accuracy > 0.5 ...
    ORDER BY metrics.accuracy DESC`) is inner-joined and its conjuncts are checked on that
    joined row instead of in an EXISTS: every match has the key, so the database can read
    the (key, value) index in order and stop at the page's end instead of sorting every
    match (100,000 runs: a few hundred index entries instead of a sort of tens of
    thousands)."""
    conjuncts: list[Node] = (
        list(filter_node.operands)
        if isinstance(filter_node, And)
        else ([] if filter_node is None else [filter_node])
    )
    conditions: list[ColumnElement[bool]] = []
    columns: list[SortColumn] = []
    for index, key in enumerate(keys):
        field = key.field
        if "\x00" in field.key:
            raise order_error(field, "has a NUL character in its key")
        if field.kind == "attributes":
            attribute = resolve_attribute(
                field, RUN_ATTRIBUTES, RUN_ATTRIBUTE_ALIASES, "run", "order_by"
            )
            if attribute.column is _runs.c.run_id:
                continue  # always the final tie-breaker below
            columns.append(SortColumn(attribute.column, key.descending))
            continue
        table = _KEY_VALUE_TABLES[field.kind][0].alias(f"sort_{index}")
        match = and_(table.c.run_id == _runs.c.run_id, table.c.key == literal(field.key))
        constraining = [
            c for c in conjuncts if isinstance(c, Comparison | InList) and c.field == field
        ]
        number_compared = False
        if constraining:
            query = query.join(table, match)
            joined = _key_value_field(field, table)
            for conjunct in constraining:
                conjuncts.remove(conjunct)
                conditions.append(joined_condition(conjunct, joined))
                number_compared = number_compared or joined.compares_number(conjunct)
        else:
            query = query.outerjoin(table, match)
        # Params sort by number when they are numbers, then by text. A joined row always
        # has a value, except a metric whose latest value is NaN (stored as NULL), and every
        # metric condition rejects that one; a param has a number where one was compared.
        if field.kind == "params":
            columns.append(SortColumn(table.c.value_num, key.descending, number_compared))
        columns.append(SortColumn(table.c.value, key.descending, never_null=bool(constraining)))
    columns.append(SortColumn(_runs.c.run_id, False, never_null=True))
    remaining = (
        None if not conjuncts else conjuncts[0] if len(conjuncts) == 1 else And(tuple(conjuncts))
    )
    return query, columns, and_(*conditions, compile_run_filter(remaining))


def apply_experiment_order(keys: Sequence[OrderKey]) -> list[SortColumn]:
    columns: list[SortColumn] = []
    for key in keys:
        if key.field.kind != "attributes":
            raise order_error(key.field, "is not sortable for experiments")
        attribute = resolve_attribute(
            key.field, EXPERIMENT_ATTRIBUTES, EXPERIMENT_ATTRIBUTE_ALIASES, "experiment", "order_by"
        )
        if attribute.column is _experiments.c.experiment_id:
            continue
        columns.append(SortColumn(attribute.column, key.descending))
    columns.append(SortColumn(_experiments.c.experiment_id, False))
    return columns


# ---------------------------------------------------------------- value columns


# SQLite joins at most 64 tables in one SELECT. Key-value fields past this many are read with
# correlated scalar subqueries instead (each an index lookup on the (run_id, key) primary
# key), leaving room for the sort joins of order_by.
MAX_JOINED_VALUES = 32


@dataclass(frozen=True)
class ValueColumn:
    """A run's value of one field, joined for reading (QueryRunTable, AggregateRuns)."""

    name: str
    # "number": numeric always (metrics, numeric attributes); "text": text always;
    # "param": text with a parsed numeric twin (numeric when every present value parses).
    kind: Literal["number", "text", "param"]
    # NULL where the run has no value; '' of an optional text attribute (model_type,
    # dataset_id...) counts as none, as it does for `model_type IS NULL` in filters.
    value: Any
    number: Any = None
    # Set when `value` can be NULL although the run has the field (a metric whose latest
    # value is NaN, stored as NULL): not NULL exactly when the run has it.
    present: Any = None


def join_run_values(
    query: Select[Any], fields: Sequence[FieldRef], argument: str
) -> tuple[Select[Any], list[ValueColumn]]:
    """Outer-joins each field's value onto `query`: one indexed join per key-value field, up
    to MAX_JOINED_VALUES, correlated scalar subqueries beyond. May be called more than once
    for one query (AggregateRuns): every join has its own anonymous alias."""
    columns: list[ValueColumn] = []
    joined = 0
    for field in fields:
        name = str(field)
        if field.kind == "attributes":
            attribute = resolve_attribute(
                field, RUN_ATTRIBUTES, RUN_ATTRIBUTE_ALIASES, "run", argument
            )
            if attribute.type in ("int", "time"):
                columns.append(ValueColumn(name, "number", attribute.column))
            elif attribute.nullable_text:
                columns.append(ValueColumn(name, "text", func.nullif(attribute.column, "")))
            else:
                columns.append(ValueColumn(name, "text", attribute.column))
            continue
        model: Any = {"params": ParamRow, "tags": RunTagRow, "metrics": LatestMetricRow}[field.kind]
        table: Any = aliased(model)
        match = and_(table.run_id == _runs.c.run_id, table.key == literal(field.key))
        join = joined < MAX_JOINED_VALUES
        if join:
            joined += 1
            query = query.outerjoin(table, match)

        def read(column: Any, join: bool = join, match: Any = match) -> Any:
            return column if join else select(column).where(match).scalar_subquery()

        if field.kind == "params":
            columns.append(ValueColumn(name, "param", read(table.value), read(table.value_num)))
        elif field.kind == "metrics":
            columns.append(ValueColumn(name, "number", read(table.value), present=read(table.step)))
        else:
            columns.append(ValueColumn(name, "text", read(table.value)))
    return query, columns
