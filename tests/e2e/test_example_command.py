"""The README's main job, `cairn example`, as a user runs it: a real process, a real stack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cairn_example_trains_a_sweep_and_prints_a_leaderboard(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "CAIRN_TRACKER_PORT": str(port),
        "CAIRN_TRACKER_METRICS_PORT": "0",
        "CAIRN_GATEWAY_PORT": str(_free_port()),
        "CAIRN_ANALYTICS_PORT": str(_free_port()),
        "CAIRN_SCHEDULER_PORT": str(_free_port()),
        "CAIRN_LOGPROXY_PORT": str(_free_port()),
    }
    env.pop("CAIRN_TRACKING_URI", None)
    data_dir = tmp_path / "cairn-data"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cairn.cli",
            "example",
            "--data-dir",
            str(data_dir),
            "--epochs",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    board = report["leaderboard"]
    assert len(board) == 9
    accuracies = [run["metrics"]["accuracy"] for run in board]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(0.5 < a <= 1.0 for a in accuracies)
    best = board[0]
    assert best["status"] == "FINISHED"
    assert {a["path"] for a in best["artifacts"]} == {"model/model.pkl", "metrics.csv"}
    assert {r["model_type"] for r in board} == {"logistic_regression", "linear_svm", "perceptron"}
    assert sorted(r["version"] for r in board if r["model_type"] == "perceptron") == [1, 2, 3]
    # The analytics service of the same stack analyzed the sweep (its 9 runs only).
    insights = report["analytics"]["insights"]
    assert insights["run_count"] == 9 and insights["metric"] == "accuracy"
    assert {p["key"] for p in insights["params"]} >= {"model_name", "learning_rate"}
    (suggestion,) = report["analytics"]["suggestions"]
    assert suggestion["changed_params"]
    best_accuracy = best["metrics"]["accuracy"]
    assert suggestion["base_run_id"] in {
        r["run_id"] for r in board if r["metrics"]["accuracy"] == best_accuracy
    }
    # The stack it started is gone again; its data stays.
    assert not (data_dir / "cairn.pid").exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert (data_dir / "cairn.db").exists()
    assert any((data_dir / "artifacts").rglob("*"))

    # A second run against the same data dir adds a new sweep; versions keep counting.
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "cairn.cli",
            "example",
            "--data-dir",
            str(data_dir),
            "--epochs",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["sweep_id"] != report["sweep_id"]
    assert sorted(
        r["version"] for r in second["leaderboard"] if r["model_type"] == "perceptron"
    ) == [4, 5, 6]
