"""Artifact path validation and the layout of artifact keys in a store.

A user-supplied artifact path becomes part of a storage key (a file path for the local store,
an object name for GCS and S3), so it must never be able to leave its run's prefix however it
is spelled: literally ("../x"), percent-encoded once or several times ("%2e%2e%2f",
"%252e%252e"), or with Unicode look-alikes (U+FF0E U+FF0E U+FF0F, U+2215). Paths are
validated, never rewritten: an accepted path is stored exactly as the user wrote it.

Deliberately allowed, because none of them can change which directory or prefix a key lands in:
leading-dot names (".hidden"), segments ending in a dot or a space ("notes.", "draft "),
colons other than a leading drive letter ("plots/12:30.png", "ab:c"), Windows device names
("CON", "nul.txt") and "%" that does not encode a dangerous character ("100%.txt", "a%20b").
The local store runs on POSIX hosts only, where these names are ordinary; on Windows some of
them would alias other names, which is why the local store is not supported there.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import unquote

from services.common.errors import InvalidArgument

__all__ = [
    "INVALID_ARTIFACT_PATH",
    "MAX_PATH_LENGTH",
    "artifact_key",
    "key_error",
    "run_prefix",
    "validate_artifact_path",
    "validate_key",
]

MAX_PATH_LENGTH = 1024
INVALID_ARTIFACT_PATH = "INVALID_ARTIFACT_PATH"

# Characters that render as a slash or backslash. NFKC folds only the fullwidth and small forms
# into the real ones, so normalising cannot catch the rest. They have no business in a file
# name and would make a listing show a directory that does not exist: refused anywhere.
_SLASH_LOOKALIKES = frozenset(
    "\u2044"  # FRACTION SLASH
    "\u2215"  # DIVISION SLASH
    "\u2571"  # BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
    "\u29f8"  # BIG SOLIDUS
    "\u1735"  # PHILIPPINE SINGLE PUNCTUATION
    "\u0337"  # COMBINING SHORT SOLIDUS OVERLAY
    "\u0338"  # COMBINING LONG SOLIDUS OVERLAY
    "\u2216"  # SET MINUS
    "\u29f5"  # REVERSE SOLIDUS OPERATOR
    "\u29f9"  # BIG REVERSE SOLIDUS
    "\u2572"  # BOX DRAWINGS LIGHT DIAGONAL UPPER LEFT TO LOWER RIGHT
    "\uff0f"  # FULLWIDTH SOLIDUS
    "\uff3c"  # FULLWIDTH REVERSE SOLIDUS
    "\ufe68"  # SMALL REVERSE SOLIDUS
)

# Bidirectional overrides and isolates let a name display differently from what it is
# ("gpj.exe" shown as "exe.jpg"); joiners and marks that real scripts need are not in this set.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_ENCODED_DANGER = re.compile(r"%(?:2f|5c|2e|00)", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")
# Never "." or "..", since a dot cannot come first.
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code <= 0x1F or 0x7F <= code <= 0x9F


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def _revealed(raw: str, variant: str) -> str | None:
    """What `variant` (a decoding or normalisation of `raw`) exposes that `raw` did not."""
    if variant.count("/") > raw.count("/"):
        return "a slash"
    if "\\" in variant:
        return "a backslash"
    if any(_is_control(ch) for ch in variant):
        return "a control character"
    if _has_dot_segment(variant):
        return 'a "." or ".." segment'
    if _ENCODED_DANGER.search(variant):
        return "a percent-encoded separator, dot or NUL"
    if any(ch in _SLASH_LOOKALIKES for ch in variant):
        return "a slash look-alike"
    return None


def _percent_decodings(path: str) -> Iterator[str]:
    """Successive percent-decodings of `path` until one changes nothing.

    Terminates because every decoding that changes the string makes it shorter.
    """
    current = path
    while True:
        decoded = unquote(current, errors="replace")
        if decoded == current:
            return
        yield decoded
        current = decoded


def _display(path: str) -> str:
    """The path as it can be safely echoed back in an error: escaped and truncated."""
    shown = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in path[:200])
    return shown + ("…" if len(path) > 200 else "")


def _violation(path: str) -> tuple[str, str] | None:
    """The first rule `path` breaks, as (RULE, explanation), ignoring its length."""
    if not path:
        return "EMPTY", "must not be empty"
    if any(_is_control(ch) for ch in path):
        return "CONTROL_CHARACTER", "must not contain NUL or other control characters"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in path):
        return "INVALID_UNICODE", "must be valid Unicode (no lone surrogates)"
    if any(ch in _BIDI_CONTROLS for ch in path):
        return "BIDI_CONTROL", "must not contain bidirectional override characters"
    if path[0] in "/\\" or _DRIVE.match(path):
        return "ABSOLUTE", "must be relative (no leading slash, backslash or drive letter)"
    if "\\" in path:
        return "BACKSLASH", 'must use "/" as the only separator (no backslashes)'
    if "#" in path or "?" in path:
        return "URL_RESERVED", 'must not contain "#" or "?"'
    if "" in path.split("/"):
        return "EMPTY_SEGMENT", 'must not contain empty segments ("a//b", trailing "/")'
    if _has_dot_segment(path):
        return "DOT_SEGMENT", 'must not contain "." or ".." segments'
    if _ENCODED_DANGER.search(path):
        return "PERCENT_ENCODED", "must not contain percent-encoded separators, dots or NUL"
    for decoded in _percent_decodings(path):
        for variant in (decoded, unicodedata.normalize("NFKC", decoded)):
            found = _revealed(path, variant)
            if found:
                return "PERCENT_ENCODED", f"must not decode to {found}"
    if any(ch in _SLASH_LOOKALIKES for ch in path):
        return "LOOKALIKE", "must not contain characters that look like a slash or backslash"
    found = _revealed(path, unicodedata.normalize("NFKC", path))
    if found:
        return "LOOKALIKE", f"must not contain look-alike characters that normalise to {found}"
    return None


def _invalid(path: str, rule: str, explanation: str, field: str) -> InvalidArgument:
    return InvalidArgument(
        f'invalid artifact {field} "{_display(path)}": {explanation}',
        field=field,
        reason=INVALID_ARTIFACT_PATH,
        metadata={"rule": rule, field: _display(path)},
    )


def validate_artifact_path(path: str) -> str:
    """Return `path` unchanged if it is a safe relative artifact path; else InvalidArgument.

    The error's reason is INVALID_ARTIFACT_PATH and its metadata["rule"] names the broken rule.
    """
    if len(path) > MAX_PATH_LENGTH:
        raise _invalid(path, "TOO_LONG", f"must be at most {MAX_PATH_LENGTH} characters", "path")
    problem = _violation(path)
    if problem:
        raise _invalid(path, *problem, "path")
    return path


def validate_key(
    key: str, *, max_bytes: int | None = None, max_segment_bytes: int | None = None
) -> str:
    """Check a store key (or key prefix) with the path rules, as defence in depth.

    Keys are run prefixes joined with validated paths, so the only rules a well-formed key can
    break are a backend's length limits (in bytes of UTF-8, for the whole key or for one
    segment): a long path under a prefix can exceed them while within MAX_PATH_LENGTH characters.
    """
    problem = _violation(key)
    if problem:
        raise _invalid(key, *problem, "key")
    if max_bytes is not None and len(key.encode()) > max_bytes:
        raise _invalid(
            key, "KEY_TOO_LONG", f"must be at most {max_bytes} bytes of UTF-8 in this store", "key"
        )
    if max_segment_bytes is not None and any(
        len(segment.encode()) > max_segment_bytes for segment in key.split("/")
    ):
        raise _invalid(
            key,
            "KEY_TOO_LONG",
            f"each segment must be at most {max_segment_bytes} bytes of UTF-8 in this store",
            "key",
        )
    return key


def key_error(key: str, rule: str, explanation: str) -> InvalidArgument:
    """An INVALID_ARTIFACT_PATH error about a key that a store refuses for its own reasons."""
    return _invalid(key, rule, explanation, "key")


def _check_id(value: str, field: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f'invalid {field} "{_display(value)}": expected 1-128 letters, digits, ".", "_" '
            'or "-", not starting with "."',
            field=field,
            metadata={field: _display(value)},
        )
    return value


def run_prefix(experiment_id: str, run_id: str) -> str:
    """The key prefix under which all of a run's artifacts are stored."""
    return (
        f"experiments/{_check_id(experiment_id, 'experiment_id')}"
        f"/runs/{_check_id(run_id, 'run_id')}/artifacts"
    )


def artifact_key(experiment_id: str, run_id: str, path: str) -> str:
    """The store key of the artifact at `path` in the given run."""
    return f"{run_prefix(experiment_id, run_id)}/{validate_artifact_path(path)}"
