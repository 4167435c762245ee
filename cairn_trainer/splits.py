"""Row sampling and train/test splits over plain lists of dict rows.

Pure Python on purpose (no numpy or pyarrow): the services' Python 3.11 test suite imports
this module to prove the splits' guarantees, and the trainer runtime uses the very same code.

Strategies:
- ``random``: a seeded shuffle; exactly round(n * test_fraction) rows (at least one, at most
  n - 1) go to test, each split keeps the input order.
- ``time_holdout``: per user, that user's latest interactions go to test:
  max(1, round(n_u * test_fraction)) of them, at most n_u - 1, so every user keeps at least
  one training row; users with a single interaction stay in train.
- ``strict_time``: one global cutoff near the (1 - test_fraction) quantile of timestamps;
  train is strictly earlier than the cutoff, test at or after it, so no training row is
  later than any test row. With ties the cutoff moves to the distinct timestamp whose test
  share is closest to test_fraction while leaving both splits non-empty.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Row = Mapping[str, Any]
# Whatever mapping type the caller's rows have, the splits hand the same objects back.
R = TypeVar("R", bound=Row)

STRATEGIES = ("random", "time_holdout", "strict_time")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017 (runs on Python 3.10)


@dataclass
class SplitResult(Generic[R]):
    train: list[R]
    test: list[R]
    # strict_time only: the timestamp (seconds since the epoch) the test split starts at.
    cutoff: float | None = None
    notes: list[str] = field(default_factory=list)


def timestamp_seconds(value: Any) -> float:
    """A comparable number for a timestamp cell: numbers (and numeric strings) as they are
    (epoch seconds or any monotonic unit), ISO 8601 strings and datetimes as seconds since
    the epoch (naive ones taken as UTC). Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)  # noqa: UP017
        number = (moment - _EPOCH).total_seconds()
    elif isinstance(value, dt.date):
        midnight = dt.datetime(value.year, value.month, value.day, tzinfo=_EPOCH.tzinfo)
        number = (midnight - _EPOCH).total_seconds()
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty timestamp")
        try:
            number = float(text)
        except ValueError:
            # Python 3.10's fromisoformat does not take a trailing "Z".
            iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            try:
                parsed = dt.datetime.fromisoformat(iso)
            except ValueError:
                raise ValueError(f"not a timestamp: {value!r}") from None
            return timestamp_seconds(parsed)
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"not a timestamp: {value!r}")
    return number


def sample_rows(rows: Iterable[R], percent: float, seed: int) -> Iterator[R]:
    """Keeps each row with probability percent/100, deterministically for a given seed and
    row order. Streams, so a large file is never held whole."""
    if not 0 < percent <= 100:
        raise ValueError(f"sample percent must be in (0, 100], got {percent:g}")
    if percent >= 100:
        yield from rows
        return
    rng = random.Random(seed)
    threshold = percent / 100.0
    for row in rows:
        # One draw per row whatever happens, so row i's fate depends only on (seed, i).
        if rng.random() < threshold:
            yield row


def split_rows(
    rows: Sequence[R],
    strategy: str,
    test_fraction: float,
    *,
    seed: int = 0,
    user_column: str = "",
    timestamp_column: str = "",
) -> SplitResult[R]:
    """Splits rows into train and test. Raises ValueError (with a message meant for the
    user) when the input cannot give two non-empty splits."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction:g}")
    if not rows:
        raise ValueError("cannot split an empty dataset (no rows after sampling)")
    if len(rows) < 2:
        raise ValueError(
            "cannot split a dataset of one row into train and test: need at least 2 rows"
        )
    if strategy == "random":
        result = random_split(rows, test_fraction, seed)
    elif strategy == "time_holdout":
        result = time_holdout_split(rows, test_fraction, user_column, timestamp_column)
    else:
        result = strict_time_split(rows, test_fraction, timestamp_column)
    if not result.train or not result.test:
        empty = "train" if not result.train else "test"
        raise ValueError(f"the {strategy} split left the {empty} split empty")
    return result


def _target_test_size(count: int, test_fraction: float) -> int:
    """round(count * fraction), kept within [1, count - 1] so both sides get a row."""
    return min(count - 1, max(1, math.floor(count * test_fraction + 0.5)))


def random_split(rows: Sequence[R], test_fraction: float, seed: int) -> SplitResult[R]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test_indices = set(order[: _target_test_size(len(rows), test_fraction)])
    train = [row for index, row in enumerate(rows) if index not in test_indices]
    test = [row for index, row in enumerate(rows) if index in test_indices]
    return SplitResult(train=train, test=test)


def _timestamps(rows: Sequence[Row], timestamp_column: str) -> list[float]:
    if not timestamp_column:
        raise ValueError("this split strategy needs a timestamp column")
    values: list[float] = []
    for index, row in enumerate(rows):
        if timestamp_column not in row:
            raise ValueError(f"row {index + 1} has no {timestamp_column!r} column")
        try:
            values.append(timestamp_seconds(row[timestamp_column]))
        except ValueError as error:
            raise ValueError(f"row {index + 1}, column {timestamp_column!r}: {error}") from None
    return values


def time_holdout_split(
    rows: Sequence[R], test_fraction: float, user_column: str, timestamp_column: str
) -> SplitResult[R]:
    if not user_column:
        raise ValueError("the time_holdout split needs a user column")
    stamps = _timestamps(rows, timestamp_column)
    by_user: dict[Any, list[int]] = {}
    for index, row in enumerate(rows):
        if user_column not in row:
            raise ValueError(f"row {index + 1} has no {user_column!r} column")
        by_user.setdefault(row[user_column], []).append(index)
    test_indices: set[int] = set()
    for indices in by_user.values():
        if len(indices) < 2:
            continue  # A single interaction stays in train: nothing to learn the user from.
        # Latest last; equal timestamps keep the input order, so the result is deterministic.
        ordered = sorted(indices, key=lambda i: (stamps[i], i))
        held_out = _target_test_size(len(ordered), test_fraction)
        test_indices.update(ordered[-held_out:])
    if not test_indices:
        raise ValueError(
            "the time_holdout split needs at least one user with two or more interactions"
        )
    train = [row for index, row in enumerate(rows) if index not in test_indices]
    test = [row for index, row in enumerate(rows) if index in test_indices]
    return SplitResult(train=train, test=test)


def strict_time_split(
    rows: Sequence[R], test_fraction: float, timestamp_column: str
) -> SplitResult[R]:
    stamps = _timestamps(rows, timestamp_column)
    ordered = sorted(stamps)
    distinct = sorted(set(ordered))
    if len(distinct) < 2:
        raise ValueError(
            "the strict_time split needs at least two distinct timestamps "
            f"(every row has {ordered[0]:g})"
        )
    wanted = len(ordered) - _target_test_size(len(ordered), test_fraction)
    # Any distinct timestamp but the earliest keeps both sides non-empty; pick the one whose
    # train size (rows strictly earlier) is closest to the target; ties go to the earlier one.
    best_cutoff = distinct[1]
    best_gap = abs(bisect.bisect_left(ordered, best_cutoff) - wanted)
    position = bisect.bisect_left(distinct, ordered[min(wanted, len(ordered) - 1)])
    for candidate in distinct[max(1, position - 1) : position + 2]:
        gap = abs(bisect.bisect_left(ordered, candidate) - wanted)
        if gap < best_gap:
            best_cutoff, best_gap = candidate, gap
    train = [row for row, stamp in zip(rows, stamps, strict=True) if stamp < best_cutoff]
    test = [row for row, stamp in zip(rows, stamps, strict=True) if stamp >= best_cutoff]
    result = SplitResult(train=train, test=test, cutoff=best_cutoff)
    actual = len(test) / len(rows)
    if abs(actual - test_fraction) > 0.05:
        result.notes.append(
            f"strict_time: equal timestamps put {actual:.1%} of rows in test "
            f"(asked for {test_fraction:.1%})"
        )
    return result
