"""Small file helpers shared by the trainer's modules: atomic JSON writes, RFC 3339 times
and the proto3-JSON spelling of non-finite numbers. Stdlib only."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
from typing import Any


def utc_now() -> str:
    """The current time as RFC 3339 UTC with milliseconds, e.g. 2026-11-25T10:00:00.123Z."""
    now = dt.datetime.now(dt.timezone.utc)  # noqa: UP017 (runs on Python 3.10)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_number(value: float) -> float | str:
    """A float as proto3 JSON spells it: non-finite values become "NaN", "Infinity" or
    "-Infinity" (plain JSON has no literal for them)."""
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def json_safe(value: Any) -> Any:
    """Recursively replaces non-finite floats with their proto3 JSON strings, so every file
    the trainer writes is strict JSON."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path: str, document: Any, *, indent: int | None = 1) -> None:
    """Writes JSON to a temporary file beside `path` and renames it over `path`, so a reader
    (the scheduler) sees the old file or the new one, never half of one."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(json_safe(document), stream, indent=indent, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates 0600; the scheduler (or an uploader) may read as another user.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
