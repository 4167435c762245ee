"""Epoch-millisecond time, the unit every Cairn table stores, and its proto conversions."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp_to_ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def ms_to_timestamp(ms: int, into: Timestamp | None = None) -> Timestamp:
    ts = into if into is not None else Timestamp()
    ts.seconds, remainder = divmod(ms, 1000)
    ts.nanos = remainder * 1_000_000
    return ts


def parse_time_literal(text: str) -> int:
    """An ISO-8601 date or date-time (naive means UTC) as epoch milliseconds."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
