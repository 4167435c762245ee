"""`cairn analytics ...` against a real tracker and analytics service, through the real click
group with CliRunner; data comes from the SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import cairn
from cairn.cli import analytics as analytics_cli
from cairn.cli.main import cli

from cairn_testing import ServerThread


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, f"cairn {' '.join(args)} failed:\n{result.output}"
    return result


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


@pytest.fixture
def stack(analytics_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> ServerThread:
    monkeypatch.setenv("CAIRN_TRACKING_URI", analytics_server.address("tracker"))
    monkeypatch.setenv("CAIRN_ANALYTICS_URI", analytics_server.address("analytics"))
    monkeypatch.delenv("CAIRN_TOKEN", raising=False)
    monkeypatch.setattr(analytics_cli, "console", Console(width=250))
    return analytics_server


@pytest.fixture
def sweep(stack: ServerThread) -> Iterator[list[str]]:
    """ranking-sweep: 12 finished runs; rmse falls with lr's index, depth alternates."""
    run_ids = []
    with cairn.Tracker(stack.address("tracker"), capture_environment=False) as tracker:
        tracker.create_experiment("ranking-sweep")
        for i in range(12):
            run = tracker.start_run(
                "ranking-sweep", run_name=f"r{i:02d}", model_type="ranking", dataset_id="movies"
            )
            tracker.log_params({"lr": str(0.001 * (i % 4 + 1)), "depth": str(2 + i % 5)})
            for epoch in range(3):
                tracker.log_metrics({"loss": 1.0 / (epoch + 1) + i / 100}, step=epoch)
            tracker.log_metrics({"rmse": 1.0 - (i % 4) / 10 + i / 1000}, step=3)
            tracker.end_run()
            run_ids.append(run.run_id)
    yield run_ids


def test_leaderboard_table_and_json(sweep: list[str]) -> None:
    board = as_json("analytics", "leaderboard", "ranking-sweep", "--metric", "rmse", "--top-k", "3")
    assert board["direction"] == "DIRECTION_MINIMIZE"
    entries = board["groups"][0]["entries"]
    # rmse = 1 - (i % 4) / 10 + i / 1000: lowest for i = 3, 7, 11 (in that order).
    assert [e["run"]["run_id"] for e in entries] == [sweep[3], sweep[7], sweep[11]]
    assert entries[0]["run"]["status"] == "RUN_STATUS_FINISHED"
    assert entries[0]["run"]["start_time"].endswith("Z")
    table = ok("analytics", "leaderboard", "ranking-sweep", "--metric", "rmse").stdout
    assert "Leaderboard: rmse (lower is better), 12 runs" in table
    assert "r03" in table


def test_dashboard_insights_suggest_and_compare(sweep: list[str]) -> None:
    dashboard = as_json(
        "analytics", "dashboard", "ranking-sweep", "--metric", "rmse", "--model-type", "ranking"
    )
    assert dashboard["kpis"][0]["run_count"] == 12
    assert dashboard["states"]["finished"] == 12
    assert dashboard["epoch_heatmap"]["column_labels"] == ["0", "1", "2"]
    text = ok("analytics", "dashboard", "ranking-sweep", "--metric", "rmse").stdout
    assert "KPIs: rmse" in text and "12 finished" in text

    insights = as_json("analytics", "insights", "ranking-sweep", "--metric", "rmse")
    assert insights["run_count"] == 12
    assert insights["params"][0]["key"] == "lr"
    text = ok("analytics", "insights", "-", "--metric", "rmse", "--method", "fanova").stdout
    assert "Hyperparameter importance" in text and "lr" in text

    suggestions = as_json(
        "analytics", "suggest", "ranking-sweep", "--metric", "rmse", "--count", "2"
    )
    assert len(suggestions["suggestions"]) == 2
    text = ok("analytics", "suggest", "ranking-sweep", "--metric", "rmse").stdout
    assert "based on run" in text

    comparison = as_json("analytics", "compare", sweep[0], sweep[3][:8])
    assert [r["run_id"] for r in comparison["runs"]] == [sweep[0], sweep[3]]
    text = ok("analytics", "compare", sweep[0], sweep[3]).stdout
    assert "params.lr *" in text and "(best)" in text


def test_errors_are_one_clean_line(stack: ServerThread) -> None:
    missing = invoke("analytics", "leaderboard", "no-such-experiment", "--metric", "x")
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "no-such-experiment" in missing.output
    bad = invoke("analytics", "leaderboard", "-", "--metric", "x", "--filter", "params.lr >")
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "filter" in bad.output
    down = invoke(
        "analytics", "--analytics-uri", "127.0.0.1:1", "leaderboard", "-", "--metric", "x"
    )
    assert down.exit_code == 1 and "Traceback" not in down.output
    assert "cairn up" in down.output
