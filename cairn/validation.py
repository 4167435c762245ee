"""The documented request limits and the key rule, shared by the SDK and the tracker.

Pure Python with no imports, so the SDK can check a request before it queues or sends it,
and refuses exactly what the server would refuse (README "Limits").
"""

from __future__ import annotations

MAX_NAME_LENGTH = 256
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 32_768
MAX_TAG_VALUE_LENGTH = 8_000
MAX_TEXT_LENGTH = 65_536
MAX_ID_LENGTH = 128
MAX_ENTRIES_PER_CALL = 1_000
MAX_POINTS_PER_BATCH = 100_000


def key_problem(key: object) -> str | None:
    """Why `key` is not a valid param, tag or metric key (None when it is).

    A key is 1 to MAX_KEY_LENGTH printable characters without surrounding whitespace. The
    text completes a sentence about the key: "metric key 'acc ' <problem>".
    """
    if not isinstance(key, str):
        return f"must be a string, not {type(key).__name__}"
    if not key:
        return "must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"is {len(key)} characters; the limit is {MAX_KEY_LENGTH}"
    if not key.isprintable() or key != key.strip():
        return "has control characters or surrounding whitespace"
    return None
