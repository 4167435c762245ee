"""SearchRuns and ListRuns with the filter grammar and order_by, over a known set of runs, on
SQLite and PostgreSQL: exact result sets, ordering with missing values, keyset paging,
errors with positions, injection attempts and lifecycle filters."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from cairn.tracker.v1 import lifecycle_pb2, run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import (
    TrackerStub,
    error_info,
    expect_error,
    log_metrics,
    log_params,
    metric,
    new_experiment,
    new_run,
    shared_tracker,
)

__all__ = ["shared_tracker"]  # a fixture: importing it is what makes pytest see it

HOUR_MS = 3_600_000
T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
INJECTION = "x' OR '1'='1"
DROP_TABLE = "'; DROP TABLE runs; --"
BACKSLASHES = "C:\\temp\\new"


@dataclass(frozen=True)
class Spec:
    label: str
    experiment: str  # "A" or "B"
    run_name: str
    status: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    lineage: tuple[str, str] = ("", "")


FINISHED, RUNNING = run_pb2.RUN_STATUS_FINISHED, run_pb2.RUN_STATUS_RUNNING
FAILED, KILLED, QUEUED = (
    run_pb2.RUN_STATUS_FAILED,
    run_pb2.RUN_STATUS_KILLED,
    run_pb2.RUN_STATUS_QUEUED,
)

# r01..r12 are active; start_time is 2024-01-01 plus the run's number in hours.
SPECS = [
    Spec(
        "r01",
        "A",
        "alpha-base",
        FINISHED,
        {"model": "xgboost", "depth": "5", "lr": "0.1"},
        {"acc": 0.80, "val/loss": 0.50},
        {"team": "search", "stage": "prod"},
        ("ds-1", "ranking"),
    ),
    Spec(
        "r02",
        "A",
        "alpha-deep",
        FINISHED,
        {"model": "xgboost", "depth": "10", "lr": "0.01"},
        {"acc": 0.90, "val/loss": 0.30},
        {"team": "search"},
        ("ds-1", "ranking"),
    ),
    Spec(
        "r03",
        "A",
        "Alpha-wide",
        RUNNING,
        {"model": "XGBoost", "depth": "3", "lr": "0.1"},
        {"acc": 0.70},
        {"team": "ads"},
        ("ds-1", "retrieval"),
    ),
    Spec(
        "r04",
        "A",
        "beta-1",
        FAILED,
        {"model": "lightgbm", "depth": "7"},
        {"val/loss": 0.90},
        {"team": "ads", "stage": "dev"},
        ("ds-2", "ranking"),
    ),
    Spec("r05", "A", "beta-2", KILLED, {"model": "lightgbm", "depth": "auto"}, {"acc": 0.6}, {}),
    Spec("r06", "A", "gamma", QUEUED, {}, {}, {}),
    Spec(
        "r07",
        "B",
        "delta_1",
        FINISHED,
        {"model": "linear", "depth": "20", "lr": "0.001"},
        {"acc": 0.95, "val/loss": 0.10},
        {"team": "search", "stage": "prod"},
        ("ds-2", "ranking"),
    ),
    Spec(
        "r08",
        "B",
        "delta%2",
        FINISHED,
        {"model": "linear", "depth": "2"},
        {"acc": 0.90},
        {"team": "Search"},
        ("ds-2", "retrieval"),
    ),
    Spec("r09", "B", "epsilon", RUNNING, {"model": INJECTION}, {"acc": 0.50}, {}),
    Spec(
        "r10",
        "B",
        "zeta",
        RUNNING,
        {"model": DROP_TABLE, "depth": "5.0"},
        {},
        {"path": BACKSLASHES},
    ),
    Spec(
        "r11", "B", "eta", FINISHED, {"model": "模型-ü", "depth": "10"}, {"acc": 0.90}, {"team": ""}
    ),
    Spec("r12", "B", "theta", RUNNING, {"model": "x", "depth": "-1"}, {"acc": 0.10}, {}),
]
DELETED_SPEC = Spec("r13", "A", "deleted-one", FINISHED, {"model": "xgboost"}, {"acc": 0.99}, {})
ACTIVE_LABELS = [s.label for s in SPECS]


@dataclass
class DataSet:
    tracker: TrackerStub
    experiments: dict[str, str]  # "A"/"B"/"C" -> experiment id
    run_ids: dict[str, str]  # label -> run id
    labels: dict[str, str]  # run id -> label

    def search(self, filter_text: str = "", experiments: str = "AB", **request: Any) -> list[str]:
        """Labels of the runs found, in order, in one page."""
        response = self.tracker.SearchRuns(
            pb.SearchRunsRequest(
                experiment_ids=[self.experiments[e] for e in experiments],
                filter=filter_text,
                page_size=1000,
                **request,
            )
        )
        assert not response.next_page_token
        return [self.labels.get(r.run_id, r.run_id) for r in response.runs]

    def pages(self, filter_text: str, order_by: str, page_size: int) -> list[list[str]]:
        """Labels of the runs of experiments A and B, page by page through page tokens."""
        pages: list[list[str]] = []
        token = ""
        while True:
            response = self.tracker.SearchRuns(
                pb.SearchRunsRequest(
                    experiment_ids=[self.experiments[e] for e in "AB"],
                    filter=filter_text,
                    order_by=order_by,
                    page_size=page_size,
                    page_token=token,
                )
            )
            pages.append([self.labels[r.run_id] for r in response.runs])
            token = response.next_page_token
            if not token:
                return pages


def _create(tracker: TrackerStub, experiment: Any, spec: Spec, number: int) -> run_pb2.Run:
    start = timestamp_pb2.Timestamp()
    start.FromMilliseconds(T0_MS + number * HOUR_MS)
    run = new_run(
        tracker,
        experiment,
        run_name=spec.run_name,
        status=QUEUED if spec.status == QUEUED else RUNNING,
        start_time=start,
        tags=spec.tags,
        dataset_id=spec.lineage[0],
        model_type=spec.lineage[1],
    )
    if spec.params:
        log_params(tracker, run, **spec.params)
    if spec.metrics:
        # An older, higher value at a lower step first: search sees the latest value only.
        log_metrics(tracker, run, [metric(k, 1e6, step=0) for k in spec.metrics])
        log_metrics(tracker, run, [metric(k, v, step=10) for k, v in spec.metrics.items()])
    if spec.status not in (QUEUED, RUNNING):
        tracker.UpdateRun(pb.UpdateRunRequest(run=run_pb2.Run(name=run.name, status=spec.status)))
    return run


@pytest.fixture(scope="module")
def data(shared_tracker: TrackerStub) -> DataSet:
    tracker = shared_tracker
    experiments = {key: new_experiment(tracker, f"search-{key}") for key in "ABC"}
    run_ids: dict[str, str] = {}
    for number, spec in enumerate([*SPECS, DELETED_SPEC], start=1):
        run = _create(tracker, experiments[spec.experiment], spec, number)
        run_ids[spec.label] = run.run_id
    tracker.DeleteRun(pb.DeleteRunRequest(name=f"experiments/-/runs/{run_ids['r13']}"))
    other = new_run(tracker, experiments["C"], run_name="in-c")
    log_params(tracker, other, model="xgboost")
    run_ids["c1"] = other.run_id
    return DataSet(
        tracker,
        {key: e.experiment_id for key, e in experiments.items()},
        run_ids,
        {run_id: label for label, run_id in run_ids.items()},
    )


def labels(text: str) -> list[str]:
    return sorted(f"r{int(n):02d}" for n in text.split())


# filter -> the labels (run numbers) it selects among the active runs of experiments A and B.
FILTERS: list[tuple[str, str]] = [
    ("", "1 2 3 4 5 6 7 8 9 10 11 12"),
    ("params.model = 'xgboost'", "1 2"),
    ('params.model = "xgboost"', "1 2"),
    ("params.model == 'xgboost'", "1 2"),
    ("params.model != 'xgboost'", "3 4 5 7 8 9 10 11 12"),
    ("params.model <> 'xgboost'", "3 4 5 7 8 9 10 11 12"),
    ("NOT params.model = 'xgboost'", "3 4 5 6 7 8 9 10 11 12"),
    # Numbers compare params numerically: '10' > 5 and '5.0' = 5.
    ("params.depth > 5", "2 4 7 11"),
    ("params.depth >= 5", "1 2 4 7 10 11"),
    ("params.depth < 5", "3 8 12"),
    ("params.depth <= 2", "8 12"),
    ("params.depth = 5", "1 10"),
    ("params.depth != 5", "2 3 4 7 8 11 12"),
    ("params.depth > -1.5e0", "1 2 3 4 7 8 10 11 12"),
    # A quoted value compares text.
    ("params.depth = '5'", "1"),
    ("params.depth > '5'", "4 5 10"),
    ("params.lr = 0.1", "1 3"),
    ("params.lr < 0.05", "2 7"),
    ("params.depth IN (5, 'auto')", "1 5 10"),
    ("params.model IN ('lightgbm', 'linear')", "4 5 7 8"),
    ("params.model NOT IN ('lightgbm', 'linear', 'xgboost')", "3 9 10 11 12"),
    ("params.model IS NULL", "6"),
    ("params.depth IS NOT NULL", "1 2 3 4 5 7 8 10 11 12"),
    ("param.model LIKE 'l%'", "4 5 7 8"),
    # Latest metric values (the step-0 values of 1e6 are history).
    ("metrics.acc > 0.85", "2 7 8 11"),
    ("metrics.acc <= 0.6", "5 9 12"),
    ("metrics.acc = 0.9", "2 8 11"),
    ("metrics.acc IN (0.5, 0.6)", "5 9"),
    ("metrics.acc > 1000", ""),
    ("metrics.acc IS NULL", "4 6 10"),
    ("metrics.`val/loss` < 0.4", "2 7"),
    ("metrics.`val/loss` IS NOT NULL", "1 2 4 7"),
    ('metric."val/loss" >= 0.9', "4"),
    # Tags: LIKE is case-sensitive on both databases, ILIKE is not.
    ("tags.team = 'search'", "1 2 7"),
    ("tags.team LIKE 'S%'", "8"),
    ("tags.team LIKE 's%'", "1 2 7"),
    ("tags.team ILIKE 's%'", "1 2 7 8"),
    ("tags.team NOT ILIKE 's%'", "3 4 11"),
    ("tags.team = ''", "11"),
    ("tags.stage IS NOT NULL", "1 4 7"),
    ("tags.team IS NULL", "5 6 9 10 12"),
    ("tags.team IN ('ads', 'Search')", "3 4 8"),
    # Attributes (the attributes. prefix is optional).
    ("run_name LIKE 'alpha%'", "1 2"),
    ("run_name ILIKE 'ALPHA%'", "1 2 3"),
    ("run_name LIKE 'delta_%'", "7 8"),
    ("run_name NOT LIKE '%a%'", "9"),
    ("run_name = 'delta%2'", "8"),
    # A backslash escapes % and _ in LIKE patterns on both databases (a filter string
    # spells one backslash as two).
    ("attributes.run_name LIKE '%\\\\%%'", "8"),
    ("attributes.run_name LIKE 'delta\\\\_1'", "7"),
    ("status = 'FINISHED'", "1 2 7 8 11"),
    ("status = 'RUN_STATUS_FINISHED'", "1 2 7 8 11"),
    ("status = 'finished'", "1 2 7 8 11"),
    ("status != 'RUNNING'", "1 2 4 5 6 7 8 11"),
    ("status IN ('RUNNING', 'QUEUED')", "3 6 9 10 12"),
    ("status NOT IN ('RUNNING', 'QUEUED', 'FINISHED')", "4 5"),
    ("start_time >= '2024-01-01T10:00:00Z'", "10 11 12"),
    ("start_time > '2024-01-01T11:30:00+00:00'", "12"),
    ("start_time < 1704085200000", "1 2 3 4"),
    ("start_time >= '2024-01-01' AND start_time <= 1704085200000", "1 2 3 4 5"),
    ("end_time IS NULL", "3 6 9 10 12"),
    ("dataset_id = 'ds-1'", "1 2 3"),
    ("dataset_id IS NULL", "5 6 9 10 11 12"),
    ("model_type = 'ranking' AND version = 2", "2 7"),
    ("version = 0", "5 6 9 10 11 12"),
    ("version >= 1 AND model_type != 'ranking'", "3 8"),
    # Boolean structure and precedence: AND binds tighter than OR.
    ("status = 'FINISHED' OR metrics.acc < 0.55", "1 2 7 8 9 11 12"),
    ("NOT (status = 'FINISHED')", "3 4 5 6 9 10 12"),
    ("NOT NOT status = 'FINISHED'", "1 2 7 8 11"),
    ("tags.team = 'ads' OR tags.team = 'search' AND metrics.acc > 0.85", "2 3 4 7"),
    ("(tags.team = 'ads' OR tags.team = 'search') AND metrics.acc > 0.85", "2 7"),
    ("attributes.status != 'RUNNING' AND params.model LIKE 'l%'", "4 5 7 8"),
    (
        "(params.model = 'xgboost' OR params.model = 'linear') AND NOT (params.depth < 10)",
        "2 7",
    ),
    ("params.model = 'xgboost' and params.depth > 5 or status = 'queued'", "2 6"),
    # Injection attempts are plain values: exact matches only.
    ("params.model = 'x'' OR ''1''=''1'", "9"),
    ("params.model = \"x' OR '1'='1\"", "9"),
    ("params.model = 'x\\' OR \\'1\\'=\\'1'", "9"),
    ("params.model = 'x'", "12"),
    ("params.model = '''; DROP TABLE runs; --'", "10"),
    ("params.model = \"'; DROP TABLE runs; --\" OR params.model = 'x'", "10 12"),
    ("params.model LIKE '%DROP%'", "10"),
    ("params.model = 'x'' OR 1=1 --'", ""),
    ("params.model = '1'' OR ''1''=''1' OR params.model = 'nothing'", ""),
    ("params.model = '模型-ü'", "11"),
    # Case folding covers all of Unicode, not only ASCII, on both databases.
    ("params.model ILIKE '%-Ü'", "11"),
    ("params.model LIKE '%-Ü'", ""),
    ("tags.path = 'C:\\\\temp\\\\new'", "10"),
    ("tags.path LIKE 'C:\\\\\\\\temp%'", "10"),
    ("params.`model'; DROP TABLE params; --` = 'x'", ""),
    ("params.`depth` > 5 AND params.`x``y` IS NULL", "2 4 7 11"),
]


@pytest.mark.parametrize(("filter_text", "expected"), FILTERS, ids=[f for f, _ in FILTERS])
def test_filter_selects_exactly(data: DataSet, filter_text: str, expected: str) -> None:
    assert sorted(data.search(filter_text)) == labels(expected)
    # ListRuns applies the same filter within one experiment.
    listed = data.tracker.ListRuns(
        pb.ListRunsRequest(
            parent=f"experiments/{data.experiments['A']}", filter=filter_text, page_size=1000
        )
    )
    in_a = {s.label for s in SPECS if s.experiment == "A"}
    assert sorted(data.labels[r.run_id] for r in listed.runs) == [
        label for label in labels(expected) if label in in_a
    ]


def test_injection_leaves_every_table_in_place(data: DataSet) -> None:
    # Well-formed filters whose values or keys look like SQL: they match nothing.
    harmless = [
        "params.model = 'x''; DROP TABLE runs; --'",
        "tags.team = 'a\\' OR 1=1 --'",
        "metrics.`acc; DROP TABLE latest_metrics` > 0",
        "params.`model` IN ('x'') OR (''1''=''1', 'y')",
        "run_name LIKE '%'' OR ''%'' = ''%'",
        "tags.`team') OR ('1'='1` IS NOT NULL",
        "params.model = 'none' OR params.`1'='1` = '1'",
    ]
    for attempt in harmless:
        assert data.search(attempt) == [], attempt
    # SQL that breaks out of a string in SQL breaks the filter grammar instead.
    malformed = [
        "params.model = ''; DELETE FROM params; --'",
        "params.model = 'x' OR '1'='1'",
        "params.model = 'x' OR 1=1",
        "params.model = 'x'; DROP TABLE runs",
        "params.model = 'x' UNION SELECT * FROM runs",
        "status = 'RUNNING' -- comment",
        "params.model = 'x' /* c */",
        "params.model = 'a\x00b'",
        "params.`a\x00b` = 'x'",
    ]
    for attempt in malformed:
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            data.tracker.SearchRuns,
            pb.SearchRunsRequest(filter=attempt),
        )
        assert "position" in error.details(), attempt
        assert error_info(error).reason == "INVALID_FILTER", attempt
    for order in ("params.`x; DROP TABLE runs` DESC", "metrics.`a'); DELETE FROM metrics; --`"):
        assert sorted(data.search(order_by=order)) == sorted(ACTIVE_LABELS)
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.SearchRuns,
        pb.SearchRunsRequest(order_by="params.`a\x00b`"),
    )
    assert error_info(error).metadata["field"] == "order_by"
    # Every table still answers: runs, params, tags, latest metrics, history.
    assert sorted(data.search("params.model IS NOT NULL OR params.model IS NULL")) == sorted(
        ACTIVE_LABELS
    )
    run = data.tracker.GetRun(pb.GetRunRequest(name=f"experiments/-/runs/{data.run_ids['r01']}"))
    assert dict(run.params) == SPECS[0].params
    assert dict(run.tags) == SPECS[0].tags
    assert {m.key: m.value for m in run.metrics} == SPECS[0].metrics
    points = data.tracker.ListMetricHistory(
        pb.ListMetricHistoryRequest(run=run.name, metric_key="acc")
    ).points
    assert [(p.step, p.value) for p in points] == [(0, 1e6), (10, 0.80)]


# ------------------------------------------------------------------ ordering and paging


Getter = Callable[[Spec], Any]


def expected_order(data: DataSet, keys: list[tuple[Getter, bool]]) -> list[str]:
    """The order the contract promises: by each key (None = missing, last in both
    directions), then by run id."""
    specs = sorted(SPECS, key=lambda s: data.run_ids[s.label])
    for getter, descending in reversed(keys):  # stable sorts, least significant key first
        present = [s for s in specs if getter(s) is not None]
        missing = [s for s in specs if getter(s) is None]
        present.sort(key=getter, reverse=descending)
        specs = present + missing
    return [s.label for s in specs]


def acc(spec: Spec) -> float | None:
    return spec.metrics.get("acc")


def test_order_by_metric_puts_missing_values_last_both_ways(data: DataSet) -> None:
    for descending in (True, False):
        order = "metrics.acc " + ("DESC" if descending else "ASC")
        expected = expected_order(data, [(acc, descending)])
        assert data.search(order_by=order) == expected
        assert expected[-3:] == sorted(["r04", "r06", "r10"], key=lambda r: data.run_ids[r])
    assert data.search(order_by="metrics.acc")[0] == "r12"
    assert data.search(order_by="metrics.acc DESC")[0] == "r07"


def test_order_by_several_keys(data: DataSet) -> None:
    def status(spec: Spec) -> str:
        return run_pb2.RunStatus.Name(spec.status).removeprefix("RUN_STATUS_")

    expected = expected_order(data, [(status, False), (acc, True)])
    assert expected[:2] == ["r04", "r07"]  # FAILED, then the best FINISHED
    assert data.search(order_by="status, metrics.acc DESC") == expected
    expected = expected_order(
        data, [(lambda s: s.tags.get("team"), False), (lambda s: s.run_name, True)]
    )
    assert data.search(order_by="tags.team ASC, run_name DESC") == expected
    assert data.search(order_by="start_time") == ACTIVE_LABELS
    assert data.search() == ACTIVE_LABELS[::-1]  # default: start_time DESC


def test_order_by_param_is_numeric_then_text(data: DataSet) -> None:
    def number(spec: Spec) -> float | None:
        try:
            return float(spec.params["depth"])
        except (KeyError, ValueError):
            return None

    def text(spec: Spec) -> str | None:
        return spec.params.get("depth")

    ascending = data.search(order_by="params.depth")
    assert ascending == expected_order(data, [(number, False), (text, False)])
    assert ascending[:3] == ["r12", "r08", "r03"]  # -1, 2, 3: numbers, not text
    assert ascending[3:5] == ["r01", "r10"]  # 5 then 5.0 (equal numbers, then text)
    descending = data.search(order_by="params.depth DESC")
    assert descending == expected_order(data, [(number, True), (text, True)])
    assert descending[0] == "r07"  # 20
    assert descending[-3] == "r05"  # 'auto': not a number, after all numbers
    assert sorted(descending[-2:]) == ["r06", "r09"]  # no depth at all: last


@pytest.mark.parametrize(
    "order_by",
    ["metrics.acc DESC", "metrics.acc", "params.depth DESC", "tags.team", "status", ""],
)
def test_paging_gives_the_sequence_of_one_big_page(data: DataSet, order_by: str) -> None:
    whole = data.search(order_by=order_by)
    assert sorted(whole) == sorted(ACTIVE_LABELS)
    pages = data.pages("", order_by, 5)
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [label for page in pages for label in page] == whole


# (filter, order_by) where the filter constrains the sort key at its top level: the store
# then inner-joins that key and checks the condition on the joined row (the plan an index
# can serve). The same searches without that overlap take the general path.
CONSTRAINED_SORTS = [
    ("metrics.acc > 0.55", "metrics.acc DESC"),
    ("metrics.acc > 0.55", "metrics.acc"),
    ("metrics.acc != 0.9 AND status = 'FINISHED'", "metrics.acc DESC"),
    ("metrics.acc IN (0.5, 0.6, 0.9)", "metrics.acc"),
    ("metrics.acc NOT IN (0.9) AND metrics.acc >= 0.5", "metrics.acc DESC"),
    ("params.depth > 2", "params.depth DESC"),
    ("params.depth >= 5 AND params.depth < 20", "params.depth"),
    ("params.depth IN (5, 'auto')", "params.depth DESC"),
    ("params.model LIKE '%i%'", "params.model DESC"),
    ("params.model NOT IN ('x', 'linear')", "params.model"),
    ("tags.team ILIKE 's%'", "tags.team"),
    ("tags.team != 'ads' AND metrics.acc > 0.5", "tags.team DESC, metrics.acc"),
    # Not conditions the store moves onto the join (runs without the key still match):
    ("metrics.acc > 0.5 OR params.depth > 5", "metrics.acc DESC"),
    ("NOT metrics.acc > 0.85", "metrics.acc DESC"),
    ("metrics.acc IS NOT NULL", "metrics.acc"),
]


@pytest.mark.parametrize(("filter_text", "order_by"), CONSTRAINED_SORTS)
def test_a_filter_on_the_sort_key_keeps_order_and_paging(
    data: DataSet, filter_text: str, order_by: str
) -> None:
    matching = set(data.search(filter_text))  # ordered by start_time: the general path
    expected = [label for label in data.search(order_by=order_by) if label in matching]
    assert expected, "each case selects some runs"
    assert data.search(filter_text, order_by=order_by) == expected
    assert [label for page in data.pages(filter_text, order_by, 2) for label in page] == expected


def test_paging_through_a_filtered_search(data: DataSet) -> None:
    filter_text = "params.depth IS NOT NULL"
    whole = data.search(filter_text, order_by="params.depth")
    assert len(whole) == 10
    paged: list[str] = []
    token = ""
    for _ in range(10):
        response = data.tracker.ListRuns(
            pb.ListRunsRequest(
                parent="experiments/-",
                filter=filter_text + f" AND experiment_id != '{data.experiments['C']}'",
                order_by="params.depth",
                page_size=3,
                page_token=token,
            )
        )
        paged.extend(data.labels[r.run_id] for r in response.runs)
        token = response.next_page_token
        if not token:
            break
    assert paged == whole
    # A token belongs to its query.
    first = data.tracker.SearchRuns(
        pb.SearchRunsRequest(
            experiment_ids=[data.experiments["A"]], filter=filter_text, page_size=2
        )
    )
    for changed in (
        {"filter": "params.depth IS NULL"},
        {"order_by": "start_time"},
        {"experiment_ids": [data.experiments["B"]]},
        {"lifecycle_filter": lifecycle_pb2.LIFECYCLE_FILTER_ALL},
    ):
        request = pb.SearchRunsRequest(
            experiment_ids=[data.experiments["A"]],
            filter=filter_text,
            page_size=2,
            page_token=first.next_page_token,
        )
        for field, value in changed.items():
            if field == "experiment_ids":
                del request.experiment_ids[:]
                request.experiment_ids.extend(value)  # type: ignore[arg-type]
            else:
                setattr(request, field, value)
        error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, data.tracker.SearchRuns, request)
        assert error_info(error).reason == "PAGE_TOKEN_MISMATCH"


def test_page_size_is_coerced(data: DataSet) -> None:
    ids = [data.experiments["A"], data.experiments["B"]]
    response = data.tracker.SearchRuns(pb.SearchRunsRequest(experiment_ids=ids, page_size=5000))
    assert len(response.runs) == 12
    assert not response.next_page_token
    response = data.tracker.SearchRuns(pb.SearchRunsRequest(experiment_ids=ids, page_size=1))
    assert len(response.runs) == 1
    assert response.next_page_token


# ------------------------------------------------------------------ scope and lifecycle


def test_lifecycle_filters(data: DataSet) -> None:
    assert data.search(lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY) == ["r13"]
    everything = data.search(lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL)
    assert sorted(everything) == sorted([*ACTIVE_LABELS, "r13"])
    assert sorted(data.search(lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY)) == (
        sorted(ACTIVE_LABELS)
    )
    found = data.search("metrics.acc > 0.9", lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL)
    assert sorted(found) == ["r07", "r13"]
    assert data.search(
        "lifecycle_state = 'DELETED'", lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL
    ) == ["r13"]
    deleted = data.tracker.ListRuns(
        pb.ListRunsRequest(
            parent=f"experiments/{data.experiments['A']}",
            lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY,
        )
    )
    assert [data.labels[r.run_id] for r in deleted.runs] == ["r13"]


def test_search_across_experiments(data: DataSet) -> None:
    in_a = sorted(s.label for s in SPECS if s.experiment == "A")
    in_b = sorted(s.label for s in SPECS if s.experiment == "B")
    assert sorted(data.search(experiments="A")) == in_a
    assert sorted(data.search(experiments="B")) == in_b
    assert sorted(data.search(experiments="AB")) == sorted(in_a + in_b)
    assert sorted(data.search(experiments="ABC")) == sorted([*in_a, *in_b, "c1"])
    assert data.search("params.model = 'xgboost'", experiments="C") == ["c1"]
    assert sorted(data.search("params.model = 'xgboost'", experiments="CA")) == [
        "c1",
        "r01",
        "r02",
    ]
    # No experiment ids: every experiment (this module's tracker may hold others too).
    everywhere = data.tracker.SearchRuns(
        pb.SearchRunsRequest(filter="params.model = 'xgboost'", page_size=1000)
    )
    assert {"c1", "r01", "r02"} <= {data.labels.get(r.run_id, "") for r in everywhere.runs}
    listed = data.tracker.ListRuns(
        pb.ListRunsRequest(parent="experiments/-", filter="params.model = 'xgboost'")
    )
    assert {r.run_id for r in listed.runs} == {r.run_id for r in everywhere.runs}
    # Unknown experiment ids just match nothing.
    assert data.tracker.SearchRuns(pb.SearchRunsRequest(experiment_ids=["nope"])).runs == []
    assert data.search("experiment_id = 'nope'") == []


def test_filter_by_experiment_and_run_id(data: DataSet) -> None:
    assert sorted(data.search(f"experiment_id = '{data.experiments['B']}'")) == sorted(
        s.label for s in SPECS if s.experiment == "B"
    )
    assert data.search(f"run_id = '{data.run_ids['r05']}'") == ["r05"]
    assert data.search(f"id IN ('{data.run_ids['r05']}', '{data.run_ids['r13']}')") == ["r05"]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("filter_text", "position", "fragment"),
    [
        ("params.model = ", 15, "expected a value"),
        ("params.model = 'a' AND", 22, "the end of the filter"),
        ("(params.model = 'a'", 19, "')'"),
        ("params.model = 'unterminated", 15, "unterminated string"),
        ("params.model 'a'", 13, "an operator"),
        ("params.depth > 5 5", 17, "'5'"),
        ("params.model LIKE 5", 18, "a quoted string"),
        ("status IS 'x'", 10, "NULL"),
        ("metrics.acc > 'high'", 0, "is a number"),
        ("metrics.acc IN (1, 'x')", 0, "numbers only"),
        ("status = 'DONE'", 0, "QUEUED, RUNNING, FINISHED, FAILED, KILLED"),
        ("run_id = 'a' AND start_time > 'yesterday'", 17, "neither epoch milliseconds"),
        ("version = 1.5", 0, "whole number"),
        ("version LIKE '1%'", 0, "LIKE does not apply"),
        ("tags.team > 5", 0, "quote the value"),
        # Valid literals beyond the 64-bit columns are reported, not sent to the database.
        ("start_time > 1e300", 0, "out of its range"),
        ("version < -1e300", 0, "out of its range"),
        ("status = 'RUNNING' OR end_time IN (1, 9.3e18)", 22, "out of its range"),
        ("params.model = 'a' AND  colour = 'red'", 24, "'colour'"),
    ],
)
def test_invalid_filters_report_the_position(
    data: DataSet, filter_text: str, position: int, fragment: str
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.SearchRuns,
        pb.SearchRunsRequest(filter=filter_text),
    )
    assert f"position {position}" in error.details()
    assert fragment in error.details()
    info = error_info(error)
    assert info.reason in ("INVALID_FILTER", "UNKNOWN_FIELD")
    assert info.metadata["position"] == str(position)
    assert info.metadata["field"] == "filter"
    # ListRuns reports the same.
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.ListRuns,
        pb.ListRunsRequest(parent="experiments/-", filter=filter_text),
    )
    assert f"position {position}" in error.details()


def test_unknown_attribute_is_named(data: DataSet) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.SearchRuns,
        pb.SearchRunsRequest(filter="status = 'FINISHED' AND owner = 'me'"),
    )
    assert "'owner'" in error.details()
    assert "run_name" in error.details()  # the known attributes are listed
    info = error_info(error)
    assert info.reason == "UNKNOWN_FIELD"
    assert info.metadata["key"] == "owner"
    assert info.metadata["position"] == "24"

    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.SearchRuns,
        pb.SearchRunsRequest(order_by="start_time, owner DESC"),
    )
    assert "'owner'" in error.details()
    assert error_info(error).metadata["field"] == "order_by"


@pytest.mark.parametrize(
    ("order_by", "fragment"),
    [
        ("metrics.acc SIDEWAYS", "position 12"),
        ("metrics.acc DESC,", "position 17"),
        ("start_time, start_time DESC", "each field at most once"),
        ("", None),
    ],
)
def test_invalid_order_by(data: DataSet, order_by: str, fragment: str | None) -> None:
    if fragment is None:
        assert data.search(order_by=order_by) == ACTIVE_LABELS[::-1]
        return
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.SearchRuns,
        pb.SearchRunsRequest(order_by=order_by),
    )
    assert fragment in error.details()
    info = error_info(error)
    assert info.reason == "INVALID_ORDER_BY"
    assert info.metadata["field"] == "order_by"


@pytest.mark.parametrize(
    "filter_text",
    [
        "params.model LIKE 'abc\\\\'",
        "tags.team ILIKE '\\\\'",
        "run_name NOT LIKE 'x\\\\\\\\\\\\'",
    ],
)
def test_like_pattern_ending_in_an_escape_is_invalid(data: DataSet, filter_text: str) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        data.tracker.SearchRuns,
        pb.SearchRunsRequest(filter=filter_text),
    )
    assert "backslash" in error.details()
    assert error_info(error).metadata["position"] == "0"


def test_order_and_paging_with_infinities_and_nan(shared_tracker: TrackerStub) -> None:
    """Latest values of +inf, -inf and NaN sort and page like any other (NaN, like a missing
    value, last), and keyset page tokens carry the infinities."""
    experiment = new_experiment(shared_tracker, "search-inf")
    values = {
        "pos-inf": math.inf,
        "neg-inf": -math.inf,
        "one": 1.0,
        "one-too": 1.0,
        "zero": 0.0,
        "nan": math.nan,
        "none": None,
    }
    names: dict[str, str] = {}
    for label, value in values.items():
        run = new_run(shared_tracker, experiment, run_name=label)
        names[run.run_id] = label
        if value is not None:
            log_metrics(shared_tracker, run, [metric("score", value)])

    def ordered(order_by: str, page_size: int) -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            response = shared_tracker.SearchRuns(
                pb.SearchRunsRequest(
                    experiment_ids=[experiment.experiment_id],
                    order_by=order_by,
                    page_size=page_size,
                    page_token=token,
                )
            )
            found.extend(names[r.run_id] for r in response.runs)
            token = response.next_page_token
            if not token:
                return found

    ids = {label: run_id for run_id, label in names.items()}
    ones = sorted(["one", "one-too"], key=lambda label: ids[label])
    last = sorted(["nan", "none"], key=lambda label: ids[label])
    descending = ordered("metrics.score DESC", 1000)
    assert descending == ["pos-inf", *ones, "zero", "neg-inf", *last]
    assert ordered("metrics.score DESC", 1) == descending
    ascending = ordered("metrics.score", 1000)
    assert ascending == ["neg-inf", "zero", *ones, "pos-inf", *last]
    assert ordered("metrics.score", 2) == ascending
    found = shared_tracker.SearchRuns(
        pb.SearchRunsRequest(
            experiment_ids=[experiment.experiment_id], filter="metrics.score > 1e308"
        )
    )
    assert [names[r.run_id] for r in found.runs] == ["pos-inf"]
    # A filter on the sort key itself (its inner-joined plan): NaN fails every comparison.
    found = shared_tracker.SearchRuns(
        pb.SearchRunsRequest(
            experiment_ids=[experiment.experiment_id],
            filter="metrics.score != 1",
            order_by="metrics.score DESC",
            page_size=2,
        )
    )
    assert [names[r.run_id] for r in found.runs] == ["pos-inf", "zero"]
    second = shared_tracker.SearchRuns(
        pb.SearchRunsRequest(
            experiment_ids=[experiment.experiment_id],
            filter="metrics.score != 1",
            order_by="metrics.score DESC",
            page_size=2,
            page_token=found.next_page_token,
        )
    )
    assert [names[r.run_id] for r in second.runs] == ["neg-inf"]
    assert not second.next_page_token
