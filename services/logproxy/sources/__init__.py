"""Where job logs are read from. Each source turns its raw records into LogRecords; the
service filters, pages and streams them the same way whatever the source."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cairn.logproxy.v1 import log_entry_pb2


@dataclass(frozen=True)
class LogRecord:
    """One entry with its position in the source (positions grow with time: paging and
    following use them)."""

    position: int
    time: dt.datetime | None
    severity: int  # log_entry_pb2.Severity
    component: str
    message: str
    source: str

    def to_proto(self) -> log_entry_pb2.LogEntry:
        entry = log_entry_pb2.LogEntry(
            severity=self.severity,  # type: ignore[arg-type]
            component=self.component,
            message=self.message,
            source=self.source,
        )
        if self.time is not None:
            entry.time.FromDatetime(self.time.astimezone(dt.UTC))
        return entry
