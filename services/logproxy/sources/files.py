"""Log files written by the local launcher's trainers (`<job dir>/logs/trainer.log`).

A record starts at a line with a time and a level, as the trainer's Python logging writes
them ("2026-12-04 17:43:01,017 INFO cairn_trainer.progress: ...") or TensorFlow's C++
logging does ("2026-12-04 17:43:02.917105: E external/...] ..."); other lines (tracebacks,
warnings' source lines) continue the record before them. The trainer logs each stage it
enters ("progress: Transform 25.0% ..."), so every record is attributed to the pipeline
component that was running when it was written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cairn.logproxy.v1 import log_entry_pb2
from services.logproxy.sources import LogRecord

_HEADER = re.compile(
    r"^(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:[,.]\d{1,6})?):? "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL|[IWEF]) (?P<rest>.*)$"
)
_STAGE = re.compile(
    r"\bprogress: (?P<stage>ExampleGen|StatisticsGen|SchemaGen|Transform|Trainer|Evaluation) "
)
SEVERITIES = {
    "DEBUG": log_entry_pb2.SEVERITY_DEBUG,
    "INFO": log_entry_pb2.SEVERITY_INFO,
    "I": log_entry_pb2.SEVERITY_INFO,
    "WARNING": log_entry_pb2.SEVERITY_WARNING,
    "W": log_entry_pb2.SEVERITY_WARNING,
    "ERROR": log_entry_pb2.SEVERITY_ERROR,
    "E": log_entry_pb2.SEVERITY_ERROR,
    "CRITICAL": log_entry_pb2.SEVERITY_CRITICAL,
    "F": log_entry_pb2.SEVERITY_CRITICAL,
}
# A record longer than this is cut (a runaway traceback must not blow up a response).
MAX_RECORD_CHARS = 64 * 1024
# How much of a file's end is read at most: the newest records are what callers want.
MAX_READ_BYTES = 64 << 20
POLL_SECONDS = 0.5


def _parse_time(text: str) -> dt.datetime | None:
    try:
        # Written in the trainer's local time, which on one machine is ours.
        return dt.datetime.fromisoformat(text.replace(",", ".")).astimezone()
    except ValueError:
        return None


def has_header(line: str) -> bool:
    """Whether a line starts a record: a time and a level, as the trainer's logging (or
    TensorFlow's) writes them."""
    return _HEADER.match(line) is not None


class RecordParser:
    """Lines in, records out; keeps the current component and the record being built.
    Shared by the sources: the file source feeds a log file's lines, the Kubernetes source
    a pod log's lines (with the time Kubernetes stamped each one)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.component = ""
        self._pending: tuple[int, dt.datetime | None, int, str, list[str]] | None = None

    def feed(self, position: int, line: str, time: dt.datetime | None = None) -> LogRecord | None:
        """One line (without its newline) at `position` (where it starts: a byte offset, a
        line number...); returns the record this line completed, if any. `time`, when the
        source knows when the line was written, is the time of the record it starts (else
        the time in its header, if any)."""
        header = _HEADER.match(line)
        if header is None:
            if self._pending is not None:
                self._pending[4].append(line)
                return None
            if not line.strip():
                return None
            self._pending = (position, time, log_entry_pb2.SEVERITY_INFO, self.component, [line])
            return None
        done = self.flush()
        stage = _STAGE.search(header["rest"])
        if stage is not None:
            self.component = stage["stage"]
        self._pending = (
            position,
            time if time is not None else _parse_time(header["time"]),
            SEVERITIES[header["level"]],
            self.component,
            [header["rest"]],
        )
        return done

    def flush(self) -> LogRecord | None:
        if self._pending is None:
            return None
        position, time, severity, component, lines = self._pending
        self._pending = None
        message = "\n".join(lines)[:MAX_RECORD_CHARS]
        return LogRecord(position, time, severity, component, message, self.source)


def read_records(path: Path) -> list[LogRecord]:
    """Every record of the file (of its last MAX_READ_BYTES), oldest first."""
    return read_log(path)[0]


def read_log(path: Path) -> tuple[list[LogRecord], int]:
    """The records of the file, oldest first, and the offset just after its last complete
    line (where following it continues)."""
    parser = RecordParser(str(path))
    records: list[LogRecord] = []
    end = 0
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(size - MAX_READ_BYTES, 0)
            handle.seek(start)
            if start:
                handle.readline()  # a partial first line
            position = handle.tell()
            end = position
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # being written: the follower reads it whole
                record = parser.feed(position, raw.decode("utf-8", "replace").rstrip("\r\n"))
                position += len(raw)
                end = position
                if record is not None:
                    records.append(record)
    except FileNotFoundError:
        return [], 0
    last = parser.flush()
    if last is not None:
        records.append(last)
    return records, end


async def follow_records(
    path: Path, offset: int, component: str, finished: Callable[[], Awaitable[bool]]
) -> AsyncIterator[LogRecord]:
    """Records written from byte `offset` on (in `component` until a stage line says
    otherwise), as they are written, until `finished()` says the writer is done and the
    file has been read to its end. A record is complete when the next one starts, or when
    nothing was written for a poll."""
    parser = RecordParser(str(path))
    parser.component = component
    partial = b""
    while True:
        chunk = await asyncio.to_thread(_read_from, path, offset)
        offset += len(chunk)
        data = partial + chunk
        lines = data.split(b"\n")
        partial = lines.pop()
        position = offset - len(data)
        for raw in lines:
            record = parser.feed(position, raw.decode("utf-8", "replace").rstrip("\r"))
            position += len(raw) + 1
            if record is not None:
                yield record
        if not chunk:
            done = await finished()
            if partial and done:
                record = parser.feed(position, partial.decode("utf-8", "replace"))
                partial = b""
                if record is not None:
                    yield record
            record = parser.flush()
            if record is not None:
                yield record
            if done:
                return
            await asyncio.sleep(POLL_SECONDS)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(MAX_READ_BYTES)
    except FileNotFoundError:
        return b""
