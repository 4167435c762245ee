"""The trainer's data splits (cairn_trainer.splits): the guarantees each strategy gives.

cairn_trainer runs in its own TFX runtime, but splits.py is pure Python so these tests run
in the services' environment.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn_trainer.splits import (
    random_split,
    sample_rows,
    split_rows,
    strict_time_split,
    time_holdout_split,
    timestamp_seconds,
)

Row = dict[str, Any]


def interactions(count: int, users: int = 50, seed: int = 1) -> list[Row]:
    rng = random.Random(seed)
    return [
        {"user_id": f"u{rng.randrange(users)}", "item_id": f"i{i % 97}", "timestamp": 1000 + i}
        for i in range(count)
    ]


def ids(rows: Sequence[Row]) -> list[int]:
    return [row["timestamp"] for row in rows]


# random


def test_random_split_is_reproducible_for_a_seed() -> None:
    rows = interactions(1000)
    first = split_rows(rows, "random", 0.2, seed=42)
    second = split_rows(rows, "random", 0.2, seed=42)
    assert ids(first.train) == ids(second.train)
    assert ids(first.test) == ids(second.test)
    other = split_rows(rows, "random", 0.2, seed=43)
    assert ids(other.test) != ids(first.test)


def test_random_split_is_80_20_and_a_partition() -> None:
    rows = interactions(1000)
    result = split_rows(rows, "random", 0.2, seed=7)
    assert len(result.test) == 200
    assert len(result.train) == 800
    assert sorted(ids(result.train) + ids(result.test)) == ids(rows)
    # Each side keeps the input order.
    assert ids(result.train) == sorted(ids(result.train))
    assert ids(result.test) == sorted(ids(result.test))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_random_split_follows_the_fraction(fraction: float) -> None:
    result = random_split(interactions(400), fraction, seed=3)
    assert len(result.test) == round(400 * fraction)


def test_random_split_of_two_rows_gives_one_each() -> None:
    result = split_rows(interactions(2), "random", 0.2, seed=0)
    assert len(result.train) == 1
    assert len(result.test) == 1


# time_holdout


def test_time_holdout_holds_out_each_users_latest_rows() -> None:
    rows = interactions(2000, users=40)
    rng = random.Random(5)
    rng.shuffle(rows)  # Input order must not matter, only timestamps.
    result = split_rows(
        rows, "time_holdout", 0.2, user_column="user_id", timestamp_column="timestamp"
    )
    by_user: dict[str, list[Row]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)
    test_by_user: dict[str, list[int]] = {}
    for row in result.test:
        test_by_user.setdefault(row["user_id"], []).append(row["timestamp"])
    train_by_user: dict[str, list[int]] = {}
    for row in result.train:
        train_by_user.setdefault(row["user_id"], []).append(row["timestamp"])
    for user, user_rows in by_user.items():
        stamps = sorted(row["timestamp"] for row in user_rows)
        held_out = max(1, round(len(stamps) * 0.2))
        assert sorted(test_by_user[user]) == stamps[-held_out:]
        # Per user, every training row is earlier than every held-out row.
        assert max(train_by_user[user]) < min(test_by_user[user])
    assert len(result.train) + len(result.test) == len(rows)


def test_time_holdout_keeps_single_interaction_users_in_train() -> None:
    rows = [
        {"user_id": "a", "timestamp": 1},
        {"user_id": "b", "timestamp": 5},
        {"user_id": "b", "timestamp": 3},
        {"user_id": "c", "timestamp": 9},
    ]
    result = time_holdout_split(rows, 0.2, "user_id", "timestamp")
    assert [(r["user_id"], r["timestamp"]) for r in result.test] == [("b", 5)]
    assert {(r["user_id"], r["timestamp"]) for r in result.train} == {
        ("a", 1),
        ("b", 3),
        ("c", 9),
    }


def test_time_holdout_needs_a_user_with_two_interactions() -> None:
    rows = [{"user_id": f"u{i}", "timestamp": i} for i in range(5)]
    with pytest.raises(ValueError, match="two or more interactions"):
        split_rows(rows, "time_holdout", 0.2, user_column="user_id", timestamp_column="timestamp")


def test_time_holdout_reads_iso_timestamps() -> None:
    rows = [
        {"user_id": "a", "timestamp": "2026-01-02T00:00:00Z"},
        {"user_id": "a", "timestamp": "2026-01-01T00:00:00+00:00"},
        {"user_id": "a", "timestamp": "2026-01-03 00:00:00"},
    ]
    result = time_holdout_split(rows, 0.3, "user_id", "timestamp")
    assert [r["timestamp"] for r in result.test] == ["2026-01-03 00:00:00"]


# strict_time


def test_strict_time_no_training_row_is_later_than_any_test_row() -> None:
    rows = interactions(1000)
    random.Random(9).shuffle(rows)
    result = split_rows(rows, "strict_time", 0.2, timestamp_column="timestamp")
    assert max(ids(result.train)) < min(ids(result.test))
    assert result.cutoff == min(ids(result.test))
    assert len(result.test) == 200


def test_strict_time_moves_the_cutoff_over_ties() -> None:
    # Half the rows share the latest timestamp: the cutoff can only be at it.
    rows = [{"timestamp": 1}] * 5 + [{"timestamp": 2}] * 5
    result = strict_time_split(rows, 0.2, "timestamp")
    assert ids(result.train) == [1] * 5
    assert ids(result.test) == [2] * 5
    assert result.notes  # The fraction differs from the one asked for, and it says so.


def test_strict_time_with_one_timestamp_is_an_error() -> None:
    with pytest.raises(ValueError, match="two distinct timestamps"):
        split_rows([{"timestamp": 7}] * 10, "strict_time", 0.2, timestamp_column="timestamp")


@settings(max_examples=200, deadline=None)
@given(
    stamps=st.lists(
        st.one_of(
            st.integers(min_value=-(10**12), max_value=10**12),
            st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
        ),
        min_size=2,
        max_size=300,
    ),
    fraction=st.floats(min_value=0.01, max_value=0.99),
)
def test_strict_time_property(stamps: list[float], fraction: float) -> None:
    rows = [{"timestamp": stamp, "n": index} for index, stamp in enumerate(stamps)]
    if len(set(stamps)) < 2:
        with pytest.raises(ValueError):
            split_rows(rows, "strict_time", fraction, timestamp_column="timestamp")
        return
    result = split_rows(rows, "strict_time", fraction, timestamp_column="timestamp")
    train = [row["timestamp"] for row in result.train]
    test = [row["timestamp"] for row in result.test]
    assert train and test
    assert max(train) < min(test)
    # A partition of the input.
    assert sorted(row["n"] for row in result.train + result.test) == list(range(len(rows)))
    # The test share is the closest one any cutoff between distinct timestamps can give.
    ordered = sorted(stamps)
    wanted_train = len(rows) - min(len(rows) - 1, max(1, int(len(rows) * fraction + 0.5)))
    achievable = [sum(1 for s in ordered if s < cut) for cut in sorted(set(ordered))[1:]]
    assert abs(len(train) - wanted_train) == min(abs(a - wanted_train) for a in achievable)


@settings(max_examples=100, deadline=None)
@given(
    users=st.lists(st.integers(min_value=0, max_value=8), min_size=2, max_size=120),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_time_holdout_property(users: list[int], seed: int) -> None:
    rng = random.Random(seed)
    rows = [{"user_id": u, "timestamp": rng.randrange(50), "n": i} for i, u in enumerate(users)]
    counts = {u: users.count(u) for u in set(users)}
    if max(counts.values()) < 2:
        with pytest.raises(ValueError):
            split_rows(
                rows, "time_holdout", 0.2, user_column="user_id", timestamp_column="timestamp"
            )
        return
    result = split_rows(
        rows, "time_holdout", 0.2, user_column="user_id", timestamp_column="timestamp"
    )
    for user, count in counts.items():
        train = [r for r in result.train if r["user_id"] == user]
        test = [r for r in result.test if r["user_id"] == user]
        if count == 1:
            assert not test
            continue
        assert train and test
        # Nothing held out is earlier than anything the user trains on.
        assert max(r["timestamp"] for r in train) <= min(r["timestamp"] for r in test)


# errors and inputs


@pytest.mark.parametrize("strategy", ["random", "time_holdout", "strict_time"])
def test_empty_input_is_a_clear_error(strategy: str) -> None:
    empty: list[Row] = []
    with pytest.raises(ValueError, match="empty dataset"):
        split_rows(empty, strategy, 0.2, user_column="user_id", timestamp_column="timestamp")


@pytest.mark.parametrize("strategy", ["random", "time_holdout", "strict_time"])
def test_one_row_is_a_clear_error(strategy: str) -> None:
    rows: list[Row] = [{"user_id": "a", "timestamp": 1}]
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_rows(rows, strategy, 0.2, user_column="user_id", timestamp_column="timestamp")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_must_be_strictly_between_0_and_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_rows(interactions(10), "random", fraction)


def test_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown split strategy"):
        split_rows(interactions(10), "by_moon_phase", 0.2)


def test_a_bad_timestamp_names_the_row() -> None:
    rows: list[Row] = [{"timestamp": 1}, {"timestamp": "yesterday"}]
    with pytest.raises(ValueError, match="row 2"):
        split_rows(rows, "strict_time", 0.2, timestamp_column="timestamp")


def test_timestamp_seconds_accepts_numbers_iso_strings_and_datetimes() -> None:
    epoch_day = dt.datetime(1970, 1, 2, tzinfo=dt.timezone.utc)  # noqa: UP017
    assert timestamp_seconds(86400) == 86400.0
    assert timestamp_seconds("86400") == 86400.0
    assert timestamp_seconds("1970-01-02T00:00:00Z") == 86400.0
    assert timestamp_seconds("1970-01-02T01:00:00+01:00") == 86400.0
    assert timestamp_seconds(epoch_day) == 86400.0
    assert timestamp_seconds(dt.date(1970, 1, 2)) == 86400.0
    for bad in ("", "soon", None, True, float("nan")):
        with pytest.raises(ValueError):
            timestamp_seconds(bad)


# sampling


def test_sampling_is_seeded_and_close_to_the_percentage() -> None:
    rows = interactions(20_000)
    first = list(sample_rows(rows, 10, seed=42))
    assert ids(first) == ids(list(sample_rows(rows, 10, seed=42)))
    assert ids(first) != ids(list(sample_rows(rows, 10, seed=1)))
    assert 1800 <= len(first) <= 2200
    assert len(list(sample_rows(rows, 100, seed=42))) == len(rows)


def test_sampling_rejects_a_bad_percentage() -> None:
    with pytest.raises(ValueError):
        list(sample_rows(interactions(3), 0, seed=1))
