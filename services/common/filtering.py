"""The one filter and order_by language of every list/search RPC.

A single grammar means clients learn one syntax and every RPC reports a mistake the same way:
an InvalidArgument naming the 0-based position, what was found and what would have been
accepted there, in words rather than parser terminal names.

The grammar runs on lark's LALR parser with a contextual lexer, so a keyword is only a keyword
where the parser can accept one: `params.and` is a key, `note` is an attribute, and `island`
never lexes as IS. The parser is built once at import; a parse keeps all of its state in locals
and lark's per-parse state objects, so concurrent calls are safe.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, cast

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedToken

from services.common.errors import InvalidArgument

__all__ = [
    "MAX_IN_VALUES",
    "MAX_NESTING_DEPTH",
    "MAX_ORDER_BY_KEYS",
    "MAX_PREDICATES",
    "MAX_TEXT_LENGTH",
    "And",
    "Comparison",
    "FieldKind",
    "FieldRef",
    "InList",
    "Node",
    "Not",
    "NullCheck",
    "Or",
    "OrderKey",
    "Value",
    "all_of",
    "field_text",
    "fields_of",
    "parse_field",
    "parse_filter",
    "parse_order_by",
    "quote_text",
]

# Bounds on the work one request can ask of the parser and of the query it becomes.
MAX_TEXT_LENGTH: Final = 10_000
MAX_PREDICATES: Final = 100
MAX_NESTING_DEPTH: Final = 50
MAX_IN_VALUES: Final = 1_000
MAX_ORDER_BY_KEYS: Final = 10

FieldKind: TypeAlias = Literal["params", "metrics", "tags", "attributes"]
Value: TypeAlias = str | int | float | bool

# The tail characters of an identifier. A keyword only counts as one when no such character
# follows, which is what keeps `island` from lexing as IS followed by `land`.
_NAME_CHARS = r"A-Za-z0-9_.\/:-"
_WORD_END = rf"(?![{_NAME_CHARS}])"
_KEYWORDS = ("and", "or", "not", "in", "like", "ilike", "is", "null", "true", "false")
# A key after `prefix.`: keywords are plain keys there (`params.and`).
_KEY_PATTERN = rf"[A-Za-z_][{_NAME_CHARS}]*"
# A bare attribute: the same shape, minus the keywords, so that `status AND x` is reported as a
# missing operator instead of comparing an attribute named AND.
_BARE_PATTERN = rf"(?!(?:{'|'.join(_KEYWORDS)}){_WORD_END}){_KEY_PATTERN}"
_PREFIX_PATTERN = r"(?:params?|metrics?|tags?|attributes?|attr)\."

_GRAMMAR = rf"""
?filter: or_expr
or_expr: and_expr (_OR and_expr)*
and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr                                     -> negation
         | _LPAR or_expr _RPAR
         | field EQ_OP value                                -> comparison
         | field ORD_OP ordered                             -> comparison
         | field [NOT] LIKE_OP text                         -> like
         | field [NOT] _IN _LPAR value (_COMMA value)* _RPAR  -> in_list
         | field _IS [NOT] _NULL                            -> null_check

order_by: order_key (_COMMA order_key)*
order_key: field [DIRECTION]

field: PREFIX_DOT (KEY | BACKTICK_KEY | DQ_STRING) | BARE_NAME | BACKTICK_KEY
value: SQ_STRING | DQ_STRING | NUMBER | TRUE | FALSE
ordered: SQ_STRING | DQ_STRING | NUMBER
text: SQ_STRING | DQ_STRING

PREFIX_DOT.3: /{_PREFIX_PATTERN}/i
BARE_NAME: /{_BARE_PATTERN}/i
KEY: /{_KEY_PATTERN}/
BACKTICK_KEY: /`(?:[^`]|``)*`/
SQ_STRING: /'(?:[^'\\]|\\[\s\S]|'')*'/
DQ_STRING: /"(?:[^"\\]|\\[\s\S]|"")*"/
NUMBER: /[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?{_WORD_END}/
EQ_OP: /==|=|!=|<>/
ORD_OP: /<=|>=|<(?!>)|>/
_LPAR: "("
_RPAR: ")"
_COMMA: ","
_AND.2: /and{_WORD_END}/i
_OR.2: /or{_WORD_END}/i
NOT.2: /not{_WORD_END}/i
_IN.2: /in{_WORD_END}/i
LIKE_OP.2: /i?like{_WORD_END}/i
_IS.2: /is{_WORD_END}/i
_NULL.2: /null{_WORD_END}/i
TRUE.2: /true{_WORD_END}/i
FALSE.2: /false{_WORD_END}/i
DIRECTION.2: /(?:asc|desc){_WORD_END}/i
WHITESPACE: /\s+/
%ignore WHITESPACE
"""

_KEY_RE = re.compile(_KEY_PATTERN)
_BARE_RE = re.compile(_BARE_PATTERN, re.IGNORECASE)
_PREFIX_RE = re.compile(_PREFIX_PATTERN, re.IGNORECASE)
_KINDS: Final[dict[str, FieldKind]] = {
    "param": "params",
    "params": "params",
    "metric": "metrics",
    "metrics": "metrics",
    "tag": "tags",
    "tags": "tags",
    "attr": "attributes",
    "attribute": "attributes",
    "attributes": "attributes",
}


def _start(token: Token) -> int:
    """Where a token starts; lark types it as optional, but its lexer always sets it."""
    return cast(int, token.start_pos)


def _backtick(key: str) -> str:
    return "`" + key.replace("`", "``") + "`"


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A field as the caller wrote it, normalized to its kind.

    `position` is for pointing at the field in later errors (unknown attribute, wrong type); it
    takes no part in equality or hashing, so the same field written twice compares equal.
    """

    kind: FieldKind
    key: str
    position: int = field(compare=False)

    def __str__(self) -> str:
        """Canonical text that parses back to this field, so errors can quote it safely."""
        if self.kind == "attributes":
            plain = _BARE_RE.fullmatch(self.key) and not _PREFIX_RE.match(self.key)
            return self.key if plain else _backtick(self.key)
        key = self.key if _KEY_RE.fullmatch(self.key) else _backtick(self.key)
        return f"{self.kind}.{key}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """`field op value` with op one of = != < <= > >= LIKE ILIKE NOT LIKE NOT ILIKE."""

    field: FieldRef
    op: str
    value: Value


@dataclass(frozen=True, slots=True)
class InList:
    field: FieldRef
    values: tuple[Value, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class NullCheck:
    """IS NULL (negated=False) or IS NOT NULL (negated=True)."""

    field: FieldRef
    negated: bool


@dataclass(frozen=True, slots=True)
class And:
    """Flattened, so a query builder emits one flat conjunction however it was parenthesized."""

    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Flattened like And."""

    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


Node: TypeAlias = Comparison | InList | NullCheck | And | Or | Not


@dataclass(frozen=True, slots=True)
class OrderKey:
    field: FieldRef
    descending: bool


class _Problem(Exception):
    """A positioned mistake found while parsing; the driver adds the text and the caret."""

    def __init__(self, position: int, found: str, expected: str) -> None:
        super().__init__(position, found, expected)
        self.position = position
        self.found = found
        self.expected = expected


_ESCAPES: Final = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_STRING_PIECES: Final = {
    "'": re.compile(r"\\([\s\S])|''"),
    '"': re.compile(r'\\([\s\S])|""'),
}
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _unquote(token: Token) -> str:
    raw = str(token)
    quote = raw[0]

    def piece(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped is None:
            return quote
        try:
            return _ESCAPES[escaped]
        except KeyError:
            raise _Problem(
                _start(token) + 1 + match.start(),
                found=_show("\\" + escaped),
                expected="one of \\', \\\", \\\\, \\n or \\t after a backslash",
            ) from None

    return _STRING_PIECES[quote].sub(piece, raw[1:-1])


def _number(token: Token) -> int | float:
    text = str(token)
    if any(c in text for c in ".eE"):
        number = float(text)
        if not math.isfinite(number):
            raise _Problem(_start(token), _show(text), "a number within the range of a double")
        return number
    # The length test comes first: int() refuses to parse more than a few thousand digits.
    if len(text) > 20 or not _INT64_MIN <= int(text) <= _INT64_MAX:
        raise _Problem(_start(token), _show(text), "an integer that fits in 64 bits")
    return int(text)


def _key(token: Token) -> str:
    if token.type == "BACKTICK_KEY":
        key = str(token)[1:-1].replace("``", "`")
    elif token.type == "DQ_STRING":
        key = _unquote(token)
    else:
        key = str(token)
    if not key:
        raise _Problem(_start(token), _show(str(token)), "a non-empty key")
    return key


def _flatten(kind: type[And] | type[Or], operands: tuple[Node, ...]) -> Node:
    if len(operands) == 1:
        return operands[0]
    flat: list[Node] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, kind) else (operand,))
    return kind(tuple(flat))


@v_args(inline=True)
class _ToAst(Transformer[Token, Any]):
    """Builds the AST during the LALR reductions; holds no state, so one instance serves all."""

    def or_expr(self, *operands: Node) -> Node:
        return _flatten(Or, operands)

    def and_expr(self, *operands: Node) -> Node:
        return _flatten(And, operands)

    def negation(self, _not: Token, operand: Node) -> Not:
        return Not(operand)

    def comparison(self, ref: FieldRef, op: Token, value: Value) -> Comparison:
        return Comparison(ref, {"==": "=", "<>": "!="}.get(str(op), str(op)), value)

    def like(self, ref: FieldRef, negated: Token | None, op: Token, value: str) -> Comparison:
        return Comparison(ref, ("NOT " if negated else "") + op.upper(), value)

    def in_list(self, ref: FieldRef, negated: Token | None, *values: Value) -> InList:
        return InList(ref, values, negated is not None)

    def null_check(self, ref: FieldRef, negated: Token | None) -> NullCheck:
        return NullCheck(ref, negated is not None)

    def field(self, first: Token, key: Token | None = None) -> FieldRef:
        if key is None:
            return FieldRef("attributes", _key(first), _start(first))
        return FieldRef(_KINDS[first[:-1].lower()], _key(key), _start(first))

    def value(self, token: Token) -> Value:
        if token.type == "NUMBER":
            return _number(token)
        if token.type in ("TRUE", "FALSE"):
            return token.type == "TRUE"
        return _unquote(token)

    def ordered(self, token: Token) -> str | int | float:
        return _number(token) if token.type == "NUMBER" else _unquote(token)

    def text(self, token: Token) -> str:
        return _unquote(token)

    def order_by(self, *keys: OrderKey) -> list[OrderKey]:
        return list(keys)

    def order_key(self, ref: FieldRef, direction: Token | None) -> OrderKey:
        return OrderKey(ref, direction is not None and direction.upper() == "DESC")


_PARSER: Final = Lark(
    _GRAMMAR,
    parser="lalr",
    lexer="contextual",
    start=["filter", "order_by"],
    transformer=_ToAst(),
    maybe_placeholders=True,
)

# What the parser can accept next, in words. Related terminals that are all acceptable read
# better as one phrase (a state after a field accepts every operator); anything the groups do
# not claim is described terminal by terminal, in _TERMINAL_WORDS order.
_GROUPS: Final = (
    ("BARE_NAME", frozenset({"BARE_NAME", "PREFIX_DOT", "BACKTICK_KEY"}), "a field name"),
    (
        "KEY",
        frozenset({"KEY", "BACKTICK_KEY", "DQ_STRING"}),
        'a key (a name, a `quoted` key or a "quoted" key)',
    ),
    (
        "EQ_OP",
        frozenset({"EQ_OP", "ORD_OP", "NOT", "LIKE_OP", "_IN", "_IS"}),
        "an operator (=, !=, <, <=, >, >=, [NOT] LIKE, [NOT] ILIKE, [NOT] IN or IS [NOT] NULL)",
    ),
    (
        "TRUE",
        frozenset({"SQ_STRING", "DQ_STRING", "NUMBER", "TRUE", "FALSE"}),
        "a value (a quoted string, a number, TRUE or FALSE)",
    ),
    (
        "NUMBER",
        frozenset({"SQ_STRING", "DQ_STRING", "NUMBER"}),
        "a value (a quoted string or a number)",
    ),
    ("SQ_STRING", frozenset({"SQ_STRING", "DQ_STRING"}), "a quoted string"),
)
_TERMINAL_WORDS: Final = {
    "BARE_NAME": ("a field name",),
    "PREFIX_DOT": ("a field name",),
    "KEY": ("a key",),
    "BACKTICK_KEY": ("a `quoted` key",),
    "EQ_OP": ("=", "!="),
    "ORD_OP": ("<", "<=", ">", ">="),
    "SQ_STRING": ("a quoted string",),
    "DQ_STRING": ("a quoted string",),
    "NUMBER": ("a number",),
    "TRUE": ("TRUE",),
    "FALSE": ("FALSE",),
    "NOT": ("NOT",),
    "LIKE_OP": ("LIKE", "ILIKE"),
    "_IN": ("IN",),
    "_IS": ("IS",),
    "_NULL": ("NULL",),
    "_AND": ("AND",),
    "_OR": ("OR",),
    "_LPAR": ("'('",),
    "_RPAR": ("')'",),
    "DIRECTION": ("ASC", "DESC"),
    "_COMMA": ("','",),
}
_VALUE_TERMINALS: Final = frozenset({"SQ_STRING", "DQ_STRING", "NUMBER", "TRUE", "FALSE"})


def _describe_expected(accepted: set[str], noun: str) -> str:
    rest = set(accepted)
    items: list[str] = []
    for anchor, members, phrase in _GROUPS:
        if anchor in rest:
            items.append(phrase)
            rest -= members
    for name, words in _TERMINAL_WORDS.items():
        if name in rest:
            items.extend(words)
    if "$END" in rest:
        items.append(f"the end of the {noun}")
    items = list(dict.fromkeys(items))
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} or {items[1]}"
    return "one of " + ", ".join(items[:-1]) + " or " + items[-1]


def _show(snippet: str) -> str:
    """Quote source text for a message, visibly and briefly, whatever characters it holds."""
    if len(snippet) > 40:
        snippet = snippet[:37] + "..."
    snippet = "".join(c if c.isprintable() else repr(c)[1:-1] for c in snippet)
    if snippet[0] in "'\"`":
        return snippet
    return f'"{snippet}"' if "'" in snippet else f"'{snippet}'"


_WORD_RE = re.compile(rf"[+{_NAME_CHARS}]+")


def _show_unlexable(text: str, position: int) -> str:
    char = text[position]
    if char in "'\"":
        return "an unterminated string"
    if char == "`":
        return "an unterminated `quoted` key"
    word = _WORD_RE.match(text, position)
    return _show(word.group() if word else char)


def _pointer(text: str, position: int) -> str:
    """The text (a window of it, if long) on one line and a caret under `position`."""
    start = max(0, position - 50)
    end = min(len(text), position + 30)
    before = "..." if start else ""
    after = "..." if end < len(text) else ""
    shown = "".join(c if c.isprintable() else " " for c in text[start:end])
    return f"  {before}{shown}{after}\n  {' ' * (len(before) + position - start)}^"


@dataclass(frozen=True, slots=True)
class _Language:
    start: str
    noun: str
    reason: str


_FILTER: Final = _Language("filter", "filter", "INVALID_FILTER")
_ORDER_BY: Final = _Language("order_by", "order_by", "INVALID_ORDER_BY")


def _error(language: _Language, text: str, problem: _Problem, hint: str = "") -> InvalidArgument:
    return InvalidArgument(
        f"invalid {language.noun} at position {problem.position}: expected {problem.expected} "
        f"but found {problem.found}{hint}\n{_pointer(text, problem.position)}",
        field=language.noun,
        reason=language.reason,
        metadata={
            "position": problem.position,
            "found": problem.found,
            "expected": problem.expected,
        },
    )


# After these a NOT belongs to the predicate (`x NOT IN`, `x IS NOT NULL`) and nests nothing.
_BEFORE_PREDICATE_NOT: Final = frozenset({"BARE_NAME", "KEY", "BACKTICK_KEY", "DQ_STRING", "_IS"})


class _Guard:
    """Limits that need the token stream: parentheses leave no trace in the AST and values
    carry no positions.

    Nesting depth counts the parentheses and prefix NOTs around the current token. NOTs are
    counted per parenthesis level (`not_run`): they end at the next AND/OR at that level, or,
    if they preceded a parenthesis, when it closes (saved in `outer_runs`).
    """

    __slots__ = ("depth", "list_values", "not_run", "outer_runs", "previous")

    def __init__(self) -> None:
        self.depth = 0
        self.not_run = 0
        self.outer_runs: list[int] = []
        self.list_values: int | None = None
        self.previous = ""

    def see(self, token: Token) -> None:
        kind = token.type
        if kind == "NOT" and self.previous not in _BEFORE_PREDICATE_NOT:
            self.not_run += 1
            self._deeper(token)
        elif kind == "_LPAR" and self.previous == "_IN":
            self.list_values = 0
        elif kind == "_LPAR":
            self.outer_runs.append(self.not_run)
            self.not_run = 0
            self._deeper(token)
        elif kind == "_RPAR" and self.list_values is not None:
            self.list_values = None
        elif kind == "_RPAR" and self.outer_runs:
            self.depth -= self.not_run + 1 + self.outer_runs.pop()
            self.not_run = 0
        elif kind in ("_AND", "_OR"):
            self.depth -= self.not_run
            self.not_run = 0
        elif kind in _VALUE_TERMINALS and self.list_values is not None:
            self.list_values += 1
            if self.list_values > MAX_IN_VALUES:
                raise _Problem(
                    _start(token),
                    f"{self.list_values:,}",
                    f"at most {MAX_IN_VALUES:,} values in an IN list",
                )
        self.previous = kind

    def _deeper(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING_DEPTH:
            raise _Problem(
                _start(token),
                str(self.depth),
                f"at most {MAX_NESTING_DEPTH} levels of nesting (parentheses and NOTs)",
            )


def _accepted(language: _Language, tokens: list[Token], position: int) -> set[str]:
    """The terminals acceptable just before `position`.

    Replays the tokens before it into a fresh parser and asks it. The failed parser is no
    source: it rejects `)` in `a = 1 )` only after reducing the whole expression, where AND and
    OR are no longer acceptable, and its LALR lookahead sets are merged across contexts (they
    offer ',' after `(a = 1`).
    """
    replay = _PARSER.parse_interactive("", start=language.start)
    for token in tokens:
        if _start(token) >= position:
            break
        replay.feed_token(token)
    return set(replay.accepts())  # type: ignore[no-untyped-call]


def _parse(text: str, language: _Language) -> Any:
    """Run the parser, turning every way it can fail into a positioned problem."""
    if len(text) > MAX_TEXT_LENGTH:
        problem = _Problem(
            MAX_TEXT_LENGTH, f"{len(text):,} characters", f"at most {MAX_TEXT_LENGTH:,} characters"
        )
        raise _error(language, text, problem)
    parser = _PARSER.parse_interactive(text, start=language.start)
    guard = _Guard()
    tokens: list[Token] = []
    found_null = False
    try:
        for token in parser.iter_parse():
            tokens.append(token)
            guard.see(token)
        return parser.feed_token(Token("$END", ""))
    except _Problem as problem:
        raise _error(language, text, problem) from None
    except UnexpectedCharacters as exc:
        position = cast(int, exc.pos_in_stream)
        found = _show_unlexable(text, position)
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            position = len(text)
            found = f"the end of the {language.noun}"
        else:
            position = _start(exc.token)
            found = _show(text[position : exc.token.end_pos])
        found_null = exc.token.type == "_NULL"
    accepted = _accepted(language, tokens, position)
    hint = ""
    if found_null and accepted & _VALUE_TERMINALS:
        hint = " (test for a missing value with IS NULL or IS NOT NULL)"
    expected = _describe_expected(accepted, language.noun)
    raise _error(language, text, _Problem(position, found, expected), hint) from None


def parse_filter(text: str | None) -> Node | None:
    """Parse a filter; None or blank text means "no filter" and gives None."""
    if text is None:
        return None
    if len(text) <= MAX_TEXT_LENGTH and not text.strip():
        return None
    node: Node = _parse(text, _FILTER)
    fields = fields_of(node)
    if len(fields) > MAX_PREDICATES:
        problem = _Problem(
            fields[MAX_PREDICATES].position,
            f"{len(fields)} predicates",
            f"at most {MAX_PREDICATES} predicates",
        )
        raise _error(_FILTER, text, problem)
    return node


def fields_of(node: Node | None) -> list[FieldRef]:
    """Every field referenced, in source order, so callers can validate names before querying."""
    found: list[FieldRef] = []
    pending: list[Node] = [] if node is None else [node]
    while pending:
        current = pending.pop()
        if isinstance(current, And | Or):
            pending.extend(reversed(current.operands))
        elif isinstance(current, Not):
            pending.append(current.operand)
        else:
            found.append(current.field)
    return found


def parse_order_by(text: str | None) -> list[OrderKey]:
    """Parse `field [ASC|DESC], ...`; None or blank text means the RPC's default order."""
    if text is None:
        return []
    if len(text) <= MAX_TEXT_LENGTH and not text.strip():
        return []
    keys: list[OrderKey] = _parse(text, _ORDER_BY)
    if len(keys) > MAX_ORDER_BY_KEYS:
        problem = _Problem(
            keys[MAX_ORDER_BY_KEYS].field.position,
            f"{len(keys)} keys",
            f"at most {MAX_ORDER_BY_KEYS} keys",
        )
        raise _error(_ORDER_BY, text, problem)
    seen: set[FieldRef] = set()
    for key in keys:
        if key.field in seen:
            problem = _Problem(key.field.position, f"{key.field} again", "each field at most once")
            raise _error(_ORDER_BY, text, problem)
        seen.add(key.field)
    return keys


def parse_field(text: str, argument: str) -> FieldRef:
    """One field reference ("metrics.val_loss", "params.`learning-rate`", "status"), with the
    same key syntax as filters; errors name `argument` (e.g. "columns") as their field."""
    noun = f"{argument} entry"
    try:
        keys = parse_order_by(text)
    except InvalidArgument as error:

        def reworded(message: str) -> str:
            return message.replace("invalid order_by", f"invalid {noun}", 1).replace(
                "the end of the order_by", f"the end of the {noun}"
            )

        raise InvalidArgument(
            reworded(error.message),
            field=argument,
            reason="INVALID_FIELD",
            metadata={k: reworded(v) for k, v in error.metadata.items() if k != "field"},
        ) from None
    # A trailing ASC is a direction only when it is a token of its own (after a space, a
    # quoted key...): `params.asc` and `status_asc` are plain fields.
    direction = re.search(rf"[^{_NAME_CHARS}]asc\Z", text.strip(), re.IGNORECASE)
    if len(keys) != 1 or keys[0].descending or direction:
        raise InvalidArgument(
            f"invalid {noun} {text[:200]!r}: expected one field such as "
            "metrics.accuracy, params.lr or status",
            field=argument,
            reason="INVALID_FIELD",
        )
    return keys[0].field


def quote_text(value: str) -> str:
    """A string literal of the filter grammar that parses back to exactly `value`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def field_text(kind: FieldKind, key: str) -> str:
    """Canonical filter text of a field (quoted with backticks when the key needs it)."""
    return str(FieldRef(kind, key, 0))


def all_of(*conditions: str) -> str:
    """Filter text that holds when every non-empty condition holds."""
    parts = [c.strip() for c in conditions if c and c.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " AND ".join(f"({p})" for p in parts)
