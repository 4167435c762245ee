"""cairn.MetricHistory, what get_metric_history returns: a read-only sequence of MetricPoint
kept as columns, the points built as they are read."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from cairn import MetricHistory, MetricPoint
from cairn.tracker.v1 import metric_pb2

T0 = 1_700_000_000_123


def page(
    steps: list[int], values: list[float], timestamps_ms: list[int]
) -> metric_pb2.MetricColumns:
    return metric_pb2.MetricColumns(steps=steps, values=values, timestamp_ms=timestamps_ms)


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@pytest.fixture
def history() -> MetricHistory:
    """Five points over three pages (one of them empty, as a last page can be)."""
    return MetricHistory.from_columns(
        [
            page([0, 1], [0.5, math.nan], [T0, T0 + 1]),
            page([], [], []),
            page([1, 2, 5], [math.inf, -1.0, 2.0], [T0 + 2, 0, T0 + 4]),
        ]
    )


def test_reads_like_the_list_it_replaced(history: MetricHistory) -> None:
    assert isinstance(history, Sequence)
    assert len(history) == 5
    assert history[0] == MetricPoint(0, 0.5, at(T0))
    assert history[2] == MetricPoint(1, math.inf, at(T0 + 2))  # the third page's first
    assert history[3] == MetricPoint(2, -1.0, None)  # no timestamp recorded
    assert history[-1] == history[4] == MetricPoint(5, 2.0, at(T0 + 4))
    assert history[1].step == 1 and math.isnan(history[1].value)
    assert history[1].timestamp == at(T0 + 1)
    assert [p.step for p in history] == [0, 1, 1, 2, 5]
    assert [p.step for p in reversed(history)] == [5, 2, 1, 1, 0]
    assert history[2:4] == [history[2], history[3]]
    assert history[::-2] == [history[4], history[2], history[0]]
    assert history[10:] == []
    assert MetricPoint(5, 2.0, at(T0 + 4)) in history
    assert history.index(MetricPoint(2, -1.0, None)) == 3
    for index in (5, -6):
        with pytest.raises(IndexError):
            history[index]
    with pytest.raises(TypeError):
        history["1"]  # type: ignore[call-overload]


def test_columns_without_building_points(history: MetricHistory) -> None:
    assert history.steps() == [0, 1, 1, 2, 5]
    assert history.timestamps_ms() == [T0, T0 + 1, T0 + 2, 0, T0 + 4]
    values = history.values()
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2:] == [math.inf, -1.0, 2.0]


def test_equal_to_a_list_of_the_same_points() -> None:
    points = [MetricPoint(0, 1.0, at(T0)), MetricPoint(3, 2.0, None)]
    history = MetricHistory([0, 3], [1.0, 2.0], [T0, 0])
    assert history == points and points == history
    assert history == MetricHistory.from_columns([page([0], [1.0], [T0]), page([3], [2.0], [0])])
    assert history != points[:1] and history != [*points, points[0]]
    assert history != (points[0], points[1])  # a list's equality: never equal to a tuple
    assert MetricHistory() == [] and not MetricHistory() and len(MetricHistory()) == 0
    with pytest.raises(TypeError):
        hash(history)


def test_pickles_and_copies_as_plain_columns(history: MetricHistory) -> None:
    for copied in (pickle.loads(pickle.dumps(history)), copy.deepcopy(history)):
        assert isinstance(copied, MetricHistory)
        assert copied.steps() == history.steps()
        assert copied.timestamps_ms() == history.timestamps_ms()
        assert copied[4] == history[4]


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 steps, 1 values, 2 timestamps"):
        MetricHistory([1, 2], [1.0], [0, 0])
    with pytest.raises(ValueError):
        MetricHistory.from_columns([page([1], [], [0])])


def test_repr_names_the_size_not_every_point(history: MetricHistory) -> None:
    assert repr(history) == "<MetricHistory of 5 points, steps 0 to 5>"
    assert repr(MetricHistory()) == "MetricHistory([])"
