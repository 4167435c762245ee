"""MLflow's search syntax translated into Cairn's filter and order_by grammar.

MLflow clients send filters such as ``metrics.acc > 0.5 and params.model = 'xgb'`` and
order_by items such as ``metrics.acc DESC``. This module parses that syntax (the same one
mlflow.utils.search_utils accepts) into a small tree, checks it against MLflow's rules and
writes Cairn's equivalent text, which the tracker parses and validates once more.

Accepted beyond MLflow (Cairn evaluates it anyway): OR, NOT and parentheses; IN lists and
IS [NOT] NULL on every field; numeric comparisons of params; unquoted keys with `-`, `/` and
`:`; ISO-8601 strings for the time attributes. Rejected with a message naming the culprit:
anything Cairn cannot evaluate (`attributes.artifact_uri`, `datasets.*`).

Names MLflow derives from Cairn attributes are translated, so they search the attribute:
``tags.mlflow.runName`` and ``attributes.run_name`` -> run_name, ``tags.mlflow.user`` and
``attributes.user_id`` -> user, ``tags.mlflow.note.content`` -> note (a run's description),
``created`` -> start_time, and status SCHEDULED -> QUEUED.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from services.gateway.mlflow.protocol import MlflowError, invalid_parameter

Value: TypeAlias = str | int | float
ValueKind: TypeAlias = Literal["number", "text", "time", "status", "param"]

# Tags that MLflow keeps as tags but Cairn holds as run attributes.
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
NOTE_TAG = "mlflow.note.content"

MLFLOW_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")

_ENTITIES = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
    "dataset": "datasets",
    "datasets": "datasets",
}
_KEYWORDS = frozenset({"AND", "OR", "NOT", "LIKE", "ILIKE", "IN", "IS", "NULL", "ASC", "DESC"})
_COMPARATORS = frozenset({"=", "!=", "<", "<=", ">", ">="})
_ORDERING = frozenset({"<", "<=", ">", ">="})

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.:/\-]*[A-Za-z0-9_])?")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.])")
_OPERATOR = re.compile(r"!=|<>|==|<=|>=|=|<|>")
_CAIRN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bounds on the work one filter may ask for (Cairn's parser has the same ones).
MAX_FILTER_LENGTH = 10_000
MAX_NESTING_DEPTH = 50


# ---------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class _Token:
    kind: Literal["ident", "string", "number", "op", "kw", "(", ")", ",", "end"]
    text: str
    position: int
    value: Value = ""
    entity: str | None = None  # identifiers: the part before the first dot, if any
    key: str = ""  # identifiers: the key (the whole name when there is no entity)


def _quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """The content of a quoted run starting at `start` and the index after it. A doubled
    quote stands for the quote itself, and in strings so does a backslash before it (as
    sqlparse reads MLflow filters)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and quote != "`" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
            out.append(text[i + 1])
            i += 2
        elif char == quote and text[i + 1 : i + 2] == quote:
            out.append(quote)
            i += 2
        elif char == quote:
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    raise invalid_parameter(f"unterminated {what} starting at position {start}")


def _tokens(text: str, noun: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char in "(),":
            tokens.append(_Token(char, char, i))  # type: ignore[arg-type]
            i += 1
            continue
        if char in "'\"":
            value, end = _quoted(text, i, char, "string")
            tokens.append(_Token("string", text[i:end], i, value))
            i = end
            continue
        operator = _OPERATOR.match(text, i)
        if operator:
            tokens.append(_Token("op", operator.group(), i))
            i = operator.end()
            continue
        number = _NUMBER.match(text, i)
        if number:
            literal = number.group()
            tokens.append(_Token("number", literal, i, _number(literal, i)))
            i = number.end()
            continue
        if char == "`" or _WORD.match(text, i):
            token, i = _identifier(text, i)
            tokens.append(token)
            continue
        raise invalid_parameter(
            f"Invalid {noun} {_show(text)}: unexpected character {char!r} at position {i}"
        )
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _number(literal: str, position: int) -> int | float:
    """A numeric literal: an int when it is one of at most 18 digits, else a finite double."""
    if not any(c in literal for c in ".eE") and len(literal.lstrip("+-")) <= 18:
        return int(literal)
    value = float(literal)  # never raises for this syntax; out-of-range values are inf
    if math.isinf(value):
        raise invalid_parameter(
            f"the number {_show(literal)} at position {position} is beyond the range of a "
            "64-bit floating point value"
        )
    return value


def _identifier(text: str, start: int) -> tuple[_Token, int]:
    if text[start] == "`":
        head, end = _quoted(text, start, "`", "`quoted` name")
        quoted = True
    else:
        match = _WORD.match(text, start)
        assert match is not None
        head, end = match.group(), match.end()
        quoted = False
    if end < len(text) and text[end] == "." and end + 1 < len(text):
        after = end + 1
        if text[after] in '`"':
            key, stop = _quoted(text, after, text[after], "quoted key")
        else:
            bare = _BARE_KEY.match(text, after)
            if bare is None:
                raise invalid_parameter(
                    f"expected a key after {_show(text[start:after])} at position {after}; "
                    "quote keys with unusual characters in backticks: tags.`my key`"
                )
            key, stop = bare.group(), bare.end()
        return _Token("ident", text[start:stop], start, entity=head, key=key), stop
    if not quoted and head.upper() in _KEYWORDS:
        return _Token("kw", head, start, head.upper()), end
    return _Token("ident", text[start:end], start, key=head), end


def _show(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:197] + "...")


def _show_value(value: Value) -> str:
    return _show(value) if isinstance(value, str) else repr(value)


# ---------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Field:
    entity: str  # metrics, params, tags, attributes, datasets
    key: str
    text: str  # as written, for messages
    position: int


@dataclass(frozen=True)
class Comparison:
    field: Field
    op: str  # = != < <= > >= LIKE ILIKE NOT LIKE NOT ILIKE
    value: Value


@dataclass(frozen=True)
class InList:
    field: Field
    values: tuple[Value, ...]
    negated: bool


@dataclass(frozen=True)
class NullCheck:
    field: Field
    negated: bool


@dataclass(frozen=True)
class Junction:
    op: Literal["AND", "OR"]
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Negation:
    operand: Node


Node: TypeAlias = Comparison | InList | NullCheck | Junction | Negation


class _Parser:
    def __init__(self, text: str, noun: str) -> None:
        if len(text) > MAX_FILTER_LENGTH:
            raise invalid_parameter(
                f"Invalid {noun}: {len(text):,} characters; the limit is {MAX_FILTER_LENGTH:,}"
            )
        self.text = text
        self.noun = noun
        self.tokens = _tokens(text, noun)
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at(self, kind: str) -> bool:
        return self.tokens[self.index].kind == kind

    def at_keyword(self, *words: str) -> bool:
        return self.current.kind == "kw" and self.current.value in words

    def fail(self, expected: str) -> MlflowError:
        token = self.current
        found = "the end" if token.kind == "end" else _show(token.text)
        return invalid_parameter(
            f"Invalid {self.noun} {_show(self.text)}: expected {expected} "
            f"at position {token.position}, found {found}"
        )

    def field(self) -> Field:
        token = self.current
        if token.kind != "ident":
            raise self.fail("a field such as metrics.<key>, params.<key>, tags.<key> or status")
        self.advance()
        if token.entity is None:
            return Field("attributes", token.key, token.text, token.position)
        entity = _ENTITIES.get(token.entity)
        if entity is None:
            raise invalid_parameter(
                f"Invalid entity type {_show(token.entity)} in {_show(token.text)} (position "
                f"{token.position}). Valid values are ['metric', 'parameter', 'tag', "
                "'attribute', 'dataset']"
            )
        return Field(entity, token.key, token.text, token.position)

    # filter := or_expr
    def filter(self) -> Node:
        node = self.or_expr()
        if not self.at("end"):
            raise self.fail("AND, OR or the end of the filter")
        return node

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.at_keyword("OR"):
            self.advance()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Junction("OR", tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.unary()]
        while self.at_keyword("AND"):
            self.advance()
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else Junction("AND", tuple(operands))

    def unary(self) -> Node:
        if not (self.at_keyword("NOT") or self.at("(")):
            return self.comparison()
        self.depth += 1
        if self.depth > MAX_NESTING_DEPTH:
            raise self.fail(f"at most {MAX_NESTING_DEPTH} levels of parentheses and NOTs")
        node: Node
        if self.at_keyword("NOT"):
            self.advance()
            node = Negation(self.unary())
        else:
            self.advance()
            node = self.or_expr()
            if not self.at(")"):
                raise self.fail("')'")
            self.advance()
        self.depth -= 1
        return node

    def value(self) -> Value:
        token = self.current
        if token.kind in ("string", "number"):
            self.advance()
            return token.value
        raise self.fail("a value (a quoted string or a number)")

    def comparison(self) -> Node:
        field = self.field()
        token = self.current
        if token.kind == "op":
            self.advance()
            if token.text not in _COMPARATORS:
                raise invalid_parameter(
                    f"Invalid comparator '{token.text}' at position {token.position}; "
                    f"use one of {sorted(_COMPARATORS)}, LIKE, ILIKE, IN or IS NULL"
                )
            return Comparison(field, token.text, self.value())
        negated = False
        if self.at_keyword("NOT"):
            self.advance()
            negated = True
            if not self.at_keyword("LIKE", "ILIKE", "IN"):
                raise self.fail("LIKE, ILIKE or IN after NOT")
        if self.at_keyword("LIKE", "ILIKE"):
            op = str(self.advance().value)
            if not self.at("string"):
                raise self.fail(f"a quoted pattern after {op}")
            return Comparison(field, ("NOT " if negated else "") + op, self.advance().value)
        if self.at_keyword("IN"):
            self.advance()
            if not self.at("("):
                raise self.fail("'(' after IN")
            self.advance()
            values = [self.value()]
            while self.at(","):
                self.advance()
                values.append(self.value())
            if not self.at(")"):
                raise self.fail("',' or ')' in the IN list")
            self.advance()
            return InList(field, tuple(values), negated)
        if self.at_keyword("IS"):
            self.advance()
            is_not = False
            if self.at_keyword("NOT"):
                self.advance()
                is_not = True
            if not self.at_keyword("NULL"):
                raise self.fail("NULL")
            self.advance()
            return NullCheck(field, is_not)
        raise self.fail(f"a comparison operator after {_show(field.text)}")


# ---------------------------------------------------------------------- Cairn text


def _cairn_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _cairn_value(value: Value) -> str:
    if isinstance(value, str):
        return _cairn_string(value)
    return repr(value)


def _cairn_key(entity: str, key: str) -> str:
    if _CAIRN_KEY.fullmatch(key):
        return f"{entity}.{key}"
    return f"{entity}.`" + key.replace("`", "``") + "`"


@dataclass(frozen=True)
class Target:
    """A Cairn field and how its values are checked and written."""

    text: str  # Cairn's spelling, for example metrics.`acc` or start_time
    kind: ValueKind
    map_value: Callable[[str], str] | None = None  # e.g. SCHEDULED -> QUEUED


Resolver: TypeAlias = Callable[[Field], Target]


def _status_value(value: str) -> str:
    upper = value.upper()
    if upper not in MLFLOW_STATUSES:
        raise invalid_parameter(
            f"Invalid run status {_show(value)}; valid statuses are {list(MLFLOW_STATUSES)}"
        )
    return "QUEUED" if upper == "SCHEDULED" else upper


def _run_target(field: Field) -> Target:
    entity, key = field.entity, field.key
    if entity == "metrics":
        return Target(_cairn_key("metrics", key), "number")
    if entity == "params":
        return Target(_cairn_key("params", key), "param")
    if entity == "tags":
        special = {RUN_NAME_TAG: "run_name", USER_TAG: "user", NOTE_TAG: "note"}.get(key)
        if special is not None:
            return Target(special, "text")
        return Target(_cairn_key("tags", key), "text")
    if entity == "datasets":
        raise invalid_parameter(
            f"{_show(field.text)}: dataset filters are not supported; Cairn records no "
            "dataset inputs"
        )
    attribute = RUN_ATTRIBUTES.get(key)
    if attribute is None:
        if key == "artifact_uri":
            raise invalid_parameter(
                "attribute 'artifact_uri' cannot be searched: Cairn derives every run's "
                "artifact URI from its ids; search attributes.run_id instead"
            )
        raise invalid_parameter(
            f"Invalid attribute key {_show(key)} specified. Valid keys are "
            f"{sorted(k for k in RUN_ATTRIBUTES if k != 'run name')}"
        )
    return attribute


RUN_ATTRIBUTES: dict[str, Target] = {
    "run_id": Target("run_id", "text"),
    "run_name": Target("run_name", "text"),
    "run name": Target("run_name", "text"),
    "Run name": Target("run_name", "text"),
    "Run Name": Target("run_name", "text"),
    "status": Target("status", "status", _status_value),
    "user_id": Target("user", "text"),
    "start_time": Target("start_time", "time"),
    "created": Target("start_time", "time"),
    "Created": Target("start_time", "time"),
    "end_time": Target("end_time", "time"),
}


def experiment_target(default_id: Callable[[str], str]) -> Resolver:
    """The resolver for experiment searches; `default_id` maps the MLflow id "0" (and any
    other id) to Cairn's."""

    def resolve(field: Field) -> Target:
        if field.entity == "tags":
            if field.key == NOTE_TAG:
                return Target("description", "text")
            return Target(_cairn_key("tags", field.key), "text")
        if field.entity != "attributes":
            raise invalid_parameter(
                f"Invalid entity type in {_show(field.text)}: experiments are searched by "
                "attributes (name, experiment_id, creation_time, last_update_time) and tags"
            )
        target = {
            "name": Target("display_name", "text"),
            "experiment_id": Target("experiment_id", "text", default_id),
            "creation_time": Target("create_time", "time"),
            "last_update_time": Target("update_time", "time"),
        }.get(field.key)
        if target is None:
            raise invalid_parameter(
                f"Invalid attribute key {_show(field.key)} specified. Valid keys are "
                "['creation_time', 'experiment_id', 'last_update_time', 'name']"
            )
        return target

    return resolve


def _check_value(field: Field, target: Target, op: str, value: Value) -> str:
    """Cairn's text for one value of `field` compared with `op`."""
    kind = target.kind
    if "LIKE" in op:
        if kind in ("number", "time"):
            raise invalid_parameter(
                f"Invalid comparator '{op}' for {_show(field.text)}: it is numeric; use one of "
                f"{sorted(_COMPARATORS)}"
            )
        if not isinstance(value, str):
            raise invalid_parameter(f"{op} needs a quoted pattern for {_show(field.text)}")
        return _cairn_string(value)
    if kind == "number":
        if isinstance(value, str):
            raise invalid_parameter(
                f"Expected numeric value type for metric. Found {_show(value)} "
                f"(comparing {_show(field.text)})"
            )
        return repr(value)
    if kind == "time":
        return _cairn_value(value)
    if kind == "param":
        if isinstance(value, str) and op in _ORDERING:
            raise invalid_parameter(
                f"Invalid comparator '{op}' for {_show(field.text)} with a quoted value: params "
                "compare with =, !=, LIKE, ILIKE, IN and IS NULL, or with <, >, <=, >= "
                "against a number"
            )
        return _cairn_value(value)
    # text and status
    if op in _ORDERING:
        raise invalid_parameter(
            f"Invalid comparator '{op}' for {_show(field.text)}; valid comparators are "
            "['!=', '=', 'LIKE', 'ILIKE', 'IN', 'NOT IN', 'IS NULL', 'IS NOT NULL']"
        )
    if not isinstance(value, str):
        raise invalid_parameter(
            f"Expected a quoted string value for {_show(field.text)} (e.g. 'my-value'). "
            f"Got value {_show_value(value)}"
        )
    if target.map_value is not None:
        value = target.map_value(value)
    return _cairn_string(value)


def _emit(node: Node, resolve: Resolver) -> str:
    if isinstance(node, Junction):
        parts = []
        for operand in node.operands:
            text = _emit(operand, resolve)
            needs_parens = isinstance(operand, Junction) and operand.op != node.op
            parts.append(f"({text})" if needs_parens else text)
        return f" {node.op} ".join(parts)
    if isinstance(node, Negation):
        inner = _emit(node.operand, resolve)
        return f"NOT ({inner})" if isinstance(node.operand, Junction) else f"NOT {inner}"
    target = resolve(node.field)
    if isinstance(node, NullCheck):
        return f"{target.text} IS {'NOT ' if node.negated else ''}NULL"
    if isinstance(node, InList):
        values = ", ".join(_check_value(node.field, target, "=", v) for v in node.values)
        return f"{target.text} {'NOT ' if node.negated else ''}IN ({values})"
    return f"{target.text} {node.op} {_check_value(node.field, target, node.op, node.value)}"


def _translate_filter(text: str | None, resolve: Resolver) -> str:
    if text is None or not text.strip():
        return ""
    return _emit(_Parser(text, "filter").filter(), resolve)


def parse_filter(text: str | None) -> Node | None:
    """The tree of an MLflow filter (None for none), for filters evaluated by the gateway."""
    if text is None or not text.strip():
        return None
    return _Parser(text, "filter").filter()


def run_filter(text: str | None) -> str:
    """Cairn's filter for an MLflow SearchRuns filter ('' for none)."""
    return _translate_filter(text, _run_target)


def experiment_filter(text: str | None, default_id: Callable[[str], str]) -> str:
    """Cairn's filter for an MLflow SearchExperiments filter ('' for none)."""
    return _translate_filter(text, experiment_target(default_id))


def _order_item(item: str, resolve: Resolver) -> str:
    parser = _Parser(item, "order_by clause")
    field = parser.field()
    direction = "ASC"
    if parser.at_keyword("ASC", "DESC"):
        direction = str(parser.advance().value)
    if not parser.at("end"):
        raise parser.fail("ASC, DESC or the end of the clause")
    target = resolve(field)
    return f"{target.text} {direction}"


def _translate_order_by(items: Sequence[str], resolve: Resolver) -> str:
    return ", ".join(_order_item(item, resolve) for item in items if item.strip())


def run_order_by(items: Sequence[str]) -> str:
    """Cairn's order_by for MLflow's order_by list, such as ["metrics.acc DESC"]."""
    return _translate_order_by(items, _run_target)


def _experiment_order_target(field: Field) -> Target:
    if field.entity != "attributes":
        raise invalid_parameter(
            f"Invalid order_by key {_show(field.text)}: experiments sort by name, experiment_id, "
            "creation_time or last_update_time"
        )
    return experiment_target(lambda value: value)(field)


def experiment_order_by(items: Sequence[str]) -> str:
    """Cairn's order_by for MLflow's SearchExperiments order_by list."""
    return _translate_order_by(items, _experiment_order_target)
