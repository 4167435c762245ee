"""bench/ must keep working: run it in --smoke mode (tiny sizes) and check its output shape.
Speed itself is never asserted here; `make bench` prints the figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_bench(*args: str) -> dict[str, Any]:
    """`python -m bench ARGS`; its JSON report (the test fails with its stderr otherwise)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_tracker_bench_runs_in_smoke_mode(database: str) -> None:
    report = run_bench("--smoke", "--json", "--database", database)
    assert report["database"] == database
    figures = report["figures"]
    expected = {
        "runs_per_s",
        "ingest_points_per_s",
        "log_metric_calls_per_s",
        "log_metric_p50_ms",
        "log_metric_p99_ms",
        "search_p50_ms",
        "search_p99_ms",
        "history_p50_ms",
        "server_rss_mb",
    }
    assert set(figures) == expected
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in figures.values())


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_comparison_runs_in_smoke_mode_without_mlflow(database: str) -> None:
    """`python -m bench compare` with tiny sizes and no MLflow server to install: Cairn's SDK
    and the MLflow client against Cairn's gateway; on PostgreSQL also the COPY limit."""
    report = run_bench(
        *("compare", "--smoke", "--json"), *("--without-mlflow", "--database", database)
    )
    assert set(report["figures"]) == {"cairn", "cairn_mlflow"}
    expected = {
        "runs_per_s",
        "log_metric_calls_per_s",
        "log_metric_p50_ms",
        "log_metric_p99_ms",
        "ingest_points_per_s",
        "ingest_4_writers_points_per_s",
        "search_p50_ms",
        "search_p99_ms",
        # Over 300 runs bulk-seeded into Cairn's schema (bench/seed.py).
        "search_300_p50_ms",
        "history_p50_ms",
        "server_rss_mb",
    }
    # Cairn's SDK alone also reads a long history (1,000,000 points; 5,000 in smoke mode),
    # builds every point of the history as an object, and times the gRPC health check (the
    # gateway's health asks the services behind it: no no-op request for the MLflow client).
    sdk_only = {"history_1m_p50_ms", "history_points_p50_ms", "noop_request_p50_ms"}
    assert set(report["figures"]["cairn"]) == expected | sdk_only
    assert set(report["figures"]["cairn_mlflow"]) == expected
    for figures in report["figures"].values():
        assert all(math.isfinite(v) and v > 0 for v in figures.values())
    assert report["ratios_cairn_sdk_vs_mlflow"]["history_1m_p50_ms"] is None
    if database == "postgres":
        limit = report["limit"]
        assert limit["copy_points_per_s"] > 0
        assert limit["cairn_ingest_share_of_copy"] == pytest.approx(
            report["figures"]["cairn"]["ingest_points_per_s"] / limit["copy_points_per_s"]
        )
    else:
        assert report["limit"] == {}


def test_analytics_bench_runs_in_smoke_mode() -> None:
    report = run_bench("analytics", "--smoke", "--json", "--database", "sqlite")
    assert report["database"] == "sqlite"
    calls = {
        "dashboard",
        "dashboard_retrieval",
        "leaderboard",
        "leaderboard_by_model_type",
        "insights",
        "suggest",
        "query_run_table",
    }
    assert set(report["samples"]) == calls
    assert report["seeding"]["runs"] == report["sizes"]["runs"] == 200
    figures = report["figures"]
    expected = {
        "seed_runs_per_s",
        *(f"{call}_{p}_ms" for call in calls for p in ("p50", "p95")),
        "tracker_rss_mb",
        "analytics_rss_mb",
    }
    assert set(figures) == expected
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in figures.values())
