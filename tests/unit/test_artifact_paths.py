"""Artifact path validation: what may name an artifact, and how keys are laid out."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.tracker.artifact_store import (
    INVALID_ARTIFACT_PATH,
    MAX_PATH_LENGTH,
    artifact_key,
    run_prefix,
    validate_artifact_path,
)
from services.tracker.artifact_store.paths import validate_key

ACCEPTED = [
    "model.pkl",
    "plots/roc curve.png",
    "a/b/c.tar.gz",
    "résultats/é.csv",
    "日本語/ファイル.txt",
    "emoji \U0001f600.png",
    "with spaces/and-dashes_and_underscores",
    "a+b=c@d,e~f.txt",
    "~tilde",
    ".hidden",
    "dir/.hidden/.x",
    "...",
    "..a",
    "a..b",
    "a/...",
    "v1..2.txt",
    # Trailing dots and spaces are ordinary names on POSIX and in object stores.
    "notes.",
    "draft ",
    "dir./file",
    " leading space",
    # Colons are only refused as a drive letter prefix.
    "plots/12:30.png",
    "ab:c",
    # Percent signs that encode nothing dangerous, or nothing at all.
    "100%.txt",
    "a%20b",
    "%41",
    "%25",
    "%2525",
    # Windows device names cannot escape anything on the hosts the local store supports.
    "CON",
    "nul.txt",
    # Look-alike dots inside a name normalise to a harmless name.
    "\uff0ehidden",
    "a\uff0eb",
    # Joiners are needed by real scripts and emoji.
    "a\u200db",
    "x" * MAX_PATH_LENGTH,
    "/".join(["d"] * 512),
]

REJECTED = [
    # Empty or too long.
    ("", "EMPTY"),
    ("x" * (MAX_PATH_LENGTH + 1), "TOO_LONG"),
    ("é" * (MAX_PATH_LENGTH + 1), "TOO_LONG"),
    # Absolute: POSIX, Windows, drive letters, UNC.
    ("/x", "ABSOLUTE"),
    ("/", "ABSOLUTE"),
    ("\\x", "ABSOLUTE"),
    ("C:\\x", "ABSOLUTE"),
    ("C:/x", "ABSOLUTE"),
    ("c:x", "ABSOLUTE"),
    ("z:", "ABSOLUTE"),
    ("//server/share", "ABSOLUTE"),
    ("\\\\server\\share", "ABSOLUTE"),
    # Dot segments.
    (".", "DOT_SEGMENT"),
    ("..", "DOT_SEGMENT"),
    ("../x", "DOT_SEGMENT"),
    ("a/../b", "DOT_SEGMENT"),
    ("a/..", "DOT_SEGMENT"),
    ("a/b/../../..", "DOT_SEGMENT"),
    ("./a", "DOT_SEGMENT"),
    ("a/./b", "DOT_SEGMENT"),
    # Empty segments.
    ("a//b", "EMPTY_SEGMENT"),
    ("a/", "EMPTY_SEGMENT"),
    ("a/b/", "EMPTY_SEGMENT"),
    # Backslashes anywhere.
    ("a\\b", "BACKSLASH"),
    ("a/b\\..\\..\\c", "BACKSLASH"),
    ("trailing\\", "BACKSLASH"),
    # NUL and control characters: C0, DEL and C1.
    ("a\x00b", "CONTROL_CHARACTER"),
    ("model.pkl\x00.png", "CONTROL_CHARACTER"),
    ("a\r\nb", "CONTROL_CHARACTER"),
    ("a\nb", "CONTROL_CHARACTER"),
    ("a\tb", "CONTROL_CHARACTER"),
    ("a\x1bb", "CONTROL_CHARACTER"),
    ("a\x7fb", "CONTROL_CHARACTER"),
    ("a\x80b", "CONTROL_CHARACTER"),
    ("a\x85b", "CONTROL_CHARACTER"),
    ("a\x9fb", "CONTROL_CHARACTER"),
    # URL fragments and queries.
    ("#frag", "URL_RESERVED"),
    ("a/b#c", "URL_RESERVED"),
    ("?q=1", "URL_RESERVED"),
    ("model.pkl?x", "URL_RESERVED"),
    # Percent-encoded separators, dots and NUL, in any case.
    ("%2e%2e/x", "PERCENT_ENCODED"),
    ("%2E%2e/x", "PERCENT_ENCODED"),
    ("%2E%2E%2Fx", "PERCENT_ENCODED"),
    ("..%2fx", "PERCENT_ENCODED"),
    ("a%2Fb", "PERCENT_ENCODED"),
    ("a%5cb", "PERCENT_ENCODED"),
    ("a%5Cb", "PERCENT_ENCODED"),
    ("a%00b", "PERCENT_ENCODED"),
    ("%2e", "PERCENT_ENCODED"),
    ("file%2etxt", "PERCENT_ENCODED"),
    # Double and deeper encodings.
    ("%252e%252e/x", "PERCENT_ENCODED"),
    ("%252E%252e%252F", "PERCENT_ENCODED"),
    ("%25252e%25252e", "PERCENT_ENCODED"),
    ("a%252fb", "PERCENT_ENCODED"),
    ("a%25255cb", "PERCENT_ENCODED"),
    ("%2500", "PERCENT_ENCODED"),
    ("%%32%65%%32%65/x", "PERCENT_ENCODED"),
    ("a%0ab", "PERCENT_ENCODED"),
    ("a%0D%0Ab", "PERCENT_ENCODED"),
    ("a%7fb", "PERCENT_ENCODED"),
    # Percent-encoded look-alikes: U+FF0F and U+2215 as UTF-8.
    ("a%EF%BC%8Fb", "PERCENT_ENCODED"),
    ("a%E2%88%95b", "PERCENT_ENCODED"),
    # Unicode look-alikes of "." and "/" (fullwidth, leaders, small forms, math slashes).
    ("\uff0e\uff0e\uff0f", "LOOKALIKE"),
    ("\uff0e\uff0e/x", "LOOKALIKE"),
    ("a/\uff0e\uff0e/b", "LOOKALIKE"),
    ("a/\uff0e", "LOOKALIKE"),
    ("\u2025/x", "LOOKALIKE"),
    ("\u2024\u2024/x", "LOOKALIKE"),
    ("a/\ufe52\ufe52/b", "LOOKALIKE"),
    ("a\uff0fb", "LOOKALIKE"),
    ("a\uff3cb", "LOOKALIKE"),
    ("a\ufe68b", "LOOKALIKE"),
    ("a\u2215b", "LOOKALIKE"),
    ("..\u2215x", "LOOKALIKE"),
    ("a\u2044b", "LOOKALIKE"),
    ("a\u29f8b", "LOOKALIKE"),
    ("a\u2216b", "LOOKALIKE"),
    ("a\u0338b", "LOOKALIKE"),
    ("\uff05\uff12\uff45\uff05\uff12\uff45/x", "LOOKALIKE"),
    # Display spoofing and text that cannot be stored.
    ("report\u202etxt.exe", "BIDI_CONTROL"),
    ("a\u2066b", "BIDI_CONTROL"),
    ("a\ud800b", "INVALID_UNICODE"),
]


def short_id(path: str) -> str:
    return ascii(path)[:60]


@pytest.mark.parametrize("path", ACCEPTED, ids=short_id)
def test_accepted_paths_are_returned_unchanged(path: str) -> None:
    assert validate_artifact_path(path) is path


@pytest.mark.parametrize(("path", "rule"), REJECTED, ids=[short_id(p) for p, _ in REJECTED])
def test_rejected_paths_name_the_broken_rule(path: str, rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_artifact_path(path)
    error = caught.value
    assert error.reason == INVALID_ARTIFACT_PATH
    assert error.field == "path"
    assert error.metadata["field"] == "path"
    assert error.metadata["rule"] == rule


def test_rejected_table_covers_every_rule() -> None:
    assert len(REJECTED) >= 40
    assert {rule for _, rule in REJECTED} == {
        "EMPTY",
        "TOO_LONG",
        "ABSOLUTE",
        "DOT_SEGMENT",
        "EMPTY_SEGMENT",
        "BACKSLASH",
        "CONTROL_CHARACTER",
        "URL_RESERVED",
        "PERCENT_ENCODED",
        "LOOKALIKE",
        "BIDI_CONTROL",
        "INVALID_UNICODE",
    }


def test_error_echoes_the_path_escaped_and_truncated() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_artifact_path("a\r\nb")
    assert caught.value.metadata["path"] == "a\\u000d\\u000ab"
    assert "\r" not in caught.value.message

    with pytest.raises(InvalidArgument) as caught:
        validate_artifact_path("x" * 5000)
    assert len(caught.value.metadata["path"]) < 250
    assert len(caught.value.message) < 400


def test_run_prefix_and_artifact_key_layout() -> None:
    assert run_prefix("e1", "r-01") == "experiments/e1/runs/r-01/artifacts"
    assert artifact_key("e1", "r-01", "plots/roc curve.png") == (
        "experiments/e1/runs/r-01/artifacts/plots/roc curve.png"
    )
    assert artifact_key("_0f8a", "-9b2c_d.e", ".hidden") == (
        "experiments/_0f8a/runs/-9b2c_d.e/artifacts/.hidden"
    )


@pytest.mark.parametrize("path", ["../../other-run/x", "%2e%2e/x", "/etc/passwd", "a\\..\\b"])
def test_artifact_key_refuses_paths_that_could_leave_the_run(path: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        artifact_key("e1", "r1", path)
    assert caught.value.reason == INVALID_ARTIFACT_PATH


@pytest.mark.parametrize(
    ("experiment_id", "run_id", "field"),
    [
        ("", "r1", "experiment_id"),
        ("..", "r1", "experiment_id"),
        ("e/1", "r1", "experiment_id"),
        (".e", "r1", "experiment_id"),
        ("e1", "", "run_id"),
        ("e1", ".", "run_id"),
        ("e1", "r 1", "run_id"),
        ("e1", "r%2f1", "run_id"),
        ("e1", "r" * 129, "run_id"),
    ],
)
def test_ids_must_be_single_safe_segments(experiment_id: str, run_id: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        run_prefix(experiment_id, run_id)
    assert caught.value.field == field


def test_keys_get_the_same_rules_and_backend_length_limits() -> None:
    key = artifact_key("e1", "r1", "x" * MAX_PATH_LENGTH)
    assert validate_key(key) == key
    with pytest.raises(InvalidArgument) as caught:
        validate_key(key, max_bytes=1024)
    assert caught.value.metadata["rule"] == "KEY_TOO_LONG"
    with pytest.raises(InvalidArgument) as caught:
        validate_key(key, max_segment_bytes=255)
    assert caught.value.metadata["rule"] == "KEY_TOO_LONG"
    with pytest.raises(InvalidArgument) as caught:
        validate_key("experiments/e1/../x")
    assert caught.value.metadata["rule"] == "DOT_SEGMENT"
    assert caught.value.field == "key"
