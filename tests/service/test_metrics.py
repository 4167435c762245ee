"""Metrics through the real TrackerService: batch and streaming ingest with deduplication,
latest values, special floats, history paging and downsampling, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import timestamp_pb2

from cairn.tracker.v1 import metric_pb2, run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.common.paging import PageTokenCodec

from cairn_testing import (
    TrackerStub,
    error_info,
    expect_error,
    log_metrics,
    metric,
    new_experiment,
    new_run,
    shared_tracker,
)

__all__ = ["shared_tracker"]  # a fixture: importing it is what makes pytest see it

T0 = 1_700_000_000_000


@pytest.fixture
def run(shared_tracker: TrackerStub) -> run_pb2.Run:
    return new_run(shared_tracker, new_experiment(shared_tracker))


def history(
    tracker: TrackerStub, run: run_pb2.Run, key: str, **request: int | str | bool
) -> pb.ListMetricHistoryResponse:
    return tracker.ListMetricHistory(
        pb.ListMetricHistoryRequest(run=run.name, metric_key=key, **request)  # type: ignore[arg-type]
    )


def steps_and_values(response: pb.ListMetricHistoryResponse) -> list[tuple[int, float]]:
    return [(p.step, p.value) for p in response.points]


def latest(tracker: TrackerStub, run: run_pb2.Run) -> dict[str, metric_pb2.Metric]:
    return {m.key: m for m in tracker.GetRun(pb.GetRunRequest(name=run.name)).metrics}


def stream(
    tracker: TrackerStub, run: run_pb2.Run, batches: list[tuple[str, list[metric_pb2.Metric]]]
) -> pb.StreamMetricsResponse:
    def requests() -> Iterator[pb.StreamMetricsRequest]:
        for batch_id, points in batches:
            yield pb.StreamMetricsRequest(run=run.name, batch_id=batch_id, metrics=points)

    return tracker.StreamMetrics(requests())


# ------------------------------------------------------------------ ingest and deduplication


def test_log_metrics_stores_points(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    points = [metric("loss", 1.0 / (s + 1), step=s, timestamp_ms=T0 + s) for s in range(5)]
    points.append(metric("acc", 0.5, step=0, timestamp_ms=T0))
    response = log_metrics(shared_tracker, run, points, batch_id="epoch-0")
    assert response.stored_point_count == 6
    assert not response.duplicate
    loss = history(shared_tracker, run, "loss")
    assert steps_and_values(loss) == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert [p.timestamp.ToMilliseconds() for p in loss.points] == [T0 + s for s in range(5)]
    assert loss.total_point_count == 5
    assert not loss.next_page_token
    assert not loss.downsampled
    assert steps_and_values(history(shared_tracker, run, "acc")) == [(0, 0.5)]
    assert history(shared_tracker, run, "missing").points == []
    assert history(shared_tracker, run, "missing").total_point_count == 0


def test_points_without_timestamp_get_the_server_clock(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    log_metrics(shared_tracker, run, [metric_pb2.Metric(key="m", value=1.0)])
    (point,) = history(shared_tracker, run, "m").points
    assert abs(point.timestamp.ToMilliseconds() - run.create_time.ToMilliseconds()) < 60_000


def test_a_retried_batch_is_stored_once(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    points = [metric("loss", float(s), step=s) for s in range(10)]
    first = log_metrics(shared_tracker, run, points, batch_id="job-1/loss/epoch-3")
    retry = log_metrics(shared_tracker, run, points, batch_id="job-1/loss/epoch-3")
    assert (first.stored_point_count, first.duplicate) == (10, False)
    assert (retry.stored_point_count, retry.duplicate) == (0, True)
    # The same points re-sent later (new timestamps) are still the same batch.
    resent = [metric("loss", float(s), step=s, timestamp_ms=T0 + 60_000) for s in range(10)]
    assert log_metrics(shared_tracker, run, resent, batch_id="job-1/loss/epoch-3").duplicate
    # Other points under a known batch id are refused, never silently dropped.
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        log_metrics,
        shared_tracker,
        run,
        [metric("loss", 99.0, step=99)],
        "job-1/loss/epoch-3",
    )
    assert error_info(error).reason == "BATCH_ID_REUSED"
    stored = history(shared_tracker, run, "loss")
    assert stored.total_point_count == 10
    assert steps_and_values(stored) == [(s, float(s)) for s in range(10)]
    assert latest(shared_tracker, run)["loss"].step == 9

    # Batch ids are per run: another run may use the same one.
    other_run = new_run(shared_tracker, new_experiment(shared_tracker))
    elsewhere = log_metrics(shared_tracker, other_run, points, batch_id="job-1/loss/epoch-3")
    assert (elsewhere.stored_point_count, elsewhere.duplicate) == (10, False)


def test_an_empty_batch_with_an_id_claims_the_id(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    assert not log_metrics(shared_tracker, run, [], batch_id="empty").duplicate
    assert log_metrics(shared_tracker, run, [], batch_id="empty").duplicate


def test_batches_without_id_are_not_deduplicated(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    points = [metric("x", 1.0, step=1, timestamp_ms=T0)]
    for _ in range(3):
        response = log_metrics(shared_tracker, run, points)
        assert (response.stored_point_count, response.duplicate) == (1, False)
    assert history(shared_tracker, run, "x").total_point_count == 3


def test_stream_metrics_deduplicates_resent_batches(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    b1 = [metric("loss", float(s), step=s) for s in range(0, 4)]
    b2 = [metric("loss", float(s), step=s) for s in range(4, 7)]
    response = stream(shared_tracker, run, [("b1", b1), ("b2", b2), ("b1", b1)])
    assert response.batch_count == 3
    assert response.duplicate_batch_count == 1
    assert response.stored_point_count == 7
    assert steps_and_values(history(shared_tracker, run, "loss")) == [
        (s, float(s)) for s in range(7)
    ]

    # A reconnecting client resends everything: nothing is stored twice.
    b3 = [metric("loss", 7.0, step=7)]
    again = stream(shared_tracker, run, [("b1", b1), ("b2", b2), ("b3", b3), ("", b3)])
    assert (again.batch_count, again.duplicate_batch_count, again.stored_point_count) == (4, 2, 2)
    assert history(shared_tracker, run, "loss").total_point_count == 9  # b3 twice: no id
    # Batches logged one by one share the ids with streamed ones.
    assert log_metrics(shared_tracker, run, b2, batch_id="b2").duplicate


def test_stream_metrics_with_nothing_sent(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    response = stream(shared_tracker, run, [])
    assert (response.batch_count, response.duplicate_batch_count) == (0, 0)
    assert response.stored_point_count == 0


def test_a_failed_stream_keeps_the_batches_before_the_bad_one(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    good = [metric("m", 1.0, step=1)]
    bad = [metric("", 2.0, step=2)]
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, stream, shared_tracker, run, [("g", good), ("x", bad)]
    )
    assert error_info(error).metadata["field"] == "metrics"
    assert history(shared_tracker, run, "m").total_point_count == 1
    retry = stream(shared_tracker, run, [("g", good), ("x", [metric("m", 2.0, step=2)])])
    assert (retry.duplicate_batch_count, retry.stored_point_count) == (1, 1)
    assert steps_and_values(history(shared_tracker, run, "m")) == [(1, 1.0), (2, 2.0)]


@pytest.mark.parametrize(
    ("points", "batch_id", "field"),
    [
        ([metric("", 1.0)], "", "metrics"),
        ([metric("k" * 251, 1.0)], "", "metrics"),
        ([metric("bad\nkey", 1.0)], "", "metrics"),
        ([metric("ok", 1.0)], "b" * 129, "batch_id"),
        ([metric("ok", 1.0)], "nul\x00id", "batch_id"),
        (
            [metric_pb2.Metric(key="ok", timestamp=timestamp_pb2.Timestamp(seconds=10**17))],
            "",
            "metrics.timestamp",
        ),
    ],
    ids=["empty-key", "long-key", "control-key", "long-batch-id", "nul-batch-id", "time"],
)
def test_log_metrics_validates(
    shared_tracker: TrackerStub,
    run: run_pb2.Run,
    points: list[metric_pb2.Metric],
    batch_id: str,
    field: str,
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        log_metrics,
        shared_tracker,
        run,
        [metric("ok", 0.0), *points],
        batch_id,
    )
    assert error_info(error).metadata["field"] == field
    assert history(shared_tracker, run, "ok").total_point_count == 0


def test_batch_size_limit(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    points = [metric_pb2.Metric(key="m", value=1.0, step=s) for s in range(100_001)]
    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, log_metrics, shared_tracker, run, points)
    assert "100000" in error.details()
    assert history(shared_tracker, run, "m").total_point_count == 0


def test_log_metrics_to_unknown_run_is_not_found(shared_tracker: TrackerStub) -> None:
    ghost = run_pb2.Run(name="experiments/-/runs/ghost")
    expect_error(grpc.StatusCode.NOT_FOUND, log_metrics, shared_tracker, ghost, [metric("m", 1)])
    expect_error(grpc.StatusCode.NOT_FOUND, history, shared_tracker, ghost, "m")


# ------------------------------------------------------------------ columnar batches


def columns(
    points: list[tuple[str, float, int, int]], keys: list[str] | None = None
) -> metric_pb2.MetricPointColumns:
    """(key, value, step, timestamp_ms) points as MetricPointColumns (timestamp 0: server's)."""
    names = keys or list(dict.fromkeys(p[0] for p in points))
    return metric_pb2.MetricPointColumns(
        keys=names,
        key_indexes=[names.index(p[0]) for p in points],
        values=[p[1] for p in points],
        steps=[p[2] for p in points],
        timestamp_ms=[p[3] for p in points],
    )


def test_columnar_batches_store_the_same_points(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    points = [("loss", 1.0 / (s + 1), s, T0 + s) for s in range(5)]
    points += [("acc", math.nan, 0, T0), ("acc", math.inf, 1, 0)]
    response = shared_tracker.LogMetrics(
        pb.LogMetricsRequest(
            run=run.name,
            batch_id="columns-1",
            metrics=[metric("lr", 0.1, step=0, timestamp_ms=T0)],
            columns=columns(points),
        )
    )
    assert (response.stored_point_count, response.duplicate) == (8, False)
    loss = history(shared_tracker, run, "loss")
    assert steps_and_values(loss) == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert [p.timestamp.ToMilliseconds() for p in loss.points] == [T0 + s for s in range(5)]
    acc = history(shared_tracker, run, "acc").points
    assert math.isnan(acc[0].value) and acc[0].timestamp.ToMilliseconds() == T0
    # Timestamp 0 is the server's clock, as an unset Timestamp is.
    assert acc[1].value == math.inf
    assert abs(acc[1].timestamp.ToMilliseconds() - run.create_time.ToMilliseconds()) < 60_000
    assert steps_and_values(history(shared_tracker, run, "lr")) == [(0, 0.1)]
    assert latest(shared_tracker, run)["acc"].value == math.inf
    # Without timestamps at all every point takes the server's clock.
    bare = columns([("bare", 2.0, 3, 0)])
    del bare.timestamp_ms[:]
    log = shared_tracker.LogMetrics(pb.LogMetricsRequest(run=run.name, columns=bare))
    assert log.stored_point_count == 1
    (point,) = history(shared_tracker, run, "bare").points
    assert abs(point.timestamp.ToMilliseconds() - run.create_time.ToMilliseconds()) < 60_000


def test_a_batch_is_the_same_in_either_form(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    """The batch fingerprint is over the points, not their encoding: a batch first sent as
    Metric messages and retried as columns (or the other way) is a duplicate, and other
    points under its id are still refused."""
    points = [("loss", float(s), s, T0) for s in range(10)]
    first = log_metrics(
        shared_tracker, run, [metric(k, v, step=s, timestamp_ms=t) for k, v, s, t in points], "b"
    )
    assert first.stored_point_count == 10
    retry = shared_tracker.LogMetrics(
        pb.LogMetricsRequest(run=run.name, batch_id="b", columns=columns(points))
    )
    assert (retry.stored_point_count, retry.duplicate) == (0, True)
    other = [("loss", float(s), s + 1, T0) for s in range(10)]
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.LogMetrics,
        pb.LogMetricsRequest(run=run.name, batch_id="b", columns=columns(other)),
    )
    assert error_info(error).reason == "BATCH_ID_REUSED"
    streamed = shared_tracker.StreamMetrics(
        iter(
            [
                pb.StreamMetricsRequest(run=run.name, batch_id="b", columns=columns(points)),
                pb.StreamMetricsRequest(run=run.name, batch_id="c", columns=columns(other)),
            ]
        )
    )
    assert (streamed.batch_count, streamed.duplicate_batch_count) == (2, 1)
    assert streamed.stored_point_count == 10
    assert history(shared_tracker, run, "loss").total_point_count == 20


BAD_COLUMNS = {
    "short-values": (
        metric_pb2.MetricPointColumns(keys=["m"], key_indexes=[0, 0], steps=[1, 2], values=[1.0]),
        "columns",
    ),
    "short-timestamps": (
        metric_pb2.MetricPointColumns(
            keys=["m"], key_indexes=[0, 0], steps=[1, 2], values=[1.0, 2.0], timestamp_ms=[T0]
        ),
        "columns.timestamp_ms",
    ),
    "index-past-keys": (
        metric_pb2.MetricPointColumns(keys=["m"], key_indexes=[0, 1], steps=[1, 2], values=[1, 2]),
        "columns.key_indexes",
    ),
    "negative-index": (
        metric_pb2.MetricPointColumns(keys=["m"], key_indexes=[-1], steps=[1], values=[1.0]),
        "columns.key_indexes",
    ),
    "no-keys": (
        metric_pb2.MetricPointColumns(key_indexes=[0], steps=[1], values=[1.0]),
        "columns.key_indexes",
    ),
    "bad-key": (
        metric_pb2.MetricPointColumns(keys=["a\x00b"], key_indexes=[0], steps=[1], values=[1.0]),
        "columns.keys",
    ),
    "bad-key-without-points": (
        metric_pb2.MetricPointColumns(keys=["ok", ""]),
        "columns.keys",
    ),
    "time-out-of-range": (
        metric_pb2.MetricPointColumns(
            keys=["m"], key_indexes=[0], steps=[1], values=[1.0], timestamp_ms=[2**62]
        ),
        "columns.timestamp_ms",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_COLUMNS))
def test_malformed_columns_are_invalid_and_store_nothing(
    shared_tracker: TrackerStub, run: run_pb2.Run, case: str
) -> None:
    bad, field = BAD_COLUMNS[case]
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.LogMetrics,
        pb.LogMetricsRequest(
            run=run.name, metrics=[metric("ok", 0.0)], columns=bad, batch_id="bad"
        ),
    )
    assert error_info(error).metadata["field"] == field
    assert history(shared_tracker, run, "ok").total_point_count == 0
    # Nothing was claimed: the id is still free for a good batch.
    good = log_metrics(shared_tracker, run, [metric("ok", 1.0)], "bad")
    assert (good.stored_point_count, good.duplicate) == (1, False)


def test_the_batch_limit_counts_both_forms(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    many = metric_pb2.MetricPointColumns(keys=["m"])
    many.key_indexes.extend([0] * 100_000)
    many.steps.extend(range(100_000))
    many.values.extend([1.0] * 100_000)
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.LogMetrics,
        pb.LogMetricsRequest(run=run.name, metrics=[metric("m", 0.0)], columns=many),
    )
    assert "100001" in error.details()
    assert error_info(error).metadata["field"] == "columns"
    stored = shared_tracker.LogMetrics(pb.LogMetricsRequest(run=run.name, columns=many))
    assert stored.stored_point_count == 100_000
    assert history(shared_tracker, run, "m").total_point_count == 100_000


# ------------------------------------------------------------------ latest values and floats


def test_latest_value_is_highest_step_then_newest_timestamp(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    log_metrics(shared_tracker, run, [metric("loss", 0.5, step=5, timestamp_ms=T0)])
    log_metrics(shared_tracker, run, [metric("loss", 0.9, step=3, timestamp_ms=T0 + 1000)])
    current = latest(shared_tracker, run)["loss"]
    assert (current.step, current.value) == (5, 0.5)

    # Same step: the newer timestamp wins, an older one does not.
    log_metrics(shared_tracker, run, [metric("loss", 0.4, step=5, timestamp_ms=T0 + 10)])
    log_metrics(shared_tracker, run, [metric("loss", 0.7, step=5, timestamp_ms=T0 + 5)])
    current = latest(shared_tracker, run)["loss"]
    assert (current.step, current.value) == (5, 0.4)
    assert current.timestamp.ToMilliseconds() == T0 + 10

    # Within one batch as well.
    log_metrics(
        shared_tracker,
        run,
        [
            metric("acc", 0.8, step=9, timestamp_ms=T0),
            metric("acc", 0.1, step=2, timestamp_ms=T0 + 99),
            metric("acc", 0.85, step=9, timestamp_ms=T0 + 1),
        ],
    )
    assert latest(shared_tracker, run)["acc"].value == 0.85
    # The search sees the same latest value.
    found = shared_tracker.SearchRuns(
        pb.SearchRunsRequest(experiment_ids=[run.experiment_id], filter="metrics.loss = 0.4")
    )
    assert [r.run_id for r in found.runs] == [run.run_id]


def test_nan_and_infinities_round_trip(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    values = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1.7976931348623157e308]
    log_metrics(
        shared_tracker,
        run,
        [metric("odd", v, step=i, timestamp_ms=T0) for i, v in enumerate(values)],
    )
    points = history(shared_tracker, run, "odd").points
    assert [p.step for p in points] == list(range(len(values)))
    assert math.isnan(points[0].value)
    assert [p.value for p in points[1:]] == values[1:]

    log_metrics(shared_tracker, run, [metric("n", math.nan, step=1), metric("i", -math.inf)])
    current = latest(shared_tracker, run)
    assert math.isnan(current["n"].value)
    assert current["i"].value == -math.inf
    # Downsampling keeps them too.
    thinned = history(shared_tracker, run, "odd", max_points=4)
    assert thinned.downsampled
    assert thinned.points[0].step == 0 and math.isnan(thinned.points[0].value)
    assert any(p.value == math.inf for p in thinned.points)
    assert thinned.points[-1].value == values[-1]


def as_rows(response: pb.ListMetricHistoryResponse) -> list[tuple[int, float | str, int]]:
    """(step, value, timestamp ms) of either form, NaN as the string "nan" (NaN != NaN)."""

    def value(v: float) -> float | str:
        return "nan" if math.isnan(v) else v

    if response.HasField("columns"):
        assert not response.points, "a columnar answer has no points"
        c = response.columns
        rows = zip(c.steps, c.values, c.timestamp_ms, strict=True)
        return [(step, value(v), ms) for step, v, ms in rows]
    return [(p.step, value(p.value), p.timestamp.ToMilliseconds()) for p in response.points]


def test_columnar_history_is_the_same_points(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    values = [math.nan, math.inf, -math.inf, 0.0, 2.5, -1.0] * 5
    log_metrics(
        shared_tracker,
        run,
        [metric("c", v, step=i * 3, timestamp_ms=T0 + i) for i, v in enumerate(values)],
    )
    plain = history(shared_tracker, run, "c")
    columnar = history(shared_tracker, run, "c", columnar=True)
    assert len(as_rows(plain)) == len(values)
    assert as_rows(columnar) == as_rows(plain)
    assert columnar.total_point_count == plain.total_point_count == len(values)
    # Pages, step windows and downsampling answer in columns too, with the same points.
    for request in (
        {"page_size": 7},
        {"start_step": 10, "end_step": 40},
        {"max_points": 8},
    ):
        token, plain_rows, columnar_rows = "", [], []
        while True:
            page = history(shared_tracker, run, "c", page_token=token, **request)
            plain_rows += as_rows(page)
            token = page.next_page_token
            if not token:
                break
        token = ""
        while True:
            page = history(shared_tracker, run, "c", page_token=token, columnar=True, **request)
            assert page.HasField("columns")
            columnar_rows += as_rows(page)
            token = page.next_page_token
            if not token:
                break
        assert columnar_rows == plain_rows and plain_rows, request


# ------------------------------------------------------------------ history paging


def test_history_pages_25000_points_in_step_order(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    steps = list(range(25_000))
    random.Random(7).shuffle(steps)  # logged out of order, read back in step order
    log_metrics(
        shared_tracker,
        run,
        [metric_pb2.Metric(key="loss", value=s * 0.5, step=s) for s in steps],
        batch_id="all",
    )
    pages = []
    token = ""
    while True:
        response = history(shared_tracker, run, "loss", page_size=10_000, page_token=token)
        pages.append(response)
        assert response.total_point_count == 25_000
        assert not response.downsampled
        token = response.next_page_token
        if not token:
            break
        assert len(pages) < 10
    assert [len(p.points) for p in pages] == [10_000, 10_000, 5_000]
    got = [point.step for page in pages for point in page.points]
    assert got == list(range(25_000))
    assert all(point.value == point.step * 0.5 for page in pages for point in page.points)

    # The default page is 10,000 points.
    assert len(history(shared_tracker, run, "loss").points) == 10_000

    # A token is bound to its query: another metric key cannot use it...
    log_metrics(shared_tracker, run, [metric("acc", 1.0)])
    first_token = pages[0].next_page_token
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        history,
        shared_tracker,
        run,
        "acc",
        page_size=10_000,
        page_token=first_token,
    )
    info = error_info(error)
    assert info.reason == "PAGE_TOKEN_MISMATCH"
    assert info.metadata["field"] == "page_token"
    # ...nor another step window.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        history,
        shared_tracker,
        run,
        "loss",
        page_token=first_token,
        start_step=5,
    )
    # A tampered token is refused, never INTERNAL.
    for bad in tampered(first_token):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, history, shared_tracker, run, "loss", page_token=bad
        )
        assert error_info(error).reason == "INVALID_PAGE_TOKEN"


def listing(
    tracker: TrackerStub, run: run_pb2.Run, key: str, **request: int | bool
) -> tuple[list[tuple[int, float | str, int]], list[int]]:
    """Every page of a listing: its rows (as_rows) and each page's total_point_count."""
    rows: list[tuple[int, float | str, int]] = []
    totals: list[int] = []
    token = ""
    while True:
        page = history(tracker, run, key, page_token=token, **request)
        rows += as_rows(page)
        totals.append(page.total_point_count)
        token = page.next_page_token
        if not token:
            return rows, totals


def test_history_pages_split_steps_in_logging_order(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    """Several points per step, logged in four passes over the steps: pages (of 7, so their
    edges fall inside steps) give each point once, by step and then in logging order, in
    both forms; NaN comes back as NaN."""

    def value(i: int) -> float:
        return math.nan if i % 9 == 0 else i / 2

    for rank in range(4):  # point i is the rank-th logged at step i // 4
        points = [metric("m", value(i), step=i // 4, timestamp_ms=T0 + i) for i in range(60)]
        log_metrics(shared_tracker, run, points[rank::4], batch_id=f"pass-{rank}")
    expected = [(i // 4, "nan" if i % 9 == 0 else i / 2, T0 + i) for i in range(60)]
    for columnar in (False, True):
        rows, totals = listing(shared_tracker, run, "m", page_size=7, columnar=columnar)
        assert rows == expected
        assert totals == [60] * 9
    # One page holding everything counts itself.
    whole = history(shared_tracker, run, "m", page_size=60, columnar=True)
    assert as_rows(whole) == expected
    assert whole.total_point_count == 60 and not whole.next_page_token


def test_history_later_pages_repeat_the_first_count(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    """The range is counted for a listing's first page; later pages repeat that count, also
    when points arrived meanwhile (the pages still give them). A token without a count (an
    earlier version's) is still served, and counts."""
    log_metrics(shared_tracker, run, [metric("m", float(s), step=s) for s in range(10)])
    first = history(shared_tracker, run, "m", page_size=4, columnar=True)
    assert first.total_point_count == 10
    log_metrics(shared_tracker, run, [metric("m", float(s), step=s) for s in range(10, 15)])
    token, steps, totals = first.next_page_token, list(first.columns.steps), []
    while token:
        page = history(shared_tracker, run, "m", page_size=4, page_token=token, columnar=True)
        steps += page.columns.steps
        totals.append(page.total_point_count)
        token = page.next_page_token
    assert steps == list(range(15))
    assert totals == [10] * 3
    assert history(shared_tracker, run, "m", page_size=4).total_point_count == 15

    codec = PageTokenCodec("test-secret")  # the tests' tracker settings
    token = history(shared_tracker, run, "m", page_size=4).next_page_token
    padded = token + "=" * (-len(token) % 4)
    query = json.loads(base64.urlsafe_b64decode(padded)[:-16])["q"]
    last_step, last_id, counted = codec.decode(token, query)
    assert (last_step, counted) == (3, 15)
    old = codec.encode([last_step, last_id], query)
    page = history(shared_tracker, run, "m", page_size=4, page_token=old, columnar=True)
    assert list(page.columns.steps) == [4, 5, 6, 7]
    assert page.total_point_count == 15


def tampered(token: str) -> list[str]:
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    return [flipped, token[:-2], token + "AAAA", "not-a-token", "%%%", "é", token[::-1]]


def test_history_step_windows(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    log_metrics(shared_tracker, run, [metric_pb2.Metric(key="m", step=s) for s in range(0, 500)])
    window = history(shared_tracker, run, "m", start_step=100, end_step=199)
    assert [p.step for p in window.points] == list(range(100, 200))
    assert window.total_point_count == 100
    open_ended = history(shared_tracker, run, "m", start_step=450)
    assert [p.step for p in open_ended.points] == list(range(450, 500))
    up_to = history(shared_tracker, run, "m", start_step=0, end_step=9)
    assert [p.step for p in up_to.points] == list(range(10))
    paged = history(shared_tracker, run, "m", start_step=100, end_step=199, page_size=60)
    rest = history(
        shared_tracker,
        run,
        "m",
        start_step=100,
        end_step=199,
        page_size=60,
        page_token=paged.next_page_token,
    )
    assert [p.step for p in [*paged.points, *rest.points]] == list(range(100, 200))
    assert not rest.next_page_token

    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        history,
        shared_tracker,
        run,
        "m",
        start_step=9,
        end_step=3,
    )
    assert error_info(error).metadata["field"] == "end_step"
    for bad in ({"max_points": -1}, {"page_size": -1}):
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, history, shared_tracker, run, "m", **bad)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, history, shared_tracker, run, "")


# ------------------------------------------------------------------ downsampling


def test_downsampling_keeps_ends_and_spikes(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    spike_up, spike_down = 4321, 7777
    values = {s: float(s % 10) for s in range(10_000)}
    values[spike_up] = 1e9
    values[spike_down] = -1e9
    log_metrics(
        shared_tracker,
        run,
        [metric_pb2.Metric(key="loss", value=v, step=s) for s, v in values.items()],
    )
    response = history(shared_tracker, run, "loss", max_points=100)
    assert response.downsampled
    assert response.total_point_count == 10_000
    assert 4 <= len(response.points) <= 100
    assert not response.next_page_token
    steps = [p.step for p in response.points]
    assert steps == sorted(set(steps))  # in step order, no duplicates
    assert steps[0] == 0 and steps[-1] == 9_999
    kept = {p.step: p.value for p in response.points}
    assert kept[spike_up] == 1e9
    assert kept[spike_down] == -1e9
    assert all(values[s] == v for s, v in kept.items())

    # Enough room: everything, not thinned.
    for max_points in (10_000, 20_000):
        full = history(shared_tracker, run, "loss", max_points=max_points)
        assert not full.downsampled
        assert full.total_point_count == 10_000
        assert [p.step for p in full.points] == list(range(10_000))

    # A window is downsampled on its own.
    window = history(shared_tracker, run, "loss", max_points=40, start_step=4000, end_step=4999)
    assert window.downsampled
    assert window.total_point_count == 1_000
    window_steps = [p.step for p in window.points]
    assert len(window_steps) <= 40
    assert window_steps[0] == 4000 and window_steps[-1] == 4999
    assert spike_up in window_steps
    assert spike_down not in window_steps

    # max_points below 4 means 4.
    tiny = history(shared_tracker, run, "loss", max_points=1)
    assert tiny.downsampled
    assert [p.step for p in tiny.points if p.step in (0, 9_999)] == [0, 9_999]
    assert {spike_up, spike_down} <= {p.step for p in tiny.points}
    assert len(tiny.points) <= 4
