"""Golden cases for google.api.http path templates (google/api/http.proto, "Path template
syntax"): parsing, matching on the raw path, per-variable decoding, verbs, "**"."""

from __future__ import annotations

import pytest

from services.gateway.templates import Segment, TemplateError, Variable, parse_template


@pytest.mark.parametrize(
    "source",
    [
        "v1/x",  # no leading slash
        "/v1//x",  # empty segment
        "/v1/x/",  # trailing slash
        "/v1/{name",  # unclosed variable
        "/v1/{a={b}}",  # nested variable
        "/v1/{1bad}",  # bad field path
        "/v1/{a.}",
        "/v1/**/x",  # ** not last
        "/v1/{a=**}/x",
        "/v1/{a}/{a}",  # one field, two variables
        "/v1/x:",  # empty verb
        "/v1/x:a=b",  # bad verb
        "/v1/a=b",  # "=" outside a variable
    ],
)
def test_parse_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(source)


def test_parse_structure() -> None:
    template = parse_template("/v1/{name=experiments/*/runs/*}:restore")
    assert template.verb == "restore"
    assert template.parts == (
        Segment("literal", "v1"),
        Variable(
            "name",
            (
                Segment("literal", "experiments"),
                Segment("*"),
                Segment("literal", "runs"),
                Segment("*"),
            ),
        ),
    )
    assert template.literal_count == 4  # v1, experiments, runs and the verb
    assert parse_template("/v1/{x}").variables == (Variable("x", (Segment("*"),)),)
    assert parse_template("/v1/{x}").variables[0].single_segment
    assert not parse_template("/v1/{x=**}").variables[0].single_segment
    assert not parse_template("/v1/{x=a/*}").variables[0].single_segment


MATCHES: list[tuple[str, str, dict[str, str] | None]] = [
    # Literals and single-segment variables, fully decoded.
    ("/v1/items", "/v1/items", {}),
    ("/v1/items", "/v1/%69tems", {}),  # an encoded unreserved character is the same text
    ("/v1/items", "/v1/items/x", None),
    ("/v1/items", "/v2/items", None),
    ("/v1/{id}", "/v1/abc", {"id": "abc"}),
    ("/v1/{id}", "/v1/a%2Fb", {"id": "a/b"}),
    ("/v1/{id=*}", "/v1/a%2fb%20c", {"id": "a/b c"}),
    ("/v1/{id}", "/v1/100%25", {"id": "100%"}),
    ("/v1/{id}", "/v1/a/b", None),
    ("/v1/{id}", "/v1/caf%C3%A9", {"id": "café"}),
    # Multi-segment variables: decoded except %2F, which stays encoded.
    ("/v1/{name=experiments/*}", "/v1/experiments/abc", {"name": "experiments/abc"}),
    ("/v1/{name=experiments/*}", "/v1/experiments%2Fabc", None),
    ("/v1/{name=experiments/*}", "/v1/experiments/a%2Fb", {"name": "experiments/a%2Fb"}),
    ("/v1/{name=experiments/*}", "/v1/experiments/a%20b", {"name": "experiments/a b"}),
    ("/v1/{name=experiments/*}", "/v1/runs/abc", None),
    ("/v1/{name=files/**}", "/v1/files/a%2Fb", {"name": "files/a%2Fb"}),
    ("/v1/{name=files/**}", "/v1/files/a/b/c", {"name": "files/a/b/c"}),
    # "**" matches zero or more segments.
    ("/v1/{name=files/**}", "/v1/files", {"name": "files"}),
    ("/v1/files/**", "/v1/files", {}),
    ("/v1/{rest=**}", "/v1", {"rest": ""}),
    # Empty segments never match.
    ("/v1/{name=files/**}", "/v1/files/a//b", None),
    ("/v1/{name=files/**}", "/v1/files/a/", None),
    ("/v1/{id}", "/v1/", None),
    ("/v1/items", "/v1//items", None),
    # Verbs: split at the last unencoded ":" of the last segment.
    ("/v1/{a=*}:do", "/v1/x:do", {"a": "x"}),
    ("/v1/{a=*}:do", "/v1/x%3Ado", None),  # an encoded colon is data, not a verb
    ("/v1/{a}", "/v1/x%3Ado", {"a": "x:do"}),
    ("/v1/{a}", "/v1/x:do", None),  # an unencoded ":" always starts a verb
    ("/v1/{a}", "/v1/x:", None),
    ("/v1/{name=experiments/*/runs/*}", "/v1/experiments/E/runs/R:logMetrics", None),
    ("/v1/{a=*}:do", "/v1/x:y:do", {"a": "x:y"}),
    ("/v1/{a=*}:do", "/v1/x:undo", None),
    ("/v1/{a=*}:do", "/v1/:do", None),
    ("/v1/{a=*}:do", "/v1/x", None),
    ("/v1/{name=experiments/*}:restore", "/v1/experiments/E:restore", {"name": "experiments/E"}),
    ("/v1/{name=experiments/*}:restore", "/v1/experiments/E%3Arestore", None),
    ("/v1/{name=experiments/*}", "/v1/experiments/E%3Arestore", {"name": "experiments/E:restore"}),
    # Several variables, nested field paths.
    (
        "/v1/{metadata.run=experiments/*/runs/*}/artifacts:upload",
        "/v1/experiments/E/runs/R/artifacts:upload",
        {"metadata.run": "experiments/E/runs/R"},
    ),
    ("/v1/{parent=a/*}/{child=b/*}", "/v1/a/1/b/2", {"parent": "a/1", "child": "b/2"}),
    ("/v1/*/items/{id}", "/v1/anything/items/7", {"id": "7"}),
    # What the review found served wrongly (a path that spans several segments when decoded).
    ("/v1/{name=experiments/*/runs/*}", "/v1/experiments/E%2Fruns%2FR", None),
    ("/v1/{name=experiments/*}", "/v1/experiments%2FE", None),
]


@pytest.mark.parametrize(("source", "path", "expected"), MATCHES)
def test_match(source: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(source).match(path) == expected


def test_a_path_without_a_leading_slash_never_matches() -> None:
    assert parse_template("/v1/{id}").match("v1/x") is None
    assert parse_template("/v1/{rest=**}").match("") is None
