"""Parsing trainer log files into entries: Python logging and TensorFlow C++ headers,
continuation lines, severities, and the pipeline component each entry belongs to; pod log
lines with the time Kubernetes stamped them with."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cairn.logproxy.v1 import log_entry_pb2
from services.logproxy.sources.files import RecordParser, follow_records, read_log, read_records

LOG = """\
2026-12-04 17:43:01,017 INFO cairn_trainer.progress: progress: ExampleGen 0.0% preparing data
2026-12-04 17:43:02.917105: E external/local_xla/cuda_fft.cc:479] Unable to register cuFFT
/venv/lib/python3.10/site-packages/google/api_core/x.py:246: FutureWarning: old Python
  warnings.warn(message, FutureWarning)
2026-12-04 17:43:05,100 INFO cairn_trainer.progress: progress: Trainer 40.0% training
2026-12-04 17:43:06,200 WARNING tensorflow: a warning
2026-12-04 17:43:07,300 ERROR cairn_trainer.cli: the job failed
Traceback (most recent call last):
  File "x.py", line 1
ValueError: boom
"""


def test_records_have_severity_component_and_continuations(tmp_path: Path) -> None:
    path = tmp_path / "trainer.log"
    path.write_text(LOG)
    records = read_records(path)
    assert [(r.severity, r.component) for r in records] == [
        (log_entry_pb2.SEVERITY_INFO, "ExampleGen"),
        (log_entry_pb2.SEVERITY_ERROR, "ExampleGen"),
        (log_entry_pb2.SEVERITY_INFO, "Trainer"),
        (log_entry_pb2.SEVERITY_WARNING, "Trainer"),
        (log_entry_pb2.SEVERITY_ERROR, "Trainer"),
    ]
    # Lines without a header belong to the record before them.
    assert records[1].message.endswith("warnings.warn(message, FutureWarning)")
    assert records[-1].message.splitlines()[-1] == "ValueError: boom"
    assert records[0].time is not None and records[0].time.second == 1
    positions = [r.position for r in records]
    assert positions == sorted(positions) and positions[0] == 0
    assert read_records(tmp_path / "missing.log") == []


def test_following_sees_appended_records_and_stops_when_finished(tmp_path: Path) -> None:
    path = tmp_path / "trainer.log"
    path.write_text(LOG)
    first, end = read_log(path)
    assert end == path.stat().st_size

    async def follow() -> list[str]:
        done = asyncio.Event()

        async def finished() -> bool:
            return done.is_set()

        seen: list[str] = []
        follower = follow_records(path, end, first[-1].component, finished)

        async def writer() -> None:
            await asyncio.sleep(0.1)
            with path.open("a") as handle:
                handle.write("2026-12-04 17:44:00,000 INFO x: progress: Evaluation 95% eval\n")
                handle.write("2026-12-04 17:44:01,000 INFO x: exported\n")
            await asyncio.sleep(1.2)
            done.set()

        task = asyncio.create_task(writer())
        async for record in follower:
            seen.append(f"{record.component}:{record.message}")
        await task
        return seen

    assert asyncio.run(follow()) == [
        "Evaluation:x: progress: Evaluation 95% eval",
        "Evaluation:x: exported",
    ]


def test_a_source_given_time_is_the_records_time() -> None:
    """The Kubernetes source parses pod log lines like file lines, with Kubernetes' times."""
    stamped = dt.datetime(2026, 12, 4, 19, 0, 1, 500000, tzinfo=dt.UTC)
    parser = RecordParser("pod/p/trainer")
    assert (
        parser.feed(0, "2026-12-04 17:43:01,017 INFO x: progress: Trainer 1% go", stamped) is None
    )
    assert parser.feed(1, "a continuation", stamped + dt.timedelta(seconds=1)) is None
    first = parser.feed(2, "2026-12-04 17:43:02,000 W y: careful", stamped + dt.timedelta(2))
    assert first is not None and first.time == stamped and first.component == "Trainer"
    assert first.message == "x: progress: Trainer 1% go\na continuation"
    last = parser.flush()
    assert last is not None and last.time == stamped + dt.timedelta(2)
    assert (last.position, last.severity, last.source) == (
        2,
        log_entry_pb2.SEVERITY_WARNING,
        "pod/p/trainer",
    )
    # A record without a header takes the given time too.
    assert parser.feed(3, "no header", stamped) is None
    headless = parser.flush()
    assert headless is not None and headless.time == stamped


def test_kubernetes_timestamps_are_split_from_pod_log_lines() -> None:
    from services.logproxy.sources.kubernetes import split_timestamp

    assert split_timestamp("2026-12-04T18:00:00.123456789Z 2026-12-04 17:00:00,000 INFO x") == (
        dt.datetime(2026, 12, 4, 18, 0, 0, 123456, tzinfo=dt.UTC),
        "2026-12-04 17:00:00,000 INFO x",
    )
    assert split_timestamp("2026-12-04T18:00:00Z ") == (
        dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC),
        "",
    )
    offset = split_timestamp("2026-12-04T19:00:00.5+01:00 line")
    assert offset[0] == dt.datetime(2026, 12, 4, 18, 0, 0, 500000, tzinfo=dt.UTC)
    assert offset[1] == "line"
    assert split_timestamp("no time here") == (None, "no time here")
