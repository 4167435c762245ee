"""The filter grammar and order_by compiled to parameterized SQL over the tracker's tables.

Semantics, stated once:
- `params.k`, `tags.k`, `metrics.k` (latest value) predicates hold for runs that HAVE the key
  and whose value satisfies the comparison, so `params.k != 'x'` skips runs without `k`;
  `NOT (params.k = 'x')` includes them. `IS NULL` means the key is absent.
- A number compared with a param uses the param's numeric value (`params.depth > 5`
  compares numbers, not strings); a quoted value compares text.
- Time attributes take epoch milliseconds or an ISO-8601 string ('2026-01-31',
  '2026-01-31T12:00:00Z').
- Sorting puts missing values last in both directions; run_id breaks ties, so keyset
  pagination is exact.
Every literal is a bound parameter: values never become SQL text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    true,
)
from sqlalchemy.orm import aliased

from services.common.errors import InvalidArgument
from services.common.filtering import (
    And,
    Comparison,
    FieldRef,
    InList,
    Node,
    Not,
    NullCheck,
    Or,
    OrderKey,
    Value,
)
from services.common.timeutil import parse_time_literal
from services.tracker.store.models import (
    ExperimentRow,
    ExperimentTagRow,
    LatestMetricRow,
    ParamRow,
    RunRow,
    RunTagRow,
    table_of,
)

AttributeType = Literal["text", "int", "time", "status", "lifecycle"]

RUN_STATUSES = ("QUEUED", "RUNNING", "FINISHED", "FAILED", "KILLED")
# A backslash escapes % and _ (and itself) in LIKE patterns on every database: PostgreSQL's
# default, spelled out because SQLite has no default escape character.
LIKE_ESCAPE = "\\"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LIFECYCLE_STATES = ("ACTIVE", "DELETED")


@dataclass(frozen=True)
class Attribute:
    column: Any
    type: AttributeType
    nullable_text: bool = False  # '' counts as missing for IS NULL


_runs = table_of(RunRow)
_experiments = table_of(ExperimentRow)

RUN_ATTRIBUTES: dict[str, Attribute] = {
    "run_id": Attribute(_runs.c.run_id, "text"),
    "run_name": Attribute(_runs.c.run_name, "text"),
    "experiment_id": Attribute(_runs.c.experiment_id, "text"),
    "status": Attribute(_runs.c.status, "status"),
    "start_time": Attribute(_runs.c.start_time, "time"),
    "end_time": Attribute(_runs.c.end_time, "time"),
    "create_time": Attribute(_runs.c.create_time, "time"),
    "update_time": Attribute(_runs.c.update_time, "time"),
    "delete_time": Attribute(_runs.c.delete_time, "time"),
    "lifecycle_state": Attribute(_runs.c.lifecycle_state, "lifecycle"),
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
    "lifecycle_state": Attribute(_experiments.c.lifecycle_state, "lifecycle"),
    "create_time": Attribute(_experiments.c.create_time, "time"),
    "update_time": Attribute(_experiments.c.update_time, "time"),
}
EXPERIMENT_ATTRIBUTE_ALIASES = {"name": "display_name", "id": "experiment_id"}


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    match op:
        case "=":
            return column == value  # type: ignore[no-any-return]
        case "!=":
            return column != value  # type: ignore[no-any-return]
        case "<":
            return column < value  # type: ignore[no-any-return]
        case "<=":
            return column <= value  # type: ignore[no-any-return]
        case ">":
            return column > value  # type: ignore[no-any-return]
        case ">=":
            return column >= value  # type: ignore[no-any-return]
        case "LIKE":
            return column.like(value, escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
        case "NOT LIKE":
            return column.not_like(value, escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
        case "ILIKE":
            return column.ilike(value, escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
        case "NOT ILIKE":
            return column.not_ilike(value, escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
    raise InvalidArgument(f"unsupported operator {op}", field="filter", reason="INVALID_FILTER")


def _bad(field: FieldRef, message: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid filter at position {field.position}: {field} {message}",
        field="filter",
        reason="INVALID_FILTER",
        metadata={"position": field.position, "key": str(field)},
    )


def _text_value(field: FieldRef, value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        return repr(value) if isinstance(value, float) else str(value)
    return str(value)


def _check_literals(field: FieldRef, values: Sequence[Value]) -> None:
    """PostgreSQL text cannot hold NUL: such a key or value is refused on every database
    (nothing stored can contain one) instead of failing inside the query."""
    if "\x00" in field.key:
        raise _bad(field, "has a NUL character in its key")
    if any(isinstance(v, str) and "\x00" in v for v in values):
        raise _bad(field, "is compared with a value that contains a NUL character")


def _check_like_pattern(field: FieldRef, pattern: str) -> None:
    trailing = len(pattern) - len(pattern.rstrip(LIKE_ESCAPE))
    if trailing % 2:
        raise _bad(
            field,
            "has a LIKE pattern that ends with a lone backslash, the escape character; "
            "a literal backslash is written as two",
        )


class _Compiler:
    """Compiles one filter AST against a resolver for its resource's fields."""

    def __init__(self, resolve: Callable[[FieldRef], _FieldSql]) -> None:
        self._resolve = resolve

    def compile(self, node: Node) -> ColumnElement[bool]:
        match node:
            case And(operands=operands):
                return and_(*(self.compile(o) for o in operands))
            case Or(operands=operands):
                return or_(*(self.compile(o) for o in operands))
            case Not(operand=operand):
                return not_(self.compile(operand))
            case Comparison(field=field, op=op, value=value):
                _check_literals(field, [value])
                if "LIKE" in op:
                    _check_like_pattern(field, str(value))
                return self._resolve(field).comparison(op, value)
            case InList(field=field, values=values, negated=negated):
                _check_literals(field, values)
                return self._resolve(field).in_list(values, negated)
            case NullCheck(field=field, negated=negated):
                _check_literals(field, [])
                return self._resolve(field).null_check(negated)
        raise TypeError(f"unknown filter node {node!r}")


class _FieldSql:
    def comparison(self, op: str, value: Value) -> ColumnElement[bool]:
        raise NotImplementedError

    def in_list(self, values: Sequence[Value], negated: bool) -> ColumnElement[bool]:
        raise NotImplementedError

    def null_check(self, negated: bool) -> ColumnElement[bool]:
        raise NotImplementedError


class _KeyValueField(_FieldSql):
    """params / tags / metrics: a correlated EXISTS over a (run_id, key, value) table."""

    def __init__(
        self,
        field: FieldRef,
        table: FromClause,
        owner: Any,
        kind: Literal["param", "tag", "metric", "experiment_tag"],
    ) -> None:
        self.field = field
        self.table = table
        self.kind = kind
        self.link = table.c[owner.key] == owner  # type: ignore[index]
        self.key_match = table.c.key == field.key

    def _exists(self, condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return exists().where(self.link, self.key_match, condition)

    def _value_condition(self, op: str, value: Value) -> ColumnElement[bool]:
        c = self.table.c
        if self.kind == "metric":
            if not _is_number(value):
                raise _bad(self.field, "is a number: compare it with a number, not a string")
            return _compare(c.value, op, float(value))
        if self.kind == "param" and _is_number(value) and "LIKE" not in op:
            return _compare(c.value_num, op, float(value))
        if _is_number(value) and op not in ("=", "!="):
            raise _bad(self.field, "is text: quote the value to compare text")
        if isinstance(value, bool):
            return _compare(func.lower(c.value), op, _text_value(self.field, value))
        return _compare(c.value, op, _text_value(self.field, value))

    def comparison(self, op: str, value: Value) -> ColumnElement[bool]:
        return self._exists(self._value_condition(op, value))

    def in_list(self, values: Sequence[Value], negated: bool) -> ColumnElement[bool]:
        c = self.table.c
        numbers = [float(v) for v in values if _is_number(v)]
        texts = [_text_value(self.field, v) for v in values if not _is_number(v)]
        membership: ColumnElement[bool]
        if self.kind == "metric":
            if texts:
                raise _bad(self.field, "is a number: list numbers only")
            membership = c.value.in_(numbers)
        elif self.kind == "param":
            parts = []
            if numbers:
                parts.append(c.value_num.in_(numbers))
            if texts:
                parts.append(c.value.in_(texts))
            membership = or_(*parts)
        else:
            membership = c.value.in_(
                texts + [_text_value(self.field, n) for n in values if _is_number(n)]
            )
        return self._exists(not_(membership) if negated else membership)

    def null_check(self, negated: bool) -> ColumnElement[bool]:
        present = exists().where(self.link, self.key_match)
        return present if negated else not_(present)


class _AttributeField(_FieldSql):
    def __init__(self, field: FieldRef, attribute: Attribute) -> None:
        self.field = field
        self.attribute = attribute

    def _coerce(self, value: Value, op: str) -> Any:
        kind = self.attribute.type
        if "LIKE" in op:
            if kind in ("int", "time"):
                raise _bad(self.field, "is not text: LIKE does not apply")
            return value
        if kind == "int":
            if not _is_number(value) or float(value) != int(value):  # type: ignore[arg-type]
                raise _bad(self.field, "is an integer: compare it with a whole number")
            return self._int64(value)
        if kind == "time":
            if _is_number(value):
                return self._int64(value)
            if isinstance(value, str):
                try:
                    return parse_time_literal(value)
                except ValueError:
                    raise _bad(
                        self.field,
                        f"is a time: {value!r} is neither epoch milliseconds nor an ISO-8601 date",
                    ) from None
            raise _bad(self.field, "is a time: use epoch milliseconds or an ISO-8601 string")
        if kind in ("status", "lifecycle"):
            allowed = RUN_STATUSES if kind == "status" else LIFECYCLE_STATES
            text = str(value).upper()
            for prefix in ("RUN_STATUS_", "LIFECYCLE_STATE_"):
                text = text.removeprefix(prefix)
            if not isinstance(value, str) or text not in allowed:
                raise _bad(self.field, f"must be one of {', '.join(allowed)}; got {value!r}")
            return text
        if not isinstance(value, str):
            return _text_value(self.field, value)
        return value

    def _int64(self, value: Value) -> int:
        """The columns are 64-bit: a larger number (1e300 is a valid literal) would fail inside
        the database instead of being reported here."""
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise _bad(self.field, f"is a 64-bit integer: {value!r} is out of its range")
        return number

    def comparison(self, op: str, value: Value) -> ColumnElement[bool]:
        return _compare(self.attribute.column, op, self._coerce(value, op))

    def in_list(self, values: Sequence[Value], negated: bool) -> ColumnElement[bool]:
        coerced = [self._coerce(v, "=") for v in values]
        column = self.attribute.column
        return column.not_in(coerced) if negated else column.in_(coerced)  # type: ignore[no-any-return]

    def null_check(self, negated: bool) -> ColumnElement[bool]:
        column = self.attribute.column
        missing: ColumnElement[bool] = column.is_(None)
        if self.attribute.nullable_text:
            missing = or_(missing, column == "")
        return not_(missing) if negated else missing


def _resolve_attribute(
    field: FieldRef,
    attributes: dict[str, Attribute],
    aliases: dict[str, str],
    what: str,
    argument: str = "filter",
) -> Attribute:
    name = aliases.get(field.key, field.key)
    attribute = attributes.get(name)
    if attribute is None:
        raise InvalidArgument(
            f"unknown {what} attribute {field.key!r} in {argument} at position "
            f"{field.position}; known: " + ", ".join(sorted(attributes)),
            field=argument,
            reason="UNKNOWN_FIELD",
            metadata={"position": field.position, "key": field.key},
        )
    return attribute


def _run_field(field: FieldRef) -> _FieldSql:
    owner = _runs.c.run_id
    if field.kind == "params":
        return _KeyValueField(field, table_of(ParamRow), owner, "param")
    if field.kind == "tags":
        return _KeyValueField(field, table_of(RunTagRow), owner, "tag")
    if field.kind == "metrics":
        return _KeyValueField(field, table_of(LatestMetricRow), owner, "metric")
    return _AttributeField(
        field, _resolve_attribute(field, RUN_ATTRIBUTES, RUN_ATTRIBUTE_ALIASES, "run")
    )


def _experiment_field(field: FieldRef) -> _FieldSql:
    if field.kind == "tags":
        return _KeyValueField(
            field, table_of(ExperimentTagRow), _experiments.c.experiment_id, "experiment_tag"
        )
    if field.kind != "attributes":
        raise InvalidArgument(
            f"experiments have no {field.kind}: {field} at position {field.position}",
            field="filter",
            reason="UNKNOWN_FIELD",
            metadata={"position": field.position, "key": str(field)},
        )
    return _AttributeField(
        field,
        _resolve_attribute(
            field, EXPERIMENT_ATTRIBUTES, EXPERIMENT_ATTRIBUTE_ALIASES, "experiment"
        ),
    )


def compile_run_filter(node: Node | None) -> ColumnElement[bool]:
    return true() if node is None else _Compiler(_run_field).compile(node)


def compile_experiment_filter(node: Node | None) -> ColumnElement[bool]:
    return true() if node is None else _Compiler(_experiment_field).compile(node)


# ---------------------------------------------------------------- ordering and keysets


@dataclass(frozen=True)
class SortColumn:
    expression: Any
    descending: bool


def _order_error(field: FieldRef, message: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid order_by: {field} {message}",
        field="order_by",
        reason="INVALID_ORDER_BY",
        metadata={"key": str(field)},
    )


def apply_run_order(
    query: Select[Any], keys: Sequence[OrderKey]
) -> tuple[Select[Any], list[SortColumn]]:
    """Joins what the sort needs and returns the sort columns, run_id last as tie-breaker."""
    columns: list[SortColumn] = []
    for index, key in enumerate(keys):
        field = key.field
        if "\x00" in field.key:
            raise _order_error(field, "has a NUL character in its key")
        if field.kind == "attributes":
            attribute = _resolve_attribute(
                field, RUN_ATTRIBUTES, RUN_ATTRIBUTE_ALIASES, "run", "order_by"
            )
            if attribute.column is _runs.c.run_id:
                continue  # always the final tie-breaker below
            columns.append(SortColumn(attribute.column, key.descending))
            continue
        table: Any = {"params": ParamRow, "tags": RunTagRow, "metrics": LatestMetricRow}[field.kind]
        alias = aliased(table, name=f"sort_{index}")
        query = query.outerjoin(
            alias, and_(alias.run_id == _runs.c.run_id, alias.key == literal(field.key))
        )
        # Params sort by number when they are numbers, then by text.
        if field.kind == "params":
            columns.append(SortColumn(alias.value_num, key.descending))
        columns.append(SortColumn(alias.value, key.descending))
    columns.append(SortColumn(_runs.c.run_id, False))
    return query, columns


def apply_experiment_order(keys: Sequence[OrderKey]) -> list[SortColumn]:
    columns: list[SortColumn] = []
    for key in keys:
        if key.field.kind != "attributes":
            raise _order_error(key.field, "is not sortable for experiments")
        attribute = _resolve_attribute(
            key.field, EXPERIMENT_ATTRIBUTES, EXPERIMENT_ATTRIBUTE_ALIASES, "experiment", "order_by"
        )
        if attribute.column is _experiments.c.experiment_id:
            continue
        columns.append(SortColumn(attribute.column, key.descending))
    columns.append(SortColumn(_experiments.c.experiment_id, False))
    return columns


def order_clauses(columns: Sequence[SortColumn]) -> list[Any]:
    return [
        (c.expression.desc() if c.descending else c.expression.asc()).nulls_last() for c in columns
    ]


def keyset_after(columns: Sequence[SortColumn], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the (nulls-last) order of `columns`."""
    if len(values) != len(columns):
        raise InvalidArgument(
            "page_token does not match the request", field="page_token", reason="INVALID_PAGE_TOKEN"
        )
    alternatives = []
    for i, (column, value) in enumerate(zip(columns, values, strict=True)):
        equal_prefix = [_null_safe_equal(columns[j].expression, values[j]) for j in range(i)]
        if value is None:
            continue  # nothing sorts after NULL within this column (nulls last)
        expr = column.expression
        beyond = expr < value if column.descending else expr > value
        alternatives.append(and_(*equal_prefix, or_(beyond, expr.is_(None))))
    return or_(*alternatives) if alternatives else false()


def _null_safe_equal(expression: Any, value: Any) -> ColumnElement[bool]:
    return expression.is_(None) if value is None else expression == value  # type: ignore[no-any-return]


def select_sort_values(columns: Sequence[SortColumn]) -> list[Any]:
    return [c.expression.label(f"sort_value_{i}") for i, c in enumerate(columns)]
