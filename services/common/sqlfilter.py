"""Filter ASTs (services.common.filtering) compiled to parameterized SQLAlchemy, and keyset
pagination over any sort order. Services describe their fields; this module knows SQL.

Building blocks:
- `Attribute` / `AttributeField`: a column of the listed resource (text, 64-bit integer,
  time as epoch milliseconds or ISO-8601 text, or an enum of allowed words).
- `KeyValueField`: a correlated EXISTS over a (owner, key, value) table, e.g. a run's params:
  a predicate holds for owners that HAVE the key and whose value satisfies it, so
  `params.k != 'x'` skips owners without `k` while `NOT params.k = 'x'` includes them;
  IS NULL means the key is absent.
- `compile_filter(node, resolve)`: the AST to one boolean SQL expression.
- `SortColumn`, `order_clauses`, `keyset_after`: missing values sort last in both
  directions; the last column must be unique, so pagination is exact.
Every literal is a bound parameter: values never become SQL text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement, FromClause, and_, exists, false, func, not_, or_, true

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
    Value,
)
from services.common.timeutil import parse_time_literal

AttributeType = Literal["text", "int", "time", "enum"]
ValueKind = Literal["text", "number", "text_or_number"]

# A backslash escapes % and _ (and itself) in LIKE patterns on every database: PostgreSQL's
# default, spelled out because SQLite has no default escape character.
LIKE_ESCAPE = "\\"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Attribute:
    column: Any
    type: AttributeType
    nullable_text: bool = False  # '' counts as missing for IS NULL
    # For "enum": the allowed words, and prefixes a value may carry (RUN_STATUS_FINISHED).
    choices: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = field(default=())


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


def filter_error(field: FieldRef, message: str) -> InvalidArgument:
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
        raise filter_error(field, "has a NUL character in its key")
    if any(isinstance(v, str) and "\x00" in v for v in values):
        raise filter_error(field, "is compared with a value that contains a NUL character")


def _check_like_pattern(field: FieldRef, pattern: str) -> None:
    trailing = len(pattern) - len(pattern.rstrip(LIKE_ESCAPE))
    if trailing % 2:
        raise filter_error(
            field,
            "has a LIKE pattern that ends with a lone backslash, the escape character; "
            "a literal backslash is written as two",
        )


class FilterCompiler:
    """Compiles one filter AST against a resolver for its resource's fields."""

    def __init__(self, resolve: Callable[[FieldRef], FieldSql]) -> None:
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
                _check_comparison(field, op, value)
                return self._resolve(field).comparison(op, value)
            case InList(field=field, values=values, negated=negated):
                _check_literals(field, values)
                return self._resolve(field).in_list(values, negated)
            case NullCheck(field=field, negated=negated):
                _check_literals(field, [])
                return self._resolve(field).null_check(negated)
        raise TypeError(f"unknown filter node {node!r}")


def _check_comparison(field: FieldRef, op: str, value: Value) -> None:
    _check_literals(field, [value])
    if "LIKE" in op:
        _check_like_pattern(field, str(value))


def joined_condition(node: Comparison | InList, field: KeyValueField) -> ColumnElement[bool]:
    """`node`'s condition on the row of `field`'s table itself, without the EXISTS: for a
    conjunct whose row the query already inner-joins (a sort key the filter constrains).
    Equivalent to the EXISTS because an owner has at most one row per key."""
    if isinstance(node, Comparison):
        _check_comparison(node.field, node.op, node.value)
        return field.value_condition(node.op, node.value)
    _check_literals(node.field, node.values)
    return field.membership(node.values, node.negated)


class FieldSql:
    def comparison(self, op: str, value: Value) -> ColumnElement[bool]:
        raise NotImplementedError

    def in_list(self, values: Sequence[Value], negated: bool) -> ColumnElement[bool]:
        raise NotImplementedError

    def null_check(self, negated: bool) -> ColumnElement[bool]:
        raise NotImplementedError


class KeyValueField(FieldSql):
    """A correlated EXISTS over an (owner, key, value) table such as a run's params.

    value_kind says what its values are: "number" (a float `value` column: metrics),
    "text" (tags), or "text_or_number" (a text `value` plus its parsed `value_num`, so a
    numeric literal compares numbers: params)."""

    def __init__(
        self, field: FieldRef, table: FromClause, owner: Any, value_kind: ValueKind
    ) -> None:
        self.field = field
        self.table = table
        self.value_kind = value_kind
        self.link = table.c[owner.key] == owner  # type: ignore[index]
        self.key_match = table.c.key == field.key

    def _exists(self, condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return exists().where(self.link, self.key_match, condition)

    def compares_number(self, node: Comparison | InList) -> bool:
        """Whether `node` compares this field's parsed number (value_num), so that a row it
        accepts has one."""
        return (
            self.value_kind == "text_or_number"
            and isinstance(node, Comparison)
            and _is_number(node.value)
            and "LIKE" not in node.op
        )

    def value_condition(self, op: str, value: Value) -> ColumnElement[bool]:
        c = self.table.c
        if self.value_kind == "number":
            if not _is_number(value):
                raise filter_error(
                    self.field, "is a number: compare it with a number, not a string"
                )
            return _compare(c.value, op, float(value))
        if self.value_kind == "text_or_number" and _is_number(value) and "LIKE" not in op:
            return _compare(c.value_num, op, float(value))
        if _is_number(value) and op not in ("=", "!="):
            raise filter_error(self.field, "is text: quote the value to compare text")
        if isinstance(value, bool):
            return _compare(func.lower(c.value), op, _text_value(self.field, value))
        return _compare(c.value, op, _text_value(self.field, value))

    def comparison(self, op: str, value: Value) -> ColumnElement[bool]:
        return self._exists(self.value_condition(op, value))

    def in_list(self, values: Sequence[Value], negated: bool) -> ColumnElement[bool]:
        return self._exists(self.membership(values, negated))

    def membership(self, values: Sequence[Value], negated: bool) -> ColumnElement[bool]:
        c = self.table.c
        numbers = [float(v) for v in values if _is_number(v)]
        texts = [_text_value(self.field, v) for v in values if not _is_number(v)]
        membership: ColumnElement[bool]
        if self.value_kind == "number":
            if texts:
                raise filter_error(self.field, "is a number: list numbers only")
            membership = c.value.in_(numbers)
        elif self.value_kind == "text_or_number":
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
        return not_(membership) if negated else membership

    def null_check(self, negated: bool) -> ColumnElement[bool]:
        present = exists().where(self.link, self.key_match)
        return present if negated else not_(present)


class AttributeField(FieldSql):
    def __init__(self, field: FieldRef, attribute: Attribute) -> None:
        self.field = field
        self.attribute = attribute

    def _coerce(self, value: Value, op: str) -> Any:
        kind = self.attribute.type
        if "LIKE" in op:
            if kind in ("int", "time"):
                raise filter_error(self.field, "is not text: LIKE does not apply")
            return value
        if kind == "int":
            if not _is_number(value) or float(value) != int(value):  # type: ignore[arg-type]
                raise filter_error(self.field, "is an integer: compare it with a whole number")
            return self._int64(value)
        if kind == "time":
            if _is_number(value):
                return self._int64(value)
            if isinstance(value, str):
                try:
                    return parse_time_literal(value)
                except ValueError:
                    raise filter_error(
                        self.field,
                        f"is a time: {value!r} is neither epoch milliseconds nor an ISO-8601 date",
                    ) from None
            raise filter_error(
                self.field, "is a time: use epoch milliseconds or an ISO-8601 string"
            )
        if kind == "enum":
            allowed = self.attribute.choices
            text = str(value).upper()
            for prefix in self.attribute.prefixes:
                text = text.removeprefix(prefix)
            if not isinstance(value, str) or text not in allowed:
                raise filter_error(
                    self.field, f"must be one of {', '.join(allowed)}; got {value!r}"
                )
            return text
        if not isinstance(value, str):
            return _text_value(self.field, value)
        return value

    def _int64(self, value: Value) -> int:
        """The columns are 64-bit: a larger number (1e300 is a valid literal) would fail inside
        the database instead of being reported here."""
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise filter_error(self.field, f"is a 64-bit integer: {value!r} is out of its range")
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


def resolve_attribute(
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


def compile_filter(
    node: Node | None, resolve: Callable[[FieldRef], FieldSql]
) -> ColumnElement[bool]:
    return true() if node is None else FilterCompiler(resolve).compile(node)


@dataclass(frozen=True)
class SortColumn:
    expression: Any
    descending: bool
    # The query guarantees a value (an inner join whose filter rejects NULL): a plain ASC/DESC
    # then lets the database read an index in order instead of sorting every match (no
    # index gives PostgreSQL's DESC NULLS LAST without a sort).
    never_null: bool = False


def order_error(field: FieldRef, message: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid order_by: {field} {message}",
        field="order_by",
        reason="INVALID_ORDER_BY",
        metadata={"key": str(field)},
    )


def order_clauses(columns: Sequence[SortColumn]) -> list[Any]:
    clauses = []
    for column in columns:
        clause = column.expression.desc() if column.descending else column.expression.asc()
        clauses.append(clause if column.never_null else clause.nulls_last())
    return clauses


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
        if not column.never_null:
            beyond = or_(beyond, expr.is_(None))
        alternatives.append(and_(*equal_prefix, beyond))
    return or_(*alternatives) if alternatives else false()


def _null_safe_equal(expression: Any, value: Any) -> ColumnElement[bool]:
    return expression.is_(None) if value is None else expression == value  # type: ignore[no-any-return]


def select_sort_values(columns: Sequence[SortColumn]) -> list[Any]:
    return [c.expression.label(f"sort_value_{i}") for i, c in enumerate(columns)]
