"""QueryRunTable, AggregateRuns and ListRunKeys over a known set of runs, on SQLite and
PostgreSQL: exact column kinds and values, latest metrics, ordering with missing values,
limits, scopes (filter, experiments, lifecycle), aggregates computed by the database (NaN kept
out), grouping, key counts, and INVALID_ARGUMENT with an ErrorInfo for every bad request.

The tests that only read share one seeded database of each kind (`seeded`); tests that write
make their own experiments in the module's shared tracker, and the empty-database test has a
fresh database (`tracker`): a fresh PostgreSQL database per test would cost a second each."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from cairn.tracker.v1 import experiment_pb2, lifecycle_pb2, run_pb2, run_table_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import (
    DATABASE_KINDS,
    TrackerStub,
    error_info,
    expect_error,
    log_metrics,
    log_params,
    metric,
    new_experiment,
    new_run,
    shared_tracker,
    tracker_stack,
)

__all__ = ["shared_tracker"]  # a fixture: importing it is what makes pytest see it

HOUR_MS = 3_600_000
T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NAN = math.nan
NUMBER = run_table_pb2.COLUMN_KIND_NUMBER
TEXT = run_table_pb2.COLUMN_KIND_TEXT
COUNT = run_table_pb2.AGGREGATE_FUNCTION_COUNT
MIN = run_table_pb2.AGGREGATE_FUNCTION_MIN
MAX = run_table_pb2.AGGREGATE_FUNCTION_MAX
AVG = run_table_pb2.AGGREGATE_FUNCTION_AVG
STDDEV = run_table_pb2.AGGREGATE_FUNCTION_STDDEV
ACTIVE_ONLY = lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY
DELETED_ONLY = lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY
ALL = lifecycle_pb2.LIFECYCLE_FILTER_ALL


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def same(actual: Sequence[float], expected: Sequence[float], tolerance: float = 1e-9) -> bool:
    """Element-wise equality where NaN equals NaN and floats compare with a tolerance."""
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected, strict=True):
        if math.isnan(e):
            if not math.isnan(a):
                return False
        elif not math.isclose(a, e, rel_tol=tolerance, abs_tol=tolerance):
            return False
    return True


@dataclass
class Seeded:
    """Experiment A: r1..r4 (start T0+1h..T0+4h); experiment B: r5 and r6 (r6 deleted).

    | run | exp | status   | model | dataset | lr   | depth | opt  | seed | loss | acc | team |
    | r1  | A   | FINISHED | cnn   | ds1     | 0.1  | 3     | adam | 42   | 0.5* | 0.8 | red  |
    | r2  | A   | RUNNING  | rnn   |         | 0.01 | 5     | sgd  | 42   | 0.3  | NaN | blue |
    | r3  | A   | FAILED   | cnn   | ds1     | 1e-3 | deep  |      |      | 0.7  |     |      |
    | r4  | A   | QUEUED   |       |         |      |       |      |      |      |     |      |
    | r5  | B   | RUNNING  | cnn   |         | 0.5  |       |      |      | 0.1  |     | red  |
    | r6  | B   | deleted  |       |         | 9    |       |      |      | 0.0  |     |      |

    model is lineage.model_type. r1 ends at T0+2h, r3 at T0+5h.
    * r1's loss was 0.9 at step 0, then 0.5 at step 1: the table shows the latest, 0.5.
    """

    tracker: TrackerStub
    a: experiment_pb2.Experiment
    b: experiment_pb2.Experiment
    ids: dict[str, str]  # label -> run id
    labels: dict[str, str]  # run id -> label

    def table(self, *columns: str, scope: str = "A", **request: Any) -> run_table_pb2.RunTable:
        return self.tracker.QueryRunTable(
            pb.QueryRunTableRequest(
                experiment_ids=self.experiment_ids(scope), columns=columns, **request
            )
        )

    def rows(self, table: run_table_pb2.RunTable) -> list[str]:
        return [self.labels.get(run_id, run_id) for run_id in table.run_ids]

    def aggregate(
        self,
        aggregates: Sequence[tuple[int, str]],
        group_by: Sequence[str] = (),
        scope: str = "A",
        **request: Any,
    ) -> list[tuple[list[str], list[float]]]:
        response = self.tracker.AggregateRuns(
            pb.AggregateRunsRequest(
                experiment_ids=self.experiment_ids(scope),
                group_by=group_by,
                aggregates=[run_table_pb2.Aggregate(function=f, column=c) for f, c in aggregates],
                **request,
            )
        )
        return [(list(row.group), list(row.values)) for row in response.rows]

    def keys(self, scope: str = "A", **request: Any) -> pb.ListRunKeysResponse:
        return self.tracker.ListRunKeys(
            pb.ListRunKeysRequest(experiment_ids=self.experiment_ids(scope), **request)
        )

    def experiment_ids(self, scope: str) -> list[str]:
        return [{"A": self.a, "B": self.b}[e].experiment_id for e in scope]


def _run(
    tracker: TrackerStub,
    experiment: experiment_pb2.Experiment,
    hour: int,
    *,
    status: int = run_pb2.RUN_STATUS_RUNNING,
    tags: dict[str, str] | None = None,
    **lineage: str,
) -> run_pb2.Run:
    return new_run(
        tracker,
        experiment,
        run_name=f"run-{hour}",
        status=status,
        start_time=_timestamp(T0_MS + hour * HOUR_MS),
        tags=tags or {},
        **lineage,
    )


def _end(tracker: TrackerStub, run: run_pb2.Run, status: int, end_ms: int) -> None:
    tracker.UpdateRun(
        pb.UpdateRunRequest(
            run=run_pb2.Run(name=run.name, status=status, end_time=_timestamp(end_ms)),
            update_mask=field_mask_pb2.FieldMask(paths=["status", "end_time"]),
        )
    )


def _seed(tracker: TrackerStub) -> Seeded:
    a = new_experiment(tracker, "table-a")
    b = new_experiment(tracker, "table-b")
    r1 = _run(tracker, a, 1, tags={"team": "red"}, model_type="cnn", dataset_id="ds1")
    log_params(tracker, r1, lr="0.1", depth="3", opt="adam", seed="42")
    log_metrics(tracker, r1, [metric("loss", 0.9, step=0), metric("acc", 0.8, step=0)])
    log_metrics(tracker, r1, [metric("loss", 0.5, step=1)])
    _end(tracker, r1, run_pb2.RUN_STATUS_FINISHED, T0_MS + 2 * HOUR_MS)

    r2 = _run(tracker, a, 2, tags={"team": "blue"}, model_type="rnn")
    log_params(tracker, r2, lr="0.01", depth="5", opt="sgd", seed="42")
    log_metrics(tracker, r2, [metric("loss", 0.3), metric("acc", NAN)])

    r3 = _run(tracker, a, 3, model_type="cnn", dataset_id="ds1")
    log_params(tracker, r3, lr="1e-3", depth="deep")
    log_metrics(tracker, r3, [metric("loss", 0.7)])
    _end(tracker, r3, run_pb2.RUN_STATUS_FAILED, T0_MS + 5 * HOUR_MS)

    r4 = _run(tracker, a, 4, status=run_pb2.RUN_STATUS_QUEUED)

    r5 = _run(tracker, b, 5, tags={"team": "red"}, model_type="cnn")
    log_params(tracker, r5, lr="0.5")
    log_metrics(tracker, r5, [metric("loss", 0.1)])

    r6 = _run(tracker, b, 6)
    log_params(tracker, r6, lr="9")
    log_metrics(tracker, r6, [metric("loss", 0.0)])
    tracker.DeleteRun(pb.DeleteRunRequest(name=r6.name))

    ids = {f"r{i}": run.run_id for i, run in enumerate([r1, r2, r3, r4, r5, r6], start=1)}
    return Seeded(tracker, a, b, ids, {run_id: label for label, run_id in ids.items()})


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """The runs of Seeded, alone in a fresh database of each kind, for the tests that only
    read (they may scope to no experiment at all and see exactly these runs)."""
    kind = str(request.param)
    postgres = request.getfixturevalue("postgres") if kind == "postgresql" else None
    with tracker_stack(kind, tmp_path_factory.mktemp(f"table-{kind}"), postgres) as (_, stub, _):
        yield _seed(stub)


def column(table: run_table_pb2.RunTable, name: str | int) -> run_table_pb2.RunTableColumn:
    """The column of this name (it must be the only one) or at this index."""
    if isinstance(name, int):
        return table.columns[name]
    found = [c for c in table.columns if c.name == name]
    assert len(found) == 1, f"{name} not once in {[c.name for c in table.columns]}"
    return found[0]


def assert_numbers(
    table: run_table_pb2.RunTable, name: str | int, expected: Sequence[float | None]
) -> None:
    """A NUMBER column with these values (None: absent, NaN and present=false)."""
    found = column(table, name)
    assert found.kind == NUMBER, f"{name} is {run_table_pb2.ColumnKind.Name(found.kind)}"
    assert list(found.texts) == []
    assert list(found.present) == [v is not None for v in expected], name
    wanted = [NAN if v is None else v for v in expected]
    assert same(found.numbers, wanted), f"{name}: {list(found.numbers)} != {wanted}"


def assert_texts(
    table: run_table_pb2.RunTable, name: str | int, expected: Sequence[str | None]
) -> None:
    """A TEXT column with these values (None: absent, "" and present=false)."""
    found = column(table, name)
    assert found.kind == TEXT, f"{name} is {run_table_pb2.ColumnKind.Name(found.kind)}"
    assert list(found.numbers) == []
    assert list(found.texts) == ["" if v is None else v for v in expected], name
    assert list(found.present) == [v is not None for v in expected], name


def invalid(call: Any, request: Any, field: str) -> Any:
    """The call fails with INVALID_ARGUMENT and an ErrorInfo naming `field`."""
    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, call, request)
    info = error_info(error)
    assert info.metadata["field"] == field, (dict(info.metadata), error.details())
    return info


def _check(
    rows: list[tuple[list[str], list[float]]], expected: list[tuple[list[str], list[float]]]
) -> None:
    """Exactly these groups, in this order, with these values (NaN equal to NaN)."""
    assert [g for g, _ in rows] == [g for g, _ in expected], rows
    for (group, values), (_, wanted) in zip(rows, expected, strict=True):
        assert same(values, wanted), (group, values, wanted)


# ============================================================================ QueryRunTable


def test_table_has_one_typed_column_per_field_and_one_row_per_run(seeded: Seeded) -> None:
    table = seeded.table(
        "params.lr",
        "params.depth",
        "params.opt",
        "metrics.loss",
        "metrics.acc",
        "tags.team",
        "status",
        "model_type",
        "dataset_id",
        "start_time",
        "end_time",
        "version",
        "run_name",
        "experiment_id",
    )
    # Default order: start_time ascending.
    assert seeded.rows(table) == ["r1", "r2", "r3", "r4"]
    assert list(table.experiment_ids) == [seeded.a.experiment_id] * 4
    assert not table.truncated
    assert [c.name for c in table.columns] == [
        "params.lr",
        "params.depth",
        "params.opt",
        "metrics.loss",
        "metrics.acc",
        "tags.team",
        "status",
        "model_type",
        "dataset_id",
        "start_time",
        "end_time",
        "version",
        "run_name",
        "experiment_id",
    ]
    # Every present value parses as a number: a NUMBER column ("1e-3" is 0.001).
    assert_numbers(table, "params.lr", [0.1, 0.01, 0.001, None])
    # "deep" does not: TEXT with the original texts.
    assert_texts(table, "params.depth", ["3", "5", "deep", None])
    assert_texts(table, "params.opt", ["adam", "sgd", None, None])
    # The latest value (r1 logged 0.9 at step 0, then 0.5 at step 1).
    assert_numbers(table, "metrics.loss", [0.5, 0.3, 0.7, None])
    acc = column(table, "metrics.acc")
    assert acc.kind == NUMBER
    assert same(acc.numbers, [0.8, NAN, NAN, NAN])
    # r2 logged NaN: a value, told from r3's and r4's missing ones by `present`.
    assert list(acc.present) == [True, True, False, False]
    assert_texts(table, "tags.team", ["red", "blue", None, None])
    assert_texts(table, "status", ["FINISHED", "RUNNING", "FAILED", "QUEUED"])
    # Lineage left empty is a missing value (as `model_type IS NULL` says in filters).
    assert_texts(table, "model_type", ["cnn", "rnn", "cnn", None])
    assert_texts(table, "dataset_id", ["ds1", None, "ds1", None])
    assert_numbers(table, "start_time", [T0_MS + h * HOUR_MS for h in (1, 2, 3, 4)])
    assert_numbers(table, "end_time", [T0_MS + 2 * HOUR_MS, None, T0_MS + 5 * HOUR_MS, None])
    # Versions count per (dataset_id, model_type); 0 without lineage.
    assert_numbers(table, "version", [1, 1, 2, 0])
    assert_texts(table, "run_name", ["run-1", "run-2", "run-3", "run-4"])
    assert_texts(table, "experiment_id", [seeded.a.experiment_id] * 4)


def test_column_names_are_canonical_and_keys_may_need_quoting(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    run = new_run(shared_tracker, experiment, run_name="odd")
    log_params(shared_tracker, run, **{"learning rate": "0.2", "learning-rate": "x", "and": "y"})
    log_metrics(shared_tracker, run, [metric("val/loss", 0.25)])
    table = shared_tracker.QueryRunTable(
        pb.QueryRunTableRequest(
            experiment_ids=[experiment.experiment_id],
            columns=[
                "params.`learning rate`",
                'param."learning rate"',
                "params.learning-rate",
                "params.and",
                "attributes.status",
                "attr.`run_name`",
                "METRICS.val/loss",
                "user_id",
            ],
        )
    )
    # Each name parses back to its field.
    assert [c.name for c in table.columns] == [
        "params.`learning rate`",
        "params.`learning rate`",
        "params.learning-rate",
        "params.and",
        "status",
        "run_name",
        "metrics.val/loss",
        "user_id",
    ]
    assert [list(c.numbers) for c in table.columns[:2]] == [[0.2], [0.2]]
    assert [list(c.texts) for c in table.columns[2:6]] == [["x"], ["y"], ["RUNNING"], ["odd"]]
    assert list(table.columns[6].numbers) == [0.25]
    assert list(table.columns[7].present) == [False]


def test_param_kind_is_decided_by_the_rows_returned(seeded: Seeded) -> None:
    """depth is TEXT over r1..r3 ("deep"), NUMBER when the filter leaves numeric values only."""
    table = seeded.table("params.depth", filter="params.depth != 'deep'")
    assert seeded.rows(table) == ["r1", "r2"]
    assert_numbers(table, "params.depth", [3, 5])
    # A column no returned run has is TEXT (nothing parses), every slot absent.
    table = seeded.table("params.depth", "params.nothing", filter="run_name = 'run-4'")
    assert_texts(table, "params.depth", [None])
    assert_texts(table, "params.nothing", [None])


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("", ["r1", "r2", "r3", "r4"]),
        ("start_time DESC", ["r4", "r3", "r2", "r1"]),
        # Missing values last in both directions.
        ("metrics.loss", ["r2", "r1", "r3", "r4"]),
        ("metrics.loss DESC", ["r3", "r1", "r2", "r4"]),
        # NaN sorts like a missing value (last); then run_id breaks the tie.
        ("metrics.acc DESC", ["r1", "r2|r3|r4"]),
        # Params sort by number when they are numbers.
        ("params.lr", ["r3", "r2", "r1", "r4"]),
        ("params.lr DESC", ["r1", "r2", "r3", "r4"]),
        ("params.depth DESC", ["r2", "r1", "r3", "r4"]),
        ("tags.team, start_time DESC", ["r2", "r1", "r4", "r3"]),
        ("model_type DESC, start_time", ["r2", "r1", "r3", "r4"]),
    ],
)
def test_order_by(seeded: Seeded, order_by: str, expected: list[str]) -> None:
    table = seeded.table("metrics.loss", order_by=order_by)
    rows = seeded.rows(table)
    if "|" in expected[-1]:
        # Ties broken by run_id: the tied group comes last, ordered by id.
        tied = expected[-1].split("|")
        expected = [*expected[:-1], *sorted(tied, key=lambda label: seeded.ids[label])]
    assert rows == expected
    loss = {"r1": 0.5, "r2": 0.3, "r3": 0.7, "r4": NAN}
    assert same(column(table, "metrics.loss").numbers, [loss[r] for r in rows])


def test_limit_truncates_in_order(seeded: Seeded) -> None:
    table = seeded.table("metrics.loss", order_by="metrics.loss DESC", limit=2)
    assert seeded.rows(table) == ["r3", "r1"]
    assert table.truncated
    assert list(column(table, "metrics.loss").numbers) == [0.7, 0.5]
    assert len(table.experiment_ids) == 2
    exact = seeded.table("metrics.loss", limit=4)
    assert seeded.rows(exact) == ["r1", "r2", "r3", "r4"]
    assert not exact.truncated
    # 0 means the default (10,000); beyond 100,000 is coerced, not refused.
    assert not seeded.table("status", limit=0).truncated
    huge = seeded.table("status", limit=2_000_000_000)
    assert seeded.rows(huge) == ["r1", "r2", "r3", "r4"] and not huge.truncated


def test_scope_by_experiments_filter_and_lifecycle(seeded: Seeded) -> None:
    # No experiment ids: every experiment; deleted runs stay out by default.
    assert seeded.rows(seeded.table("status", scope="")) == ["r1", "r2", "r3", "r4", "r5"]
    assert seeded.rows(seeded.table("status", scope="B")) == ["r5"]
    assert seeded.rows(seeded.table("status", scope="AB")) == ["r1", "r2", "r3", "r4", "r5"]
    assert seeded.rows(seeded.table("status", scope="", lifecycle_filter=ACTIVE_ONLY)) == [
        "r1",
        "r2",
        "r3",
        "r4",
        "r5",
    ]
    deleted = seeded.table("params.lr", "metrics.loss", scope="", lifecycle_filter=DELETED_ONLY)
    assert seeded.rows(deleted) == ["r6"]
    assert list(deleted.experiment_ids) == [seeded.b.experiment_id]
    assert_numbers(deleted, "params.lr", [9])
    assert_numbers(deleted, "metrics.loss", [0.0])
    every = seeded.table("status", scope="", lifecycle_filter=ALL)
    assert seeded.rows(every) == ["r1", "r2", "r3", "r4", "r5", "r6"]
    # Numbers compare with a param's numeric value.
    assert seeded.rows(seeded.table("status", scope="", filter="params.lr > 0.05")) == ["r1", "r5"]
    assert seeded.rows(
        seeded.table("status", scope="", filter="metrics.loss < 0.6 AND tags.team = 'red'")
    ) == ["r1", "r5"]
    assert seeded.rows(seeded.table("status", filter="model_type IS NULL")) == ["r4"]
    mixed = seeded.table("model_type", scope="AB", filter="model_type = 'cnn'")
    assert seeded.rows(mixed) == ["r1", "r3", "r5"]
    assert list(mixed.experiment_ids) == [seeded.a.experiment_id] * 2 + [seeded.b.experiment_id]


def test_empty_scope_gives_empty_columns(seeded: Seeded) -> None:
    for table in (
        seeded.table("metrics.loss", "params.lr", "status", filter="metrics.loss > 100"),
        seeded.table(
            "metrics.loss",
            "params.lr",
            "status",
            scope="B",
            lifecycle_filter=0,
            filter="run_name = 'nope'",
        ),
        seeded.tracker.QueryRunTable(
            pb.QueryRunTableRequest(experiment_ids=["0" * 32], columns=["metrics.loss"])
        ),
    ):
        assert list(table.run_ids) == []
        assert list(table.experiment_ids) == []
        assert not table.truncated
        for found in table.columns:
            assert list(found.numbers) == list(found.texts) == list(found.present) == []
    table = seeded.table("metrics.loss", "params.lr", "status", filter="metrics.loss > 100")
    assert [c.kind for c in table.columns] == [NUMBER, TEXT, TEXT]


def test_at_most_100_columns_and_the_same_field_twice(seeded: Seeded) -> None:
    """100 columns, most of them key-value fields (more than SQLite joins in one query), read
    with as many sort keys as order_by takes."""
    columns = [f"params.p{i}" for i in range(90)]
    columns += ["params.lr", "params.depth", "tags.team", "metrics.acc", "metrics.loss"]
    columns += ["status", "end_time", "model_type", "metrics.loss", "params.lr"]
    order_by = ", ".join(
        ["metrics.loss DESC", "params.lr", "tags.team", "metrics.acc"]
        + [f"params.s{i}" for i in range(6)]
    )
    table = seeded.table(*columns, order_by=order_by)
    assert len(table.columns) == 100
    assert [c.name for c in table.columns] == columns
    assert seeded.rows(table) == ["r3", "r1", "r2", "r4"]
    for index in range(90):
        assert_texts(table, index, [None] * 4)
    assert_numbers(table, 90, [0.001, 0.1, 0.01, None])
    assert table.columns[90] == table.columns[99]
    assert_texts(table, "params.depth", ["deep", "3", "5", None])
    assert_texts(table, "tags.team", [None, "red", "blue", None])
    acc = table.columns[93]
    assert same(acc.numbers, [NAN, 0.8, NAN, NAN])
    assert list(acc.present) == [False, True, True, False]
    assert_numbers(table, 94, [0.7, 0.5, 0.3, None])
    assert table.columns[94] == table.columns[98]
    assert_texts(table, "status", ["FAILED", "FINISHED", "RUNNING", "QUEUED"])
    assert_numbers(table, "end_time", [T0_MS + 5 * HOUR_MS, T0_MS + 2 * HOUR_MS, None, None])
    assert_texts(table, "model_type", ["cnn", "cnn", "rnn", None])
    twice = seeded.table("metrics.loss", "metrics.loss", "status", "status")
    assert [c.name for c in twice.columns] == ["metrics.loss", "metrics.loss", "status", "status"]
    assert twice.columns[0] == twice.columns[1]
    assert twice.columns[2] == twice.columns[3]


def test_300_runs_limit_100(shared_tracker: TrackerStub) -> None:
    """300 runs created out of start_time order; the first 100 by start_time DESC come back,
    in order, with truncated set."""
    experiment = new_experiment(shared_tracker)

    def create(i: int) -> tuple[str, int]:
        rank = (i * 37) % 300  # a permutation of 0..299
        run = new_run(
            shared_tracker,
            experiment,
            run_name=f"big-{i}",
            start_time=_timestamp(T0_MS + rank * 1000),
            tags={"rank": f"{rank:03d}"},
        )
        return run.run_id, rank

    with ThreadPoolExecutor(8) as pool:
        ranks = dict(pool.map(create, range(300)))
    by_rank = sorted(ranks, key=ranks.__getitem__)
    table = shared_tracker.QueryRunTable(
        pb.QueryRunTableRequest(
            experiment_ids=[experiment.experiment_id],
            columns=["start_time", "tags.rank"],
            order_by="start_time DESC",
            limit=100,
        )
    )
    assert table.truncated
    assert len(table.run_ids) == 100
    assert list(table.run_ids) == by_rank[::-1][:100]
    assert list(column(table, "start_time").numbers) == [
        float(T0_MS + rank * 1000) for rank in range(299, 199, -1)
    ]
    assert list(column(table, "tags.rank").texts) == [f"{r:03d}" for r in range(299, 199, -1)]
    # Ordered by a tag, limited again.
    by_tag = shared_tracker.QueryRunTable(
        pb.QueryRunTableRequest(
            experiment_ids=[experiment.experiment_id],
            columns=["tags.rank"],
            order_by="tags.rank",
            limit=100,
        )
    )
    assert by_tag.truncated and list(by_tag.run_ids) == by_rank[:100]
    # Exactly the limit: not truncated; the default order is start_time ascending.
    everything = shared_tracker.QueryRunTable(
        pb.QueryRunTableRequest(
            experiment_ids=[experiment.experiment_id], columns=["start_time"], limit=300
        )
    )
    assert not everything.truncated
    assert list(everything.run_ids) == by_rank
    # Above the limit: 299 rows, truncated.
    almost = shared_tracker.QueryRunTable(
        pb.QueryRunTableRequest(
            experiment_ids=[experiment.experiment_id], columns=["start_time"], limit=299
        )
    )
    assert almost.truncated and list(almost.run_ids) == by_rank[:299]


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ([], "columns"),
        ([f"params.p{i}" for i in range(101)], "columns"),
        (["metrics."], "columns"),
        (["a b"], "columns"),
        (["status DESC"], "columns"),
        (["status ASC"], "columns"),
        (["status\tasc"], "columns"),
        (["status, run_name"], "columns"),
        ([""], "columns"),
        (["   "], "columns"),
        (["metrics.loss", "params."], "columns"),
        (["bogus"], "columns"),
        (["attributes.nope"], "columns"),
        (["params.`x"], "columns"),
    ],
)
def test_query_run_table_refuses_bad_columns(
    shared_tracker: TrackerStub, columns: list[str], field: str
) -> None:
    invalid(shared_tracker.QueryRunTable, pb.QueryRunTableRequest(columns=columns), field)


def test_query_run_table_refuses_bad_requests(shared_tracker: TrackerStub) -> None:
    info = invalid(
        shared_tracker.QueryRunTable, pb.QueryRunTableRequest(columns=["bogus"]), "columns"
    )
    assert info.reason == "UNKNOWN_FIELD"
    assert info.metadata["key"] == "bogus"
    info = invalid(
        shared_tracker.QueryRunTable, pb.QueryRunTableRequest(columns=["a b"]), "columns"
    )
    assert info.reason == "INVALID_FIELD"
    info = invalid(
        shared_tracker.QueryRunTable,
        pb.QueryRunTableRequest(columns=["status"], filter="params.lr >"),
        "filter",
    )
    assert info.reason == "INVALID_FILTER"
    invalid(
        shared_tracker.QueryRunTable,
        pb.QueryRunTableRequest(columns=["status"], filter="nope = 1"),
        "filter",
    )
    invalid(
        shared_tracker.QueryRunTable,
        pb.QueryRunTableRequest(columns=["status"], order_by="metrics.loss sideways"),
        "order_by",
    )
    invalid(
        shared_tracker.QueryRunTable,
        pb.QueryRunTableRequest(columns=["status"], order_by="bogus"),
        "order_by",
    )
    invalid(
        shared_tracker.QueryRunTable, pb.QueryRunTableRequest(columns=["status"], limit=-1), "limit"
    )
    invalid(
        shared_tracker.QueryRunTable,
        pb.QueryRunTableRequest(columns=["status"], lifecycle_filter=99),  # type: ignore[arg-type]
        "lifecycle_filter",
    )
    invalid(
        shared_tracker.QueryRunTable,
        pb.QueryRunTableRequest(columns=["status"], experiment_ids=[""]),
        "experiment_ids",
    )


# ============================================================================ AggregateRuns


def test_aggregates_over_every_matching_run(seeded: Seeded) -> None:
    rows = seeded.aggregate(
        [
            (COUNT, ""),
            (COUNT, "metrics.loss"),
            (MIN, "metrics.loss"),
            (MAX, "metrics.loss"),
            (AVG, "metrics.loss"),
            (STDDEV, "metrics.loss"),
            (COUNT, "metrics.acc"),
            (AVG, "metrics.acc"),
            (STDDEV, "metrics.acc"),
            (MIN, "metrics.missing"),
            (COUNT, "metrics.missing"),
        ]
    )
    assert len(rows) == 1
    group, values = rows[0]
    assert group == []
    # Latest losses 0.5, 0.3, 0.7 (r4 has none); acc: 0.8 and r2's NaN (kept out).
    assert same(values, [4, 3, 0.3, 0.7, 0.5, 0.2, 1, 0.8, NAN, NAN, 0])


def test_count_alone(seeded: Seeded) -> None:
    _check(seeded.aggregate([(COUNT, "")]), [([], [4])])
    _check(seeded.aggregate([(COUNT, ""), (COUNT, "")], scope=""), [([], [5, 5])])
    _check(
        seeded.aggregate([(COUNT, "")], ["status"], scope="B", lifecycle_filter=ALL),
        [(["RUNNING"], [2])],
    )
    _check(seeded.aggregate([(COUNT, "")], filter="status = 'FINISHED'"), [([], [1])])


def test_nan_stays_out_of_min_max_avg(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    for value in (1.0, 2.0, NAN):
        run = new_run(shared_tracker, experiment)
        log_metrics(shared_tracker, run, [metric("m", value)])
    # A run whose latest value is NaN over an earlier number: the latest (NaN) counts.
    run = new_run(shared_tracker, experiment)
    log_metrics(shared_tracker, run, [metric("m", 100.0, step=0), metric("m", NAN, step=1)])
    response = shared_tracker.AggregateRuns(
        pb.AggregateRunsRequest(
            experiment_ids=[experiment.experiment_id],
            aggregates=[
                run_table_pb2.Aggregate(function=f, column="metrics.m")
                for f in (AVG, MIN, MAX, COUNT, STDDEV)
            ]
            + [run_table_pb2.Aggregate(function=COUNT)],
        )
    )
    assert len(response.rows) == 1
    assert same(response.rows[0].values, [1.5, 1.0, 2.0, 2, math.sqrt(0.5), 4])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([2, 4, 4, 4, 5, 5, 7, 9], math.sqrt(32 / 7)),
        ([1.0, 2.0], math.sqrt(0.5)),
        ([5.0, 5.0, 5.0], 0.0),
        # Large values with a small spread: no cancellation from sums of squares.
        ([1e9 + 1, 1e9 + 2, 1e9 + 3], 1.0),
        ([1e12 + 0.5, 1e12 + 1.5], math.sqrt(0.5)),
        ([-3.0, 3.0], math.sqrt(18)),
        ([7.0], NAN),
        ([], NAN),
    ],
)
def test_stddev_is_the_sample_standard_deviation(
    shared_tracker: TrackerStub, values: list[float], expected: float
) -> None:
    experiment = new_experiment(shared_tracker)
    for value in values:
        run = new_run(shared_tracker, experiment)
        log_metrics(shared_tracker, run, [metric("m", value)])
    new_run(shared_tracker, experiment)  # no value: not counted
    response = shared_tracker.AggregateRuns(
        pb.AggregateRunsRequest(
            experiment_ids=[experiment.experiment_id],
            aggregates=[
                run_table_pb2.Aggregate(function=STDDEV, column="metrics.m"),
                run_table_pb2.Aggregate(function=COUNT, column="metrics.m"),
                run_table_pb2.Aggregate(function=AVG, column="metrics.m"),
            ],
        )
    )
    [row] = response.rows
    mean = sum(values) / len(values) if values else NAN
    assert same(row.values, [expected, len(values), mean], tolerance=1e-12)


def test_infinities_and_huge_values(
    shared_tracker: TrackerStub, request: pytest.FixtureRequest
) -> None:
    """Infinite values count in MIN, MAX and AVG, and leave no finite spread (STDDEV NaN).
    Sums that overflow a double are no error: PostgreSQL sums exactly, SQLite overflows to
    infinity."""
    postgres = request.node.callspec.params["shared_tracker"] == "postgresql"
    functions = (COUNT, MIN, MAX, AVG, STDDEV)
    cases: list[tuple[list[float], list[float]]] = [
        ([math.inf, 1.0], [2, 1.0, math.inf, math.inf, NAN]),
        ([math.inf, -math.inf, 3.0], [3, -math.inf, math.inf, NAN, NAN]),
        ([-math.inf, 2.0, 4.0], [3, -math.inf, 4.0, -math.inf, NAN]),
        (
            [1e308, 1e308],
            [2, 1e308, 1e308, 1e308, 0.0] if postgres else [2, 1e308, 1e308, math.inf, math.inf],
        ),
        (
            [1e200, -1e200, 6.0],
            [3, -1e200, 1e200, 2.0, 1e200] if postgres else [3, -1e200, 1e200, 2.0, math.inf],
        ),
    ]
    for values, expected in cases:
        experiment = new_experiment(shared_tracker)
        for value in values:
            log_metrics(shared_tracker, new_run(shared_tracker, experiment), [metric("m", value)])
        response = shared_tracker.AggregateRuns(
            pb.AggregateRunsRequest(
                experiment_ids=[experiment.experiment_id],
                aggregates=[
                    run_table_pb2.Aggregate(function=f, column="metrics.m") for f in functions
                ],
            )
        )
        [row] = response.rows
        assert same(row.values, expected, tolerance=1e-12), (values, list(row.values))
        table = shared_tracker.QueryRunTable(
            pb.QueryRunTableRequest(
                experiment_ids=[experiment.experiment_id],
                columns=["metrics.m"],
                order_by="metrics.m DESC",
            )
        )
        assert list(table.columns[0].numbers) == sorted(values, reverse=True)


def test_group_by_attribute(seeded: Seeded) -> None:
    aggregates = [(COUNT, ""), (AVG, "metrics.loss"), (MAX, "metrics.loss")]
    # Groups ordered by their values, "" (no model_type) first.
    _check(
        seeded.aggregate(aggregates, ["model_type"]),
        [([""], [1, NAN, NAN]), (["cnn"], [2, 0.6, 0.7]), (["rnn"], [1, 0.3, 0.3])],
    )
    _check(
        seeded.aggregate([(COUNT, "")], ["status"]),
        [(["FAILED"], [1]), (["FINISHED"], [1]), (["QUEUED"], [1]), (["RUNNING"], [1])],
    )
    _check(
        seeded.aggregate([(COUNT, "")], ["status"], scope="", lifecycle_filter=ALL),
        [(["FAILED"], [1]), (["FINISHED"], [1]), (["QUEUED"], [1]), (["RUNNING"], [3])],
    )
    # Numeric attributes group as text of their numbers; runs without end_time under "".
    _check(
        seeded.aggregate([(COUNT, "")], ["end_time"]),
        [([""], [2]), ([str(T0_MS + 2 * HOUR_MS)], [1]), ([str(T0_MS + 5 * HOUR_MS)], [1])],
    )
    _check(
        seeded.aggregate([(COUNT, "")], ["version"]),
        [(["0"], [1]), (["1"], [2]), (["2"], [1])],
    )


def test_group_by_params_and_tags(seeded: Seeded) -> None:
    _check(
        seeded.aggregate([(COUNT, ""), (MIN, "metrics.loss")], ["params.opt"]),
        [([""], [2, 0.7]), (["adam"], [1, 0.5]), (["sgd"], [1, 0.3])],
    )
    _check(
        seeded.aggregate([(COUNT, ""), (AVG, "metrics.loss")], ["tags.team"], scope="AB"),
        [([""], [2, 0.7]), (["blue"], [1, 0.3]), (["red"], [2, 0.3])],
    )
    # Params group by their text: "0.01" < "0.1" < "0.5" < "1e-3".
    _check(
        seeded.aggregate([(COUNT, "")], ["params.lr"], scope="AB"),
        [([""], [1]), (["0.01"], [1]), (["0.1"], [1]), (["0.5"], [1]), (["1e-3"], [1])],
    )


def test_group_by_several_fields(seeded: Seeded) -> None:
    rows = seeded.aggregate(
        [(COUNT, ""), (AVG, "metrics.loss"), (STDDEV, "metrics.loss"), (COUNT, "metrics.acc")],
        ["model_type", "tags.team", "params.seed"],
        scope="AB",
    )
    _check(
        rows,
        [
            (["", "", ""], [1, NAN, NAN, 0]),
            (["cnn", "", ""], [1, 0.7, NAN, 0]),
            (["cnn", "red", ""], [1, 0.1, NAN, 0]),
            (["cnn", "red", "42"], [1, 0.5, NAN, 1]),
            (["rnn", "blue", "42"], [1, 0.3, NAN, 0]),
        ],
    )
    # A STDDEV per group, around the group's own mean: cnn has losses 0.5, 0.7 and 0.1
    # (squared deviations sum to 0.56/3); rnn's one value and "" (r4, none) give NaN.
    _check(
        seeded.aggregate(
            [(STDDEV, "metrics.loss"), (AVG, "metrics.loss")], ["model_type"], scope="AB"
        ),
        [([""], [NAN, NAN]), (["cnn"], [math.sqrt(0.28 / 3), 1.3 / 3]), (["rnn"], [NAN, 0.3])],
    )
    # Five fields are allowed.
    five = seeded.aggregate(
        [(COUNT, "")],
        ["model_type", "status", "params.opt", "tags.team", "dataset_id"],
    )
    assert sum(values[0] for _, values in five) == 4


def test_aggregate_scope(seeded: Seeded) -> None:
    _check(seeded.aggregate([(COUNT, ""), (MAX, "metrics.loss")], scope=""), [([], [5, 0.7])])
    _check(
        seeded.aggregate([(COUNT, ""), (MIN, "metrics.loss")], scope="", lifecycle_filter=ALL),
        [([], [6, 0.0])],
    )
    _check(
        seeded.aggregate(
            [(COUNT, ""), (MIN, "metrics.loss")], scope="B", lifecycle_filter=DELETED_ONLY
        ),
        [([], [1, 0.0])],
    )
    _check(
        seeded.aggregate([(COUNT, ""), (AVG, "metrics.loss")], scope="", filter="params.lr < 0.2"),
        [([], [3, 0.5])],
    )


def test_aggregate_empty_scope(seeded: Seeded) -> None:
    # Grouped: no groups at all.
    assert seeded.aggregate([(COUNT, "")], ["model_type"], filter="run_name = 'nope'") == []
    assert (
        seeded.aggregate(
            [(COUNT, "")],
            ["params.opt"],
            scope="",
            lifecycle_filter=DELETED_ONLY,
            filter="params.opt = 'adam'",
        )
        == []
    )
    # Ungrouped: the one group of every matching run, empty (COUNT 0, the rest NaN).
    _check(
        seeded.aggregate(
            [(COUNT, ""), (COUNT, "metrics.loss"), (MIN, "metrics.loss"), (STDDEV, "metrics.loss")],
            filter="run_name = 'nope'",
        ),
        [([], [0, 0, NAN, NAN])],
    )


def _aggregate_request(
    aggregates: Sequence[tuple[int, str]] = ((COUNT, ""),), **request: Any
) -> pb.AggregateRunsRequest:
    return pb.AggregateRunsRequest(
        aggregates=[run_table_pb2.Aggregate(function=f, column=c) for f, c in aggregates],
        **request,
    )


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"aggregates": []}, "aggregates"),
        ({"aggregates": [(COUNT, "")] * 21}, "aggregates"),
        ({"aggregates": [(99, "metrics.loss")]}, "aggregates.function"),
        ({"aggregates": [(0, "metrics.loss")]}, "aggregates.function"),
        ({"aggregates": [(MIN, "")]}, "aggregates.column"),
        ({"aggregates": [(AVG, "params.lr")]}, "aggregates.column"),
        ({"aggregates": [(MAX, "tags.team")]}, "aggregates.column"),
        ({"aggregates": [(COUNT, "status")]}, "aggregates.column"),
        ({"aggregates": [(COUNT, "metrics.")]}, "aggregates.column"),
        ({"aggregates": [(COUNT, "metrics.loss DESC")]}, "aggregates.column"),
        ({"group_by": ["metrics.loss"]}, "group_by"),
        ({"group_by": ["a", "b", "c", "d", "e", "f"]}, "group_by"),
        ({"group_by": ["bogus"]}, "group_by"),
        ({"group_by": ["model_type DESC"]}, "group_by"),
        ({"group_by": ["params.x y"]}, "group_by"),
        ({"group_by": [""]}, "group_by"),
        ({"filter": "status ="}, "filter"),
        ({"filter": "bogus = 1"}, "filter"),
        ({"lifecycle_filter": 42}, "lifecycle_filter"),
        ({"experiment_ids": [""]}, "experiment_ids"),
    ],
)
def test_aggregate_runs_refuses_bad_requests(
    shared_tracker: TrackerStub, request_fields: dict[str, Any], field: str
) -> None:
    fields = dict(request_fields)
    aggregates = fields.pop("aggregates", ((COUNT, ""),))
    invalid(shared_tracker.AggregateRuns, _aggregate_request(aggregates, **fields), field)


def test_aggregate_limits_are_inclusive(seeded: Seeded) -> None:
    rows = seeded.aggregate([(COUNT, "")] * 10 + [(MAX, "metrics.loss")] * 10)
    assert len(rows) == 1 and same(rows[0][1], [4] * 10 + [0.7] * 10)
    info = invalid(
        seeded.tracker.AggregateRuns,
        _aggregate_request([(99, "metrics.loss")]),
        "aggregates.function",
    )
    assert info.reason == "INVALID_ARGUMENT"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        seeded.tracker.AggregateRuns,
        _aggregate_request([(99, "metrics.loss")]),
    )
    assert "99" in error.details() and "STDDEV" in error.details()


# ============================================================================ ListRunKeys


def _counts(keys: Sequence[run_table_pb2.RunKeyCount]) -> list[tuple[str, int, int]]:
    return [(k.key, k.run_count, k.distinct_value_count) for k in keys]


def test_list_run_keys_counts_runs_and_distinct_values(seeded: Seeded) -> None:
    keys = seeded.keys()
    assert keys.run_count == 4
    assert _counts(keys.param_keys) == [
        ("depth", 3, 3),
        ("lr", 3, 3),
        ("opt", 2, 2),
        ("seed", 2, 1),  # both runs agree on 42
    ]
    # r2's acc is NaN: the run has the key, but NaN is no distinct value.
    assert _counts(keys.metric_keys) == [("acc", 2, 1), ("loss", 3, 3)]
    assert _counts(keys.tag_keys) == [("team", 2, 2)]


def test_list_run_keys_scope(seeded: Seeded) -> None:
    everything = seeded.keys(scope="")
    assert everything.run_count == 5
    assert _counts(everything.param_keys) == [
        ("depth", 3, 3),
        ("lr", 4, 4),
        ("opt", 2, 2),
        ("seed", 2, 1),
    ]
    assert _counts(everything.metric_keys) == [("acc", 2, 1), ("loss", 4, 4)]
    assert _counts(everything.tag_keys) == [("team", 3, 2)]
    with_deleted = seeded.keys(scope="", lifecycle_filter=ALL)
    assert with_deleted.run_count == 6
    assert ("lr", 5, 5) in _counts(with_deleted.param_keys)
    deleted = seeded.keys(scope="", lifecycle_filter=DELETED_ONLY)
    assert deleted.run_count == 1
    assert _counts(deleted.param_keys) == [("lr", 1, 1)]
    assert _counts(deleted.metric_keys) == [("loss", 1, 1)]
    assert list(deleted.tag_keys) == []
    filtered = seeded.keys(scope="AB", filter="tags.team = 'red'")
    assert filtered.run_count == 2
    assert _counts(filtered.param_keys) == [
        ("depth", 1, 1),
        ("lr", 2, 2),
        ("opt", 1, 1),
        ("seed", 1, 1),
    ]
    assert _counts(filtered.tag_keys) == [("team", 2, 1)]


def test_list_run_keys_empty_scope(seeded: Seeded) -> None:
    for keys in (
        seeded.keys(filter="run_name = 'nope'"),
        seeded.keys(scope="B", lifecycle_filter=DELETED_ONLY, filter="params.lr < 1"),
        seeded.tracker.ListRunKeys(pb.ListRunKeysRequest(experiment_ids=["f" * 32])),
    ):
        assert keys.run_count == 0
        assert list(keys.param_keys) == list(keys.metric_keys) == list(keys.tag_keys) == []


def test_list_run_keys_on_an_empty_database(tracker: TrackerStub) -> None:
    keys = tracker.ListRunKeys(pb.ListRunKeysRequest())
    assert keys.run_count == 0 and not keys.param_keys and not keys.metric_keys
    table = tracker.QueryRunTable(pb.QueryRunTableRequest(columns=["status", "metrics.x"]))
    assert not table.run_ids and not table.truncated
    response = tracker.AggregateRuns(_aggregate_request(group_by=["status"]))
    assert list(response.rows) == []


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"filter": "params.lr >"}, "filter"),
        ({"filter": "bogus = 'x'"}, "filter"),
        ({"lifecycle_filter": 7}, "lifecycle_filter"),
        ({"experiment_ids": [""]}, "experiment_ids"),
    ],
)
def test_list_run_keys_refuses_bad_requests(
    shared_tracker: TrackerStub, request_fields: dict[str, Any], field: str
) -> None:
    invalid(shared_tracker.ListRunKeys, pb.ListRunKeysRequest(**request_fields), field)


def test_a_filter_on_the_sort_key_keeps_the_table_order(seeded: Seeded) -> None:
    """QueryRunTable shares SearchRuns' plan: a condition on the sort key is checked on its
    inner-joined row (r4's NaN loss fails every comparison, as it does in EXISTS)."""
    for filter_text, order_by, expected in [
        ("metrics.loss > 0.4", "metrics.loss DESC", ["r3", "r1"]),
        ("metrics.loss < 1", "metrics.loss", ["r2", "r1", "r3"]),
        ("metrics.loss != 0.5", "metrics.loss DESC", ["r3", "r2"]),
    ]:
        table = seeded.table("metrics.loss", order_by=order_by, filter=filter_text)
        assert seeded.rows(table) == expected, filter_text
        loss = {"r1": 0.5, "r2": 0.3, "r3": 0.7}
        assert list(column(table, "metrics.loss").numbers) == [loss[r] for r in expected]
