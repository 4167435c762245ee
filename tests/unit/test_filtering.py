"""The shared filter / order_by language: what parses to what, and how mistakes are reported."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import InvalidArgument, StatusCode
from services.common.filtering import (
    _PARSER,
    _TERMINAL_WORDS,
    MAX_IN_VALUES,
    MAX_NESTING_DEPTH,
    MAX_ORDER_BY_KEYS,
    MAX_PREDICATES,
    MAX_TEXT_LENGTH,
    And,
    Comparison,
    FieldKind,
    FieldRef,
    InList,
    Node,
    Not,
    NullCheck,
    Or,
    OrderKey,
    Value,
    _describe_expected,
    fields_of,
    parse_filter,
    parse_order_by,
)


def ref(key: str, kind: FieldKind = "attributes", position: int = 0) -> FieldRef:
    return FieldRef(kind, key, position)


def cmp(key: str, op: str, value: Value, kind: FieldKind = "attributes") -> Comparison:
    return Comparison(ref(key, kind), op, value)


def parse(text: str) -> Node:
    node = parse_filter(text)
    assert node is not None
    return node


def parse_error(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text)
    return caught.value


def order_by_error(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        parse_order_by(text)
    return caught.value


def single_value(text: str) -> Value:
    node = parse(text)
    assert isinstance(node, Comparison)
    return node.value


# --- what parses to what -----------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", " ", "\t\n  "])
def test_blank_filter_means_no_filter(text: str | None) -> None:
    assert parse_filter(text) is None
    assert fields_of(None) == []


@pytest.mark.parametrize(
    ("written", "op"),
    [
        ("=", "="),
        ("==", "="),
        ("!=", "!="),
        ("<>", "!="),
        ("<", "<"),
        ("<=", "<="),
        (">", ">"),
        (">=", ">="),
    ],
)
def test_comparison_operators_normalize(written: str, op: str) -> None:
    assert parse(f"metrics.acc {written} 0.5") == cmp("acc", op, 0.5, "metrics")
    assert parse(f"metrics.acc{written}0.5") == cmp("acc", op, 0.5, "metrics")


@pytest.mark.parametrize(
    ("written", "op"),
    [("LIKE", "LIKE"), ("ILIKE", "ILIKE"), ("NOT LIKE", "NOT LIKE"), ("not ilike", "NOT ILIKE")],
)
def test_like_operators(written: str, op: str) -> None:
    assert parse(f"tags.note {written} 'exp-%'") == cmp("note", op, "exp-%", "tags")


def test_equality_accepts_every_kind_of_value() -> None:
    assert single_value("a = 'x'") == "x"
    assert single_value('a != "x"') == "x"
    assert single_value("a = TRUE") is True
    assert single_value("a <> false") is False
    assert single_value("a < 'b'") == "b"


def test_in_and_not_in() -> None:
    assert parse("params.opt IN ('adam', 'sgd')") == InList(
        ref("opt", "params"), ("adam", "sgd"), negated=False
    )
    node = parse('params.bs NOT IN (1, 2.5, "x", TRUE)')
    assert node == InList(ref("bs", "params"), (1, 2.5, "x", True), negated=True)
    assert isinstance(node, InList)
    assert [type(v) for v in node.values] == [int, float, str, bool]
    assert parse("a in(1)") == InList(ref("a"), (1,), negated=False)


def test_is_null_and_is_not_null() -> None:
    assert parse("tags.owner IS NULL") == NullCheck(ref("owner", "tags"), negated=False)
    assert parse("tags.owner IS NOT NULL") == NullCheck(ref("owner", "tags"), negated=True)


def test_precedence_not_over_and_over_or() -> None:
    a, b, c = cmp("a", "=", 1), cmp("b", "=", 2), cmp("c", "=", 3)
    assert parse("a = 1 OR b = 2 AND c = 3") == Or((a, And((b, c))))
    assert parse("a = 1 AND b = 2 OR c = 3") == Or((And((a, b)), c))
    assert parse("NOT a = 1 AND b = 2") == And((Not(a), b))
    assert parse("NOT a = 1 OR b = 2") == Or((Not(a), b))
    assert parse("NOT NOT a = 1") == Not(Not(a))


def test_parentheses_override_precedence() -> None:
    a, b, c = cmp("a", "=", 1), cmp("b", "=", 2), cmp("c", "=", 3)
    assert parse("(a = 1 OR b = 2) AND c = 3") == And((Or((a, b)), c))
    assert parse("NOT (a = 1 AND b = 2)") == Not(And((a, b)))
    assert parse("((a = 1))") == a
    assert parse("(((a = 1)) OR ((b = 2)))") == Or((a, b))


def test_and_or_are_flattened() -> None:
    a, b, c, d = (cmp(k, "=", i) for i, k in enumerate("abcd", start=1))
    assert parse("a = 1 AND b = 2 AND c = 3 AND d = 4") == And((a, b, c, d))
    assert parse("a = 1 OR b = 2 OR c = 3") == Or((a, b, c))
    assert parse("(a = 1 AND b = 2) AND (c = 3 AND d = 4)") == And((a, b, c, d))
    assert parse("a = 1 OR (b = 2 OR c = 3)") == Or((a, b, c))
    # Only same-operator nesting flattens; NOT is a boundary.
    assert parse("a = 1 AND NOT (b = 2 AND c = 3)") == And((a, Not(And((b, c)))))
    assert parse("(a = 1 OR b = 2) AND (c = 3 OR d = 4)") == And((Or((a, b)), Or((c, d))))


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r"'it\'s'", "it's"),
        ("'it''s'", "it's"),
        (r"'say \"hi\"'", 'say "hi"'),
        ("'a\"\"b'", 'a""b'),
        (r"'back\\slash'", "back\\slash"),
        (r"'\\\\'", "\\\\"),
        (r"'line\nnext'", "line\nnext"),
        (r"'tab\tstop'", "tab\tstop"),
        (r'"it\'s"', "it's"),
        ('"say ""hi"""', 'say "hi"'),
        ("\"a''b\"", "a''b"),
        (r'"back\\slash"', "back\\slash"),
        (r'"\n\t"', "\n\t"),
        ("''", ""),
        ('""', ""),
        ("'unicode é 漢字 ✓'", "unicode é 漢字 ✓"),
        ("'AND OR NOT ( ) , = IS NULL'", "AND OR NOT ( ) , = IS NULL"),
        ("'multi\nline'", "multi\nline"),
    ],
)
def test_string_literals_and_escapes(literal: str, value: str) -> None:
    assert single_value(f"tags.t = {literal}") == value


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("1", 1),
        ("-2", -2),
        ("+3", 3),
        ("007", 7),
        ("9223372036854775807", 9223372036854775807),
        ("-9223372036854775808", -9223372036854775808),
        ("0.5", 0.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1e-3", 0.001),
        ("3.2E+4", 32000.0),
        ("1E3", 1000.0),
        ("-1.5e2", -150.0),
    ],
)
def test_numbers_keep_int_and_float_apart(literal: str, value: float) -> None:
    parsed = single_value(f"metrics.m > {literal}")
    assert parsed == value
    assert type(parsed) is type(value)


def test_true_and_false_are_booleans_in_any_case() -> None:
    for literal, value in [("TRUE", True), ("true", True), ("True", True), ("FALSE", False)]:
        parsed = single_value(f"params.flag = {literal}")
        assert parsed is value


def test_injection_attempts_are_just_values() -> None:
    assert single_value("params.x = 'a''; DROP TABLE runs; --'") == "a'; DROP TABLE runs; --"
    assert single_value("params.x = '1'' OR ''1''=''1'") == "1' OR '1'='1"
    assert single_value('params.x = "x\\"; DELETE FROM runs; --"') == 'x"; DELETE FROM runs; --'
    assert parse("params.`x = 1 OR 1` = 1") == cmp("x = 1 OR 1", "=", 1, "params")


@pytest.mark.parametrize(
    ("written", "kind"),
    [
        ("params", "params"),
        ("param", "params"),
        ("PARAMS", "params"),
        ("metrics", "metrics"),
        ("Metric", "metrics"),
        ("tags", "tags"),
        ("TAG", "tags"),
        ("attributes", "attributes"),
        ("attribute", "attributes"),
        ("attr", "attributes"),
        ("Attr", "attributes"),
    ],
)
def test_prefixes_normalize_to_kinds(written: str, kind: FieldKind) -> None:
    assert parse(f"{written}.Key = 1") == cmp("Key", "=", 1, kind)


def test_field_without_prefix_is_an_attribute() -> None:
    assert parse("status = 'FINISHED'") == cmp("status", "=", "FINISHED")
    assert parse("attributes.status = 'FINISHED'") == parse("status = 'FINISHED'")


@pytest.mark.parametrize(
    ("field", "kind", "key"),
    [
        ("params.a.b", "params", "a.b"),
        ("metrics.val/loss", "metrics", "val/loss"),
        ("tags.mlflow.runName", "tags", "mlflow.runName"),
        ("params.learning-rate", "params", "learning-rate"),
        ("tags.k8s:pod", "tags", "k8s:pod"),
        ("params._private", "params", "_private"),
        ("metrics.`val loss`", "metrics", "val loss"),
        ("params.`a``b`", "params", "a`b"),
        ("params.`x = 1`", "params", "x = 1"),
        ('params."my key"', "params", "my key"),
        ('tags."say ""hi"""', "tags", 'say "hi"'),
        (r'tags."tab\there"', "tags", "tab\there"),
        ("`start time`", "attributes", "start time"),
        ("`and`", "attributes", "and"),
        ("params.and", "params", "and"),
        ("metrics.NOT", "metrics", "NOT"),
        ("tags.null", "tags", "null"),
        ("tags.is", "tags", "is"),
        ("params.in.out", "params", "in.out"),
        ("run.id", "attributes", "run.id"),
    ],
)
def test_field_keys(field: str, kind: FieldKind, key: str) -> None:
    assert parse(f"{field} = 1") == cmp(key, "=", 1, kind)


@pytest.mark.parametrize(
    "name",
    [
        "note",
        "notes",
        "nothing",
        "index",
        "inner",
        "in_progress",
        "island",
        "isolated",
        "order",
        "origin",
        "or_else",
        "android",
        "nullable",
        "likes",
        "ilikes",
        "true_count",
        "falsey",
        "not.x",
        "asc",
        "desc",
    ],
)
def test_keyword_like_attribute_names(name: str) -> None:
    assert parse(f"{name} = 1") == cmp(name, "=", 1)
    assert parse(f"{name} IS NOT NULL AND {name} IN (1)") == And(
        (NullCheck(ref(name), negated=True), InList(ref(name), (1,), negated=False))
    )


def test_keywords_are_case_insensitive() -> None:
    text = (
        "a = 1 and not b iS nOt NuLl Or c iN (TrUe) AND d nOt LiKe 'x' and e IlIkE 'y' "
        "AnD f Not In (1)"
    )
    assert parse(text) == Or(
        (
            And((cmp("a", "=", 1), Not(NullCheck(ref("b"), negated=True)))),
            And(
                (
                    InList(ref("c"), (True,), negated=False),
                    cmp("d", "NOT LIKE", "x"),
                    cmp("e", "ILIKE", "y"),
                    InList(ref("f"), (1,), negated=True),
                )
            ),
        )
    )


def test_whitespace_is_insignificant() -> None:
    assert parse("\n\ta=1\tAND\n(b\r\n=  2)  ") == parse("a = 1 AND (b = 2)")


def test_field_positions_and_fields_of_in_source_order() -> None:
    text = "a = 1 AND (params.b IN (2) OR NOT metrics.`c d` < 3) AND tags.e IS NULL"
    fields = fields_of(parse(text))
    assert [(f.kind, f.key) for f in fields] == [
        ("attributes", "a"),
        ("params", "b"),
        ("metrics", "c d"),
        ("tags", "e"),
    ]
    assert [f.position for f in fields] == [
        0,
        text.index("params.b"),
        text.index("metrics."),
        text.index("tags.e"),
    ]


def test_field_position_does_not_affect_equality() -> None:
    assert FieldRef("params", "lr", 0) == FieldRef("params", "lr", 17)
    assert hash(FieldRef("params", "lr", 0)) == hash(FieldRef("params", "lr", 17))
    assert FieldRef("params", "lr", 0) != FieldRef("metrics", "lr", 0)


@pytest.mark.parametrize(
    ("field", "text"),
    [
        (ref("status"), "status"),
        (ref("note"), "note"),
        (ref("run.id"), "run.id"),
        (ref("and"), "`and`"),
        (ref("NULL"), "`NULL`"),
        (ref("params.x"), "`params.x`"),
        (ref("Attr.x"), "`Attr.x`"),
        (ref("start time"), "`start time`"),
        (ref("1st"), "`1st`"),
        (ref("lr", "params"), "params.lr"),
        (ref("a.b", "params"), "params.a.b"),
        (ref("and", "params"), "params.and"),
        (ref("val/loss", "metrics"), "metrics.val/loss"),
        (ref("val loss", "metrics"), "metrics.`val loss`"),
        (ref("a`b", "tags"), "tags.`a``b`"),
        (ref("x", "attributes"), "x"),
    ],
)
def test_field_str_is_canonical_and_parses_back(field: FieldRef, text: str) -> None:
    assert str(field) == text
    assert fields_of(parse(f"{field} = 1")) == [field]


# --- errors --------------------------------------------------------------------------------

VALUE = "a value (a quoted string, a number, TRUE or FALSE)"
NON_BOOL = "a value (a quoted string or a number)"
START = "one of a field name, NOT or '('"
AFTER_PREDICATE = "one of AND, OR or the end of the filter"
IN_GROUP = "one of AND, OR or ')'"
OPERATOR = "an operator (=, !=, <, <=, >, >=, [NOT] LIKE, [NOT] ILIKE, [NOT] IN or IS [NOT] NULL)"
KEY = 'a key (a name, a `quoted` key or a "quoted" key)'
END = "the end of the filter"


@pytest.mark.parametrize(
    ("text", "position", "expected", "found"),
    [
        ("a = 1 #", 6, AFTER_PREDICATE, "'#'"),
        ("a = 1 foo", 6, AFTER_PREDICATE, "'foo'"),
        ("a = 1)", 5, AFTER_PREDICATE, "')'"),
        ("(a = 1 foo", 7, IN_GROUP, "'foo'"),
        ("(a = 1", 6, IN_GROUP, END),
        ("a = 1 AND (b = 2", 16, IN_GROUP, END),
        ("(a = 1 OR b = 2) AND (c = 3 d", 28, IN_GROUP, "'d'"),
        ("a = 'abc", 4, VALUE, "an unterminated string"),
        ('a = "abc', 4, VALUE, "an unterminated string"),
        ("a = 'abc\\'", 4, VALUE, "an unterminated string"),
        ("`abc = 1", 0, START, "an unterminated `quoted` key"),
        ("params.`x = 1", 7, KEY, "an unterminated `quoted` key"),
        ("()", 1, START, "')'"),
        ("a = 1 AND ()", 11, START, "')'"),
        ("a = 1 AND", 9, START, END),
        ("a = 1 OR", 8, START, END),
        ("a = 1 OR OR b = 2", 9, START, "'OR'"),
        ("AND a = 1", 0, START, "'AND'"),
        ("NOT", 3, START, END),
        ("a = 1 AND NOT", 13, START, END),
        ("true = 1", 0, START, "'true'"),
        ("and = 1", 0, START, "'and'"),
        ("x IN ()", 6, VALUE, "')'"),
        ("x IN (1,)", 8, VALUE, "')'"),
        ("x IN (1, 2", 10, "')' or ','", END),
        ("x IN 1", 5, "'('", "'1'"),
        ("x IN (a)", 6, VALUE, "'a'"),
        ("x IS 5", 5, "NOT or NULL", "'5'"),
        ("x IS NOT 5", 9, "NULL", "'5'"),
        ("x IS", 4, "NOT or NULL", END),
        ("x LIKE 5", 7, "a quoted string", "'5'"),
        ("x NOT ILIKE TRUE", 12, "a quoted string", "'TRUE'"),
        ("x < TRUE", 4, NON_BOOL, "'TRUE'"),
        ("x >= false", 5, NON_BOOL, "'false'"),
        ("x NOT = 1", 6, "one of LIKE, ILIKE or IN", "'='"),
        ("status AND x", 7, OPERATOR, "'AND'"),
        ("status", 6, OPERATOR, END),
        ("a b = 1", 2, OPERATOR, "'b'"),
        ("a ! 1", 2, OPERATOR, "'!'"),
        ("island = 1 island", 11, AFTER_PREDICATE, "'island'"),
        ("a = 'x' 'y'", 8, AFTER_PREDICATE, "'y'"),
        ("a IS NULL NULL", 10, AFTER_PREDICATE, "'NULL'"),
        ("a = ", 4, VALUE, END),
        ("a == = 1", 5, VALUE, "'='"),
        ("a = -", 4, VALUE, "'-'"),
        ("a = 1AND b = 2", 4, VALUE, "'1AND'"),
        ("a = 1.", 4, VALUE, "'1.'"),
        ("a = foo", 4, VALUE, "'foo'"),
        ("params. = 1", 8, KEY, "'='"),
        ("params.", 7, KEY, END),
        ("a\x00= 1", 1, OPERATOR, "'\\x00'"),
        # Not syntax errors but still positioned: the token is well-formed, its content is not.
        (
            "a = '\\x'",
            5,
            "one of \\', \\\", \\\\, \\n or \\t after a backslash",
            "'\\x'",
        ),
        ("a = 9223372036854775808", 4, "an integer that fits in 64 bits", "'9223372036854775808'"),
        ("a = 1" + "0" * 5000, 4, "an integer that fits in 64 bits", "'1" + "0" * 36 + "...'"),
        ("a = 1e999", 4, "a number within the range of a double", "'1e999'"),
        ("`` = 1", 0, "a non-empty key", "``"),
        ('params."" = 1', 7, "a non-empty key", '""'),
    ],
)
def test_invalid_filters(text: str, position: int, expected: str, found: str) -> None:
    error = parse_error(text)
    assert error.code is StatusCode.INVALID_ARGUMENT
    assert error.field == "filter"
    assert error.reason == "INVALID_FILTER"
    assert error.metadata == {
        "field": "filter",
        "position": str(position),
        "found": found,
        "expected": expected,
    }
    first_line = error.message.split("\n")[0]
    assert first_line.startswith(
        f"invalid filter at position {position}: expected {expected} but found {found}"
    )


def test_null_as_a_value_gets_a_hint() -> None:
    error = parse_error("a = NULL")
    assert error.metadata["position"] == "4"
    assert error.metadata["expected"] == VALUE
    assert error.message.split("\n")[0].endswith(
        "but found 'NULL' (test for a missing value with IS NULL or IS NOT NULL)"
    )


def test_error_message_points_at_the_position() -> None:
    error = parse_error("params.x IN (1, 2, )")
    assert error.message == (
        "invalid filter at position 19: expected "
        "a value (a quoted string, a number, TRUE or FALSE) but found ')'\n"
        "  params.x IN (1, 2, )\n"
        "                     ^"
    )


def test_error_pointer_in_a_long_filter_shows_a_window() -> None:
    text = " AND ".join(f"p{i} = {i}" for i in range(60)) + " AND oops"
    error = parse_error(text)
    position = int(error.metadata["position"])
    assert position == len(text)
    _, shown, caret = error.message.split("\n")
    assert shown.startswith("  ...")
    assert len(shown) < 100
    assert caret.strip() == "^"
    assert shown[: caret.index("^")].endswith("oops")


def test_error_pointer_stays_aligned_with_control_characters() -> None:
    text = "a = 1\nAND\tb = 2 )"
    error = parse_error(text)
    _, shown, caret = error.message.split("\n")
    assert shown == "  a = 1 AND b = 2 )"
    assert caret.index("^") - 2 == text.index(")")


def test_every_terminal_has_human_words() -> None:
    terminals = {t.name for t in _PARSER.terminals} - {"WHITESPACE"}
    assert terminals == set(_TERMINAL_WORDS)
    for name in terminals:
        words = _describe_expected({name}, "filter")
        assert words
        assert not INTERNAL_NAMES.search(words), (name, words)


# --- order_by -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   "])
def test_blank_order_by_is_empty(text: str | None) -> None:
    assert parse_order_by(text) == []


def test_order_by() -> None:
    assert parse_order_by("metrics.f1 DESC, start_time") == [
        OrderKey(ref("f1", "metrics"), descending=True),
        OrderKey(ref("start_time"), descending=False),
    ]
    text = 'a asc,b Desc , `c d` DESC,params."e f",  tags.g.h'
    keys = parse_order_by(text)
    assert keys == [
        OrderKey(ref("a"), descending=False),
        OrderKey(ref("b"), descending=True),
        OrderKey(ref("c d"), descending=True),
        OrderKey(ref("e f", "params"), descending=False),
        OrderKey(ref("g.h", "tags"), descending=False),
    ]
    assert [k.field.position for k in keys] == [
        text.index(part) for part in ("a ", "b ", "`c", "params", "tags")
    ]
    assert parse_order_by("desc desc") == [OrderKey(ref("desc"), descending=True)]
    assert parse_order_by("params.and") == [OrderKey(ref("and", "params"), descending=False)]


ORDER_END = "the end of the order_by"


@pytest.mark.parametrize(
    ("text", "position", "expected", "found"),
    [
        ("a,", 2, "a field name", ORDER_END),
        ("a, ", 3, "a field name", ORDER_END),
        (",a", 0, "a field name", "','"),
        ("a,,b", 2, "a field name", "','"),
        ("a down", 2, "one of ASC, DESC, ',' or the end of the order_by", "'down'"),
        ("a ASC DESC", 6, "',' or the end of the order_by", "'DESC'"),
        ("a = 1", 2, "one of ASC, DESC, ',' or the end of the order_by", "'='"),
        ("(a)", 0, "a field name", "'('"),
        ("and", 0, "a field name", "'and'"),
        ("metrics.", 8, KEY, ORDER_END),
        ("a, params.x, param.x", 13, "each field at most once", "params.x again"),
        (
            "start_time DESC, attributes.start_time",
            17,
            "each field at most once",
            "start_time again",
        ),
        ("`a b`, attr.`a b` ASC", 7, "each field at most once", "`a b` again"),
    ],
)
def test_invalid_order_by(text: str, position: int, expected: str, found: str) -> None:
    error = order_by_error(text)
    assert error.field == "order_by"
    assert error.reason == "INVALID_ORDER_BY"
    assert error.metadata == {
        "field": "order_by",
        "position": str(position),
        "found": found,
        "expected": expected,
    }
    assert error.message.startswith(
        f"invalid order_by at position {position}: expected {expected} but found {found}\n"
    )


def test_keys_differing_only_in_case_are_different_fields() -> None:
    assert len(parse_order_by("params.lr, params.LR")) == 2


# --- limits ---------------------------------------------------------------------------------


def test_filter_length_limit() -> None:
    at_limit = "a = '" + "x" * (MAX_TEXT_LENGTH - 6) + "'"
    assert len(at_limit) == MAX_TEXT_LENGTH
    assert parse_filter(at_limit) == cmp("a", "=", "x" * (MAX_TEXT_LENGTH - 6))
    error = parse_error(at_limit + " ")
    assert error.metadata["position"] == str(MAX_TEXT_LENGTH)
    assert error.metadata["expected"] == "at most 10,000 characters"
    assert error.metadata["found"] == "10,001 characters"
    assert parse_error(" " * (MAX_TEXT_LENGTH + 1)).metadata["position"] == str(MAX_TEXT_LENGTH)
    assert order_by_error("a," * MAX_TEXT_LENGTH).metadata["found"] == "20,000 characters"


def test_predicate_limit() -> None:
    predicates = [f"p{i} = {i}" for i in range(MAX_PREDICATES + 1)]
    assert len(fields_of(parse(" AND ".join(predicates[:-1])))) == MAX_PREDICATES
    text = " OR ".join(predicates)
    error = parse_error(text)
    assert error.metadata["position"] == str(text.index(f"p{MAX_PREDICATES} "))
    assert error.metadata["expected"] == "at most 100 predicates"
    assert error.metadata["found"] == "101 predicates"


def test_nesting_limit_counts_parentheses() -> None:
    depth = MAX_NESTING_DEPTH
    assert parse("(" * depth + "a = 1" + ")" * depth) == cmp("a", "=", 1)
    error = parse_error("(" * (depth + 1) + "a = 1" + ")" * (depth + 1))
    assert error.metadata["position"] == str(depth)
    assert error.metadata["expected"] == "at most 50 levels of nesting (parentheses and NOTs)"


def test_nesting_limit_counts_prefix_nots() -> None:
    depth = MAX_NESTING_DEPTH
    node = parse("NOT " * depth + "a = 1")
    for _ in range(depth):
        assert isinstance(node, Not)
        node = node.operand
    assert node == cmp("a", "=", 1)
    assert parse_error("NOT " * (depth + 1) + "a = 1").metadata["position"] == str(4 * depth)
    half = depth // 2
    assert parse("NOT (" * half + "a = 1" + ")" * half) is not None
    error = parse_error("NOT (" * half + "NOT a = 1" + ")" * half)
    assert error.metadata["position"] == str(5 * half)


def test_nesting_is_per_branch_and_ignores_in_lists_and_predicate_nots() -> None:
    depth = MAX_NESTING_DEPTH
    inner = "a NOT IN (1) AND b IS NOT NULL AND c NOT LIKE 'x' AND d IN (2)"
    assert parse("(" * depth + inner + ")" * depth) is not None
    siblings = " AND ".join(["NOT (NOT (a = 1))"] * 60)
    assert len(fields_of(parse(siblings))) == 60
    closed = "(" * (depth - 1) + "a = 1" + ")" * (depth - 1)
    assert parse(f"{closed} AND {closed}") is not None


def test_deep_parentheses_raise_invalid_argument_not_recursion_error() -> None:
    assert parse_error("(" * 5000 + "a = 1" + ")" * 5000).metadata["position"] == "10000"
    within_length = "(" * 4000 + "a = 1" + ")" * 4000
    assert parse_error(within_length).metadata["position"] == str(MAX_NESTING_DEPTH)
    assert parse_error("NOT " * 2400 + "a = 1").metadata["position"] == "200"


def test_in_list_limit() -> None:
    values = ", ".join(str(i) for i in range(MAX_IN_VALUES))
    node = parse(f"params.x IN ({values})")
    assert isinstance(node, InList)
    assert len(node.values) == MAX_IN_VALUES
    text = f"params.x IN ({values}, 'one too many')"
    error = parse_error(text)
    assert error.metadata["position"] == str(text.index("'one too many'"))
    assert error.metadata["expected"] == "at most 1,000 values in an IN list"


def test_order_by_key_limit() -> None:
    keys = [f"k{i}" for i in range(MAX_ORDER_BY_KEYS + 1)]
    assert len(parse_order_by(", ".join(keys[:-1]))) == MAX_ORDER_BY_KEYS
    text = ", ".join(keys)
    error = order_by_error(text)
    assert error.metadata["position"] == str(text.index(f"k{MAX_ORDER_BY_KEYS}"))
    assert error.metadata["expected"] == "at most 10 keys"


# --- robustness, concurrency, speed -----------------------------------------------------------

VALID_FILTERS = [
    "a = 1",
    "params.lr >= 0.5 AND metrics.`val loss` < 1e-3",
    "status = 'FINISHED' OR NOT (tags.x IN ('a', \"b\", 3) AND tags.y IS NOT NULL)",
    "params.\"my key\" NOT ILIKE '%it''s%' AND note != -2.5E+3 AND island IS NULL",
    "((a = 1 OR b <> TRUE) AND NOT c NOT IN (1, 2)) OR attr.d LIKE 'x\\'y'",
]
INTERNAL_NAMES = re.compile(
    r"__ANON|\$END|<END-OF-FILE>|Token\(|Tree\("
    r"|\b(?:_[A-Z]+|[A-Z]+_[A-Z_]+|KEY|NUMBER|DIRECTION|WHITESPACE|LPAR|RPAR|COMMA)\b"
)
FRAGMENTS = [
    "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "TRUE", "FALSE", "ASC", "DESC",
    "(", ")", ",", "'", '"', "`", "''", "\\", "=", "==", "!=", "<>", "<", "<=", ">", ">=",
    "params.", "metrics.", "tags.", "attr.", "a", "island", "1", "-2.5e3", ".5", "'x'",
    '"y"', "`k`", " ", " ", "\n", "\x00", "é", "1e999",
]  # fmt: skip


def check_outcome(parse_fn: Callable[[str], object], text: str) -> None:
    """Any input either parses or raises a well-formed InvalidArgument; nothing else escapes."""
    try:
        parse_fn(text)
    except InvalidArgument as error:
        position = int(error.metadata["position"])
        assert 0 <= position <= len(text)
        expected = error.metadata["expected"]
        assert not INTERNAL_NAMES.search(expected), (text, expected)
        noun = "filter" if parse_fn is parse_filter else "order_by"
        first_line, _, caret = error.message.split("\n")
        assert first_line.startswith(
            f"invalid {noun} at position {position}: expected {expected} "
            f"but found {error.metadata['found']}"
        )
        assert caret.rstrip().endswith("^")


def robustness_inputs() -> list[str]:
    rng = random.Random(20240611)
    alphabet = string.printable + "é€\u00a0\x00"
    inputs: list[str] = []
    for _ in range(2500):
        inputs.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    for _ in range(2500):
        pieces = rng.choices(FRAGMENTS, k=rng.randint(1, 14))
        inputs.append(" ".join(pieces) if rng.random() < 0.5 else "".join(pieces))
    for text in VALID_FILTERS:
        inputs.extend(text[:end] for end in range(len(text) + 1))
        inputs.extend(text[start:] for start in range(len(text)))
        for _ in range(300):
            at = rng.randrange(len(text))
            inputs.append(text[:at] + rng.choice(alphabet) + text[at:])
            inputs.append(text[:at] + text[at + 1 :])
    return inputs


def test_any_input_parses_or_raises_invalid_argument() -> None:
    for text in VALID_FILTERS:
        assert parse_filter(text) is not None
    inputs = robustness_inputs()
    assert len(inputs) > 8000
    for text in inputs:
        check_outcome(parse_filter, text)
        check_outcome(parse_order_by, text)


def test_concurrent_parses_agree_with_serial_ones() -> None:
    texts = [*VALID_FILTERS, "a = ", "x IN ()", "a = 1 foo"] * 40

    def outcome(text: str) -> object:
        try:
            return parse_filter(text)
        except InvalidArgument as error:
            return error.message

    serial = [outcome(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(outcome, texts)) == serial
