"""The one rule for client-supplied request ids, shared by the gRPC interceptors and the
HTTP gateway (its transcoded API and the MLflow layer).

A supplied id is stripped of surrounding whitespace and cut to MAX_REQUEST_ID_LENGTH
characters; it is used when what remains is non-empty printable ASCII (what gRPC metadata
can carry and a log line can show). Anything else gets a fresh id (32 hex digits).
"""

from __future__ import annotations

import uuid

MAX_REQUEST_ID_LENGTH = 128


def usable_request_id(value: str | None) -> str | None:
    """The id to use for a supplied value under the rule above, or None if it is unusable."""
    if value is None:
        return None
    candidate = value.strip()[:MAX_REQUEST_ID_LENGTH]
    if candidate and candidate.isascii() and candidate.isprintable():
        return candidate
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str:
    """The supplied request id when usable (cut to 128 characters), else a new one."""
    return usable_request_id(value) or new_request_id()
