"""The analytics service over a real tracker, on both databases: known-answer run sets where
the best run, the important param, the trend, the heatmaps and the state counts are known
in advance; empty and one-run scopes; errors keep their status."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cairn.analytics.v1 import analytics_service_pb2 as pb
from cairn.analytics.v1 import analytics_service_pb2_grpc
from cairn.tracker.v1 import experiment_pb2, run_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as tpb
from services.common.settings import Settings

from cairn_testing import (
    DATABASE_KINDS,
    PostgresDatabases,
    ServerThread,
    error_info,
    expect_error,
    log_metrics,
    log_params,
    make_settings,
    metric,
    migrated_database,
    new_experiment,
    new_run,
    sqlite_url,
)

TrackerStub = tracker_service_pb2_grpc.TrackerServiceStub
AnalyticsStub = analytics_service_pb2_grpc.AnalyticsServiceStub
BASE_MS = 1_780_000_000_000
MINUTE_MS = 60_000


@dataclass
class Stubs:
    tracker: TrackerStub
    analytics: AnalyticsStub


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stubs]:
    """One tracker and analytics service per database kind for the module: every test works
    in experiments of its own (or reads the shared known set), so none needs an empty
    database, and seeding happens once."""
    kind = str(request.param)
    data_dir = tmp_path_factory.mktemp(f"analytics-{kind}")
    postgres: PostgresDatabases | None = None
    if kind == "sqlite":
        url = sqlite_url(data_dir)
        with migrated_database(url):
            pass
    else:
        postgres = request.getfixturevalue("postgres")
        url = postgres.fresh()
    server = ServerThread(make_settings(url, data_dir / "data"), ("tracker", "analytics")).start()
    try:
        with (
            grpc.insecure_channel(server.address("tracker")) as tracker_channel,
            grpc.insecure_channel(server.address("analytics")) as analytics_channel,
        ):
            yield Stubs(TrackerStub(tracker_channel), AnalyticsStub(analytics_channel))
    finally:
        server.stop()
        if postgres is not None:
            postgres.drop(url)


@pytest.fixture
def stubs(stack: Stubs) -> Stubs:
    return stack


def add_run(
    tracker: TrackerStub,
    experiment: experiment_pb2.Experiment,
    *,
    params: dict[str, str],
    final: dict[str, float] | None = None,
    loss: Sequence[float] = (),
    status: int = run_pb2.RUN_STATUS_FINISHED,
    end_minute: int | None = None,
    model_type: str = "",
    dataset_id: str = "",
    run_name: str = "",
) -> run_pb2.Run:
    run = new_run(
        tracker,
        experiment,
        model_type=model_type,
        dataset_id=dataset_id,
        run_name=run_name,
    )
    if params:
        log_params(tracker, run, **params)
    points = [metric("loss", value, step) for step, value in enumerate(loss)]
    points += [metric(key, value, len(loss)) for key, value in (final or {}).items()]
    if points:
        log_metrics(tracker, run, points)
    update = run_pb2.Run(name=run.name, status=status)
    paths = ["status"]
    if end_minute is not None:
        update.start_time.FromMilliseconds(BASE_MS + end_minute * MINUTE_MS - 30_000)
        update.end_time.FromMilliseconds(BASE_MS + end_minute * MINUTE_MS)
        paths += ["start_time", "end_time"]
    if status != run_pb2.RUN_STATUS_RUNNING or end_minute is not None:
        tracker.UpdateRun(
            tpb.UpdateRunRequest(run=update, update_mask=field_mask_pb2.FieldMask(paths=paths))
        )
    return run


# ---------------------------------------------------------------------- the known run set

# recall is decided by lr (0.01 best, then 0.1, then 0.001); dim adds a little; the "seed"
# param is noise by construction (it cycles independently of the outcome). (lr, dim) cycle
# with period 6 and seed with period 7, so 36 runs leave 6 of the 42 combinations untried.
RECALL_BY_LR = {"0.001": 0.30, "0.01": 0.50, "0.1": 0.40}
LRS = ["0.001", "0.01", "0.1"]
DIMS = ["32", "64"]


@dataclass
class KnownSet:
    experiment: experiment_pb2.Experiment
    runs: list[run_pb2.Run]
    recall: list[float]
    params: list[dict[str, str]]


def seed_known_set(tracker: TrackerStub, count: int = 36) -> KnownSet:
    experiment = new_experiment(tracker)
    runs, recalls, params = [], [], []
    for i in range(count):
        lr = LRS[i % 3]
        dim = DIMS[(i // 3) % 2]
        config = {"lr": lr, "dim": dim, "seed": str(i % 7), "optimizer": "adam"}
        recall = RECALL_BY_LR[lr] + (0.01 if dim == "64" else 0.0) - 0.0001 * i
        run = add_run(
            tracker,
            experiment,
            params=config,
            final={"recall": recall},
            loss=[(i + 1) / (epoch + 1) for epoch in range(3)],
            end_minute=i,
            model_type="retrieval" if i % 2 == 0 else "ranking",
            dataset_id=f"ds-{i % 2}",
            run_name=f"run-{i:02d}",
        )
        runs.append(run)
        recalls.append(recall)
        params.append(config)
    return KnownSet(experiment, runs, recalls, params)


@pytest.fixture(scope="module")
def known(stack: Stubs) -> KnownSet:
    """The known set, seeded once per database kind; tests only read it."""
    return seed_known_set(stack.tracker)


def best_index(known: KnownSet) -> int:
    return max(range(len(known.recall)), key=lambda i: known.recall[i])


# ---------------------------------------------------------------------- leaderboard


def test_leaderboard_ranks_the_known_best_runs_first(stubs: Stubs, known: KnownSet) -> None:
    board = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(
            experiment_ids=[known.experiment.experiment_id], metric="recall", top_k=4
        )
    )
    assert board.direction == pb.DIRECTION_MAXIMIZE and board.direction_inferred
    (group,) = board.groups
    assert group.run_count == len(known.runs)
    expected = sorted(range(len(known.runs)), key=lambda i: -known.recall[i])[:4]
    assert [e.run.run_id for e in group.entries] == [known.runs[i].run_id for i in expected]
    assert [e.rank for e in group.entries] == [1, 2, 3, 4]
    assert [e.value for e in group.entries] == pytest.approx([known.recall[i] for i in expected])
    top = group.entries[0]
    assert top.run.run_name == known.runs[best_index(known)].run_name
    assert top.run.status == run_pb2.RUN_STATUS_FINISHED
    # Params shown are the ones that differ among the entries: the top 4 share lr=0.01 and
    # dim=64 (and every run optimizer=adam), only their seeds differ.
    assert {k for e in group.entries for k in e.params} == {"seed"} == _differing(group)


def _differing(group: pb.LeaderboardGroup) -> set[str]:
    keys = {k for e in group.entries for k in e.params}
    return {k for k in keys if len({e.params.get(k) for e in group.entries}) > 1}


def test_leaderboard_direction_is_inferred_or_given(stubs: Stubs, known: KnownSet) -> None:
    scope = [known.experiment.experiment_id]
    by_loss = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(experiment_ids=scope, metric="loss", top_k=1)
    )
    # The latest loss of run i is (i + 1) / 3: run 0 has the lowest.
    assert by_loss.direction == pb.DIRECTION_MINIMIZE and by_loss.direction_inferred
    assert by_loss.groups[0].entries[0].run.run_id == known.runs[0].run_id
    worst_recall = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(
            experiment_ids=scope, metric="recall", direction=pb.DIRECTION_MINIMIZE, top_k=1
        )
    )
    assert not worst_recall.direction_inferred
    lowest = min(range(len(known.recall)), key=lambda i: known.recall[i])
    assert worst_recall.groups[0].entries[0].run.run_id == known.runs[lowest].run_id


def test_leaderboard_per_model_type_and_dataset(stubs: Stubs, known: KnownSet) -> None:
    scope = [known.experiment.experiment_id]
    board = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(
            experiment_ids=scope, metric="recall", top_k=2, group_by=pb.GROUP_BY_MODEL_TYPE
        )
    )
    assert [g.group for g in board.groups] == ["ranking", "retrieval"]
    for group in board.groups:
        assert group.run_count == len(known.runs) // 2
        assert all(e.run.model_type == group.group for e in group.entries)
        members = [
            i
            for i, run in enumerate(known.runs)
            if ("retrieval" if i % 2 == 0 else "ranking") == group.group
        ]
        expected = sorted(members, key=lambda i: -known.recall[i])[:2]
        assert [e.run.run_id for e in group.entries] == [known.runs[i].run_id for i in expected]
    datasets = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(
            experiment_ids=scope, metric="recall", top_k=1, group_by=pb.GROUP_BY_DATASET
        )
    )
    assert [g.group for g in datasets.groups] == ["ds-0", "ds-1"]


def test_leaderboard_counts_only_finished_runs_unless_asked(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    finished = add_run(stubs.tracker, experiment, params={}, final={"acc": 0.5})
    running = add_run(
        stubs.tracker, experiment, params={}, final={"acc": 0.9}, status=run_pb2.RUN_STATUS_RUNNING
    )
    request = pb.GetLeaderboardRequest(experiment_ids=[experiment.experiment_id], metric="acc")
    board = stubs.analytics.GetLeaderboard(request)
    assert [e.run.run_id for e in board.groups[0].entries] == [finished.run_id]
    request.include_unfinished = True
    board = stubs.analytics.GetLeaderboard(request)
    assert [e.run.run_id for e in board.groups[0].entries] == [running.run_id, finished.run_id]


def test_leaderboard_ties_share_a_rank(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    for value in (0.9, 0.8, 0.9, 0.7):
        add_run(stubs.tracker, experiment, params={}, final={"acc": value})
    board = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(experiment_ids=[experiment.experiment_id], metric="acc")
    )
    assert [e.rank for e in board.groups[0].entries] == [1, 1, 3, 4]
    assert [e.value for e in board.groups[0].entries] == pytest.approx([0.9, 0.9, 0.8, 0.7])


# ---------------------------------------------------------------------- dashboard


def test_dashboard_known_answers(stubs: Stubs) -> None:
    known = seed_known_set(stubs.tracker)  # its own: this test adds runs to it
    # Runs the dashboard must count but not rank: failed, killed and still running.
    add_run(stubs.tracker, known.experiment, params={}, status=run_pb2.RUN_STATUS_FAILED)
    add_run(stubs.tracker, known.experiment, params={}, status=run_pb2.RUN_STATUS_KILLED)
    add_run(
        stubs.tracker,
        known.experiment,
        params={},
        final={"recall": 0.99},
        status=run_pb2.RUN_STATUS_RUNNING,
        model_type="retrieval",
    )
    board = stubs.analytics.GetDashboard(
        pb.GetDashboardRequest(
            experiment_ids=[known.experiment.experiment_id], metric="recall", top_k=3
        )
    )
    n = len(known.runs)
    assert board.states == pb.StateCounts(finished=n, failed=1, killed=1, running=1, total=n + 3)

    scope, *per_type = board.kpis
    assert scope.model_type == "" and scope.run_count == n + 3
    assert scope.finished_run_count == n and scope.measured_run_count == n
    assert scope.best_value == pytest.approx(max(known.recall))
    assert scope.average_value == pytest.approx(sum(known.recall) / n)
    assert scope.best_run_id == known.runs[best_index(known)].run_id
    assert [k.model_type for k in per_type] == ["ranking", "retrieval"]
    retrieval = per_type[1]
    members = [i for i in range(n) if i % 2 == 0]
    assert retrieval.run_count == len(members) + 1  # the running one counts, unranked
    assert retrieval.finished_run_count == len(members)
    assert retrieval.best_value == pytest.approx(max(known.recall[i] for i in members))
    assert retrieval.average_value == pytest.approx(
        sum(known.recall[i] for i in members) / len(members)
    )

    # The trend: runs ended a minute apart in creation order; improvements only.
    expected_trend, best = [], -math.inf
    for i, value in enumerate(known.recall):
        if value > best:
            best = value
            expected_trend.append((known.runs[i].run_id, value))
    assert [(p.run_id, p.value) for p in board.trend.points] == [
        (r, pytest.approx(v)) for r, v in expected_trend
    ]
    assert [p.best_so_far for p in board.trend.points] == pytest.approx(
        [v for _, v in expected_trend]
    )
    first = known.runs.index(next(r for r in known.runs if r.run_id == expected_trend[0][0]))
    assert board.trend.points[0].time.ToMilliseconds() == BASE_MS + first * MINUTE_MS
    assert board.trend.run_count == n

    top = sorted(range(n), key=lambda i: -known.recall[i])[:3]
    assert [c.run.run_id for c in board.top_configurations] == [known.runs[i].run_id for i in top]
    # Distinguishing params: those that vary across the scope (never the constant optimizer).
    assert set(board.top_configurations[0].params) == {"lr", "dim", "seed"}
    assert board.top_configurations[0].params["lr"] == "0.01"

    # Epoch heatmap: loss of run i at epoch e is (i + 1) / (e + 1).
    heat = board.epoch_heatmap
    assert list(heat.row_ids) == [known.runs[i].run_id for i in top]
    assert list(heat.row_labels) == [f"run-{i:02d}" for i in top]
    assert list(heat.column_labels) == ["0", "1", "2"]
    expected_values = [(i + 1) / (e + 1) for i in top for e in range(3)]
    assert list(heat.values) == pytest.approx(expected_values)

    final = board.final_metrics_heatmap
    assert list(final.row_ids) == [known.runs[i].run_id for i in top]
    assert sorted(final.column_labels) == ["loss", "recall"]
    recall_column = list(final.column_labels).index("recall")
    width = len(final.column_labels)
    assert [final.values[r * width + recall_column] for r in range(3)] == pytest.approx(
        [known.recall[i] for i in top]
    )

    datasets = {d.dataset_id: d for d in board.datasets}
    assert set(datasets) == {"ds-0", "ds-1"}
    for name, parity in (("ds-0", 0), ("ds-1", 1)):
        values = [known.recall[i] for i in range(n) if i % 2 == parity]
        assert datasets[name].run_count == len(values)
        assert datasets[name].best_value == pytest.approx(max(values))
        assert datasets[name].average_value == pytest.approx(sum(values) / len(values))
        mean = sum(values) / len(values)
        stddev = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert datasets[name].stddev == pytest.approx(stddev, rel=1e-6)


def test_dashboard_model_type_filters_all_but_the_kpis(stubs: Stubs, known: KnownSet) -> None:
    board = stubs.analytics.GetDashboard(
        pb.GetDashboardRequest(
            experiment_ids=[known.experiment.experiment_id],
            metric="recall",
            model_type="ranking",
            top_k=50,
        )
    )
    ranking = [i for i in range(len(known.runs)) if i % 2 == 1]
    assert board.kpis[0].run_count == len(ranking)
    assert {k.model_type for k in board.kpis[1:]} == {"ranking", "retrieval"}
    assert board.states.total == len(ranking)
    assert {c.run.model_type for c in board.top_configurations} == {"ranking"}
    assert len(board.top_configurations) == len(ranking)
    assert board.trend.run_count == len(ranking)
    assert [d.dataset_id for d in board.datasets] == ["ds-1"]


def test_dashboard_of_an_empty_scope_is_empty_not_an_error(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    board = stubs.analytics.GetDashboard(
        pb.GetDashboardRequest(experiment_ids=[experiment.experiment_id], metric="recall")
    )
    assert board.kpis[0].run_count == 0 and math.isnan(board.kpis[0].best_value)
    assert board.states.total == 0
    assert not board.trend.points and not board.top_configurations and not board.datasets
    assert not board.epoch_heatmap.row_ids and not board.final_metrics_heatmap.values


# ---------------------------------------------------------------------- insights


def test_insights_find_the_param_that_matters(stubs: Stubs, known: KnownSet) -> None:
    insights = stubs.analytics.GetHyperparameterInsights(
        pb.GetHyperparameterInsightsRequest(
            experiment_ids=[known.experiment.experiment_id], metric="recall"
        )
    )
    assert insights.run_count == len(known.runs)
    assert insights.good_run_count == math.ceil(0.3 * len(known.runs))
    assert insights.importance_method == pb.IMPORTANCE_METHOD_PED_ANOVA
    assert insights.message == ""
    keys = [p.key for p in insights.params]
    assert keys[0] == "lr", [(p.key, p.importance) for p in insights.params]
    assert "optimizer" not in keys  # constant: nothing to learn from it
    importances = {p.key: p.importance for p in insights.params}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert importances["lr"] > 0.5
    lr = insights.params[0]
    assert lr.numeric and lr.best_label == "0.01"
    by_label = {d.label: d for d in lr.densities}
    # The 11 good runs (top 30% of 36) are exactly the lr=0.01 runs that rank first: all of
    # them, and only those, have lr=0.01.
    assert by_label["0.01"].good_count == insights.good_run_count
    assert by_label["0.01"].good_density == pytest.approx(1.0)
    assert by_label["0.001"].good_count == 0 and by_label["0.1"].good_count == 0
    assert by_label["0.001"].mean_value == pytest.approx(
        sum(r for r, p in zip(known.recall, known.params, strict=True) if p["lr"] == "0.001") / 12
    )


def test_insights_with_fanova(stubs: Stubs, known: KnownSet) -> None:
    insights = stubs.analytics.GetHyperparameterInsights(
        pb.GetHyperparameterInsightsRequest(
            experiment_ids=[known.experiment.experiment_id],
            metric="recall",
            importance_method=pb.IMPORTANCE_METHOD_FANOVA,
        )
    )
    assert insights.importance_method == pb.IMPORTANCE_METHOD_FANOVA
    assert insights.params[0].key == "lr"
    assert insights.params[0].importance > 0.5


def test_insights_rank_correlation_of_a_monotone_param(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    for depth in range(1, 13):
        add_run(
            stubs.tracker,
            experiment,
            params={"depth": str(depth), "flavor": "ab"[depth % 2]},
            final={"val_loss": 10.0 / depth},
        )
    insights = stubs.analytics.GetHyperparameterInsights(
        pb.GetHyperparameterInsightsRequest(
            experiment_ids=[experiment.experiment_id], metric="val_loss"
        )
    )
    assert insights.direction == pb.DIRECTION_MINIMIZE
    assert insights.threshold == pytest.approx(10.0 / 9)  # the 4th best of 12 (top 30%)
    depth = next(p for p in insights.params if p.key == "depth")
    assert depth.rank_correlation == pytest.approx(-1.0)
    # Depth 1..12 is a short integer range: one density per value; 9 to 12 are the good
    # runs (one each), and 12 has the best loss.
    assert [d.label for d in depth.densities] == [str(v) for v in range(1, 13)]
    assert [d.good_count for d in depth.densities] == [0] * 8 + [1] * 4
    assert depth.best_label == "12"
    flavor = next(p for p in insights.params if p.key == "flavor")
    assert not flavor.numeric and math.isnan(flavor.rank_correlation)


def test_insights_of_empty_and_one_run_scopes_explain_themselves(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    request = pb.GetHyperparameterInsightsRequest(
        experiment_ids=[experiment.experiment_id], metric="recall"
    )
    empty = stubs.analytics.GetHyperparameterInsights(request)
    assert empty.run_count == 0 and not empty.params and "no finished runs" in empty.message
    add_run(stubs.tracker, experiment, params={"lr": "0.1"}, final={"recall": 0.4})
    one = stubs.analytics.GetHyperparameterInsights(request)
    assert one.run_count == 1 and one.good_run_count == 1
    assert one.threshold == pytest.approx(0.4)
    assert one.message == "one run: nothing to compare it with"


# ---------------------------------------------------------------------- suggestions


def test_suggestions_are_new_complete_reproducible_configurations(
    stubs: Stubs, known: KnownSet
) -> None:
    request = pb.SuggestExperimentsRequest(
        experiment_ids=[known.experiment.experiment_id], metric="recall", count=3, seed=7
    )
    response = stubs.analytics.SuggestExperiments(request)
    assert response.run_count == len(known.runs)
    assert len(response.suggestions) == 3, response.message
    tried = {tuple(sorted(p.items())) for p in known.params}
    best = known.runs[best_index(known)]
    for suggestion in response.suggestions:
        assert set(suggestion.params) == {"lr", "dim", "seed", "optimizer"}
        assert tuple(sorted(suggestion.params.items())) not in tried
        assert suggestion.base_run_id == best.run_id
        assert suggestion.model_type == best.lineage.model_type
        assert suggestion.params["optimizer"] == "adam"
        assert suggestion.params["lr"] in LRS and suggestion.params["dim"] in DIMS
        assert suggestion.changed_params
        for key, value in suggestion.changed_params.items():
            assert suggestion.params[key] == value
            assert known.params[best_index(known)][key] != value
            assert f"{key}={value}" in suggestion.reason
        assert suggestion.reason.startswith("TPE warmed with 36 finished runs")
    configurations = [tuple(sorted(s.params.items())) for s in response.suggestions]
    assert len(set(configurations)) == 3
    again = stubs.analytics.SuggestExperiments(request)
    assert [dict(s.params) for s in again.suggestions] == [
        dict(s.params) for s in response.suggestions
    ]


def test_suggestions_when_the_grid_is_exhausted(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    for i, (lr, dim) in enumerate((lr, dim) for lr in LRS for dim in DIMS):
        add_run(stubs.tracker, experiment, params={"lr": lr, "dim": dim}, final={"acc": i / 10})
    response = stubs.analytics.SuggestExperiments(
        pb.SuggestExperimentsRequest(experiment_ids=[experiment.experiment_id], metric="acc")
    )
    assert not response.suggestions
    assert "has been tried" in response.message


def test_suggestions_with_few_runs_say_they_explore(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    for i in range(3):
        add_run(
            stubs.tracker,
            experiment,
            params={"lr": str(0.001 * 10**i), "width": str(16 * (i + 1)), "x": str(i)},
            final={"acc": 0.5 + i / 10},
        )
    response = stubs.analytics.SuggestExperiments(
        pb.SuggestExperimentsRequest(
            experiment_ids=[experiment.experiment_id], metric="acc", count=2
        )
    )
    assert len(response.suggestions) == 2
    assert all("exploring at random" in s.reason for s in response.suggestions)


def test_suggestions_of_an_empty_scope(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    response = stubs.analytics.SuggestExperiments(
        pb.SuggestExperimentsRequest(experiment_ids=[experiment.experiment_id], metric="acc")
    )
    assert response.run_count == 0 and not response.suggestions
    assert "no finished runs" in response.message


# ---------------------------------------------------------------------- compare


def test_compare_runs(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    a = new_run(stubs.tracker, experiment, run_name="a", model_type="ranking")
    b = new_run(stubs.tracker, experiment, run_name="b")
    log_params(stubs.tracker, a, lr="0.1", layers="2")
    log_params(stubs.tracker, b, lr="0.01", layers="2", dropout="0.5")
    log_metrics(stubs.tracker, a, [metric("loss", v, s) for s, v in ((0, 1.0), (1, 0.5), (2, 0.4))])
    log_metrics(stubs.tracker, b, [metric("loss", v, s) for s, v in ((1, 0.9), (2, 0.3), (3, 0.2))])
    log_metrics(stubs.tracker, a, [metric("accuracy", 0.8)])
    log_metrics(stubs.tracker, b, [metric("accuracy", 0.7)])

    comparison = stubs.analytics.CompareRuns(
        pb.CompareRunsRequest(runs=[a.run_id, b.name, a.name])  # a named twice: compared once
    )
    assert [r.run_id for r in comparison.runs] == [a.run_id, b.run_id]
    assert comparison.runs[0].model_type == "ranking" and comparison.runs[0].run_name == "a"
    params = {p.key: p for p in comparison.params}
    assert list(params) == ["dropout", "layers", "lr"]
    assert not params["layers"].differs and params["lr"].differs and params["dropout"].differs
    assert list(params["dropout"].present) == [False, True]
    assert list(params["lr"].values) == ["0.1", "0.01"]
    metrics = {m.key: m for m in comparison.metrics}
    assert metrics["loss"].direction == pb.DIRECTION_MINIMIZE
    assert metrics["loss"].best_run_id == b.run_id and metrics["loss"].best_value == 0.2
    assert metrics["accuracy"].direction == pb.DIRECTION_MAXIMIZE
    assert metrics["accuracy"].best_run_id == a.run_id
    loss = next(h for h in comparison.histories if h.metric_key == "loss")
    assert list(loss.steps) == [0, 1, 2, 3]
    series = {s.name: list(s.values) for s in loss.series}
    assert series[a.run_id][:3] == [1.0, 0.5, 0.4] and math.isnan(series[a.run_id][3])
    assert math.isnan(series[b.run_id][0]) and series[b.run_id][1:] == [0.9, 0.3, 0.2]

    # A direction override, and histories of the chosen metrics only.
    override = pb.CompareRunsRequest(runs=[a.run_id, b.run_id], metric_keys=["accuracy"])
    override.directions["accuracy"] = pb.DIRECTION_MINIMIZE
    flipped = stubs.analytics.CompareRuns(override)
    accuracy = next(m for m in flipped.metrics if m.key == "accuracy")
    assert accuracy.best_run_id == b.run_id and not accuracy.direction_inferred
    assert [h.metric_key for h in flipped.histories] == ["accuracy"]


def test_compare_one_run(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    run = add_run(stubs.tracker, experiment, params={"lr": "1"}, final={"acc": 0.5})
    comparison = stubs.analytics.CompareRuns(pb.CompareRunsRequest(runs=[run.run_id]))
    assert len(comparison.runs) == 1
    assert not comparison.params[0].differs
    assert comparison.metrics[0].best_run_id == run.run_id


# ---------------------------------------------------------------------- errors


def test_bad_requests_are_invalid_argument(stubs: Stubs, known: KnownSet) -> None:
    analytics = stubs.analytics
    scope = [known.experiment.experiment_id]
    cases = [
        (analytics.CompareRuns, pb.CompareRunsRequest(), "runs"),
        (analytics.CompareRuns, pb.CompareRunsRequest(runs=[f"r{i}" for i in range(101)]), "runs"),
        (analytics.GetLeaderboard, pb.GetLeaderboardRequest(experiment_ids=scope), "metric"),
        (
            analytics.GetLeaderboard,
            pb.GetLeaderboardRequest(metric="recall", top_k=-1),
            "page_size",
        ),
        (
            analytics.GetLeaderboard,
            pb.GetLeaderboardRequest(metric="recall", group_by=99),  # type: ignore[arg-type]
            "group_by",
        ),
        (
            analytics.GetDashboard,
            pb.GetDashboardRequest(metric="recall", direction=7),  # type: ignore[arg-type]
            "direction",
        ),
        (
            analytics.GetHyperparameterInsights,
            pb.GetHyperparameterInsightsRequest(metric="recall", top_fraction=1.5),
            "top_fraction",
        ),
        (
            analytics.GetHyperparameterInsights,
            pb.GetHyperparameterInsightsRequest(metric="recall", top_fraction=math.nan),
            "top_fraction",
        ),
    ]
    for method, request, field in cases:
        error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, method, request)
        assert error_info(error).metadata["field"] == field, (request, error.details())


def test_tracker_errors_keep_their_status(stubs: Stubs, known: KnownSet) -> None:
    # A malformed filter is the tracker's INVALID_ARGUMENT, with its position and reason.
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.analytics.GetLeaderboard,
        pb.GetLeaderboardRequest(metric="recall", filter="params.lr = = 1"),
    )
    assert "position" in error.details()
    assert error_info(error).metadata["field"] == "filter"
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stubs.analytics.CompareRuns,
        pb.CompareRunsRequest(runs=["0" * 32]),
    )
    # The model_type shorthand is quoted into the filter, never interpreted.
    board = stubs.analytics.GetLeaderboard(
        pb.GetLeaderboardRequest(metric="recall", model_type="x' OR '1'='1")
    )
    assert board.groups[0].run_count == 0 and not board.groups[0].entries


def test_unavailable_tracker_is_unavailable(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    with migrated_database(url):
        pass
    # A tracker address nothing listens on.
    settings = make_settings(url, tmp_path / "data", tracker_address="127.0.0.1:1")
    server = ServerThread(settings, ("analytics",)).start()
    try:
        with grpc.insecure_channel(server.address("analytics")) as channel:
            stub = AnalyticsStub(channel)
            error = expect_error(
                grpc.StatusCode.UNAVAILABLE,
                stub.GetLeaderboard,
                pb.GetLeaderboardRequest(metric="recall"),
                timeout=30,
            )
            assert "tracker service is unavailable" in error.details()
            assert "127.0.0.1:1" not in error.details()
    finally:
        server.stop()


@pytest.fixture
def secured(settings: Settings) -> Iterator[ServerThread]:
    server = ServerThread(
        settings.model_copy(update={"auth_tokens": "s3cret"}), ("tracker", "analytics")
    ).start()
    yield server
    server.stop()


def test_the_callers_token_reaches_the_tracker(secured: ServerThread) -> None:
    token = (("authorization", "Bearer s3cret"),)
    with (
        grpc.insecure_channel(secured.address("tracker")) as tracker_channel,
        grpc.insecure_channel(secured.address("analytics")) as analytics_channel,
    ):
        tracker = TrackerStub(tracker_channel)
        analytics = AnalyticsStub(analytics_channel)
        experiment = tracker.CreateExperiment(
            tpb.CreateExperimentRequest(
                experiment=experiment_pb2.Experiment(display_name="secured")
            ),
            metadata=token,
        )
        request = pb.GetLeaderboardRequest(experiment_ids=[experiment.experiment_id], metric="acc")
        board = analytics.GetLeaderboard(request, metadata=token)
        assert board.groups[0].run_count == 0
        expect_error(grpc.StatusCode.UNAUTHENTICATED, analytics.GetLeaderboard, request)


def test_leaderboard_groups_runs_without_a_model_type_and_empty_scopes(stubs: Stubs) -> None:
    experiment = new_experiment(stubs.tracker)
    request = pb.GetLeaderboardRequest(
        experiment_ids=[experiment.experiment_id], metric="acc", group_by=pb.GROUP_BY_MODEL_TYPE
    )
    assert not stubs.analytics.GetLeaderboard(request).groups
    typed = add_run(stubs.tracker, experiment, params={}, final={"acc": 0.5}, model_type="a")
    untyped = add_run(stubs.tracker, experiment, params={}, final={"acc": 0.7})
    board = stubs.analytics.GetLeaderboard(request)
    assert [(g.group, g.run_count) for g in board.groups] == [("", 1), ("a", 1)]
    assert [e.run.run_id for e in board.groups[0].entries] == [untyped.run_id]
    assert [e.run.run_id for e in board.groups[1].entries] == [typed.run_id]
