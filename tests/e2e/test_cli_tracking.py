"""`cairn experiments|runs|gc` against a real tracker (SQLite and PostgreSQL), as users run them.

Data is created through the SDK; commands run through the real click group (`cairn.cli.main.cli`)
with CliRunner, plus one real `python -m cairn.cli` process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from sqlalchemy import create_engine, text

import cairn
from cairn.cli import tracking
from cairn.cli.main import cli
from cairn.cli.tracking import parse_duration

from cairn_testing import ServerThread, make_settings, migrated_database, sqlite_url

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, f"cairn {' '.join(args)} failed:\n{result.output}"
    return result


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def fails(*args: str) -> str:
    """Run a command that must fail cleanly: exit 1, one message, no traceback."""
    result = invoke(*args)
    assert result.exit_code == 1, f"expected exit 1, got {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    return result.output


@dataclass
class Seeded:
    experiment_id: str
    runs: dict[str, cairn.Run]  # by run name: xgb-0, xgb-1, xgb-2
    other_experiment_id: str
    other_run: cairn.Run


@pytest.fixture
def sdk(tracker_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[cairn.Tracker]:
    monkeypatch.setenv("CAIRN_TRACKING_URI", tracker_server.address())
    monkeypatch.delenv("CAIRN_TOKEN", raising=False)
    # Wide tables, so no cell wraps in assertions (however the process's terminal is set up).
    monkeypatch.setattr(tracking, "console", Console(width=250))
    with cairn.Tracker(tracker_server.address(), capture_environment=False) as tracker:
        yield tracker


@pytest.fixture
def seeded(sdk: cairn.Tracker, tmp_path: Path) -> Seeded:
    """risk_prediction: three finished xgboost runs (lr differs, depth does not); other: one."""
    sdk.create_experiment("risk_prediction", "Suicide risk models", {"project": "mh"})
    runs: dict[str, cairn.Run] = {}
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for i, lr in enumerate([0.1, 0.01, 0.001]):
        name = f"xgb-{i}"
        run = sdk.start_run(
            "risk_prediction",
            run_name=name,
            tags={"team": "ds", "seed": str(i)},
            dataset_id="survey-v1",
            model_type="xgboost",
        )
        sdk.log_params({"learning_rate": lr, "max_depth": 8})
        for step in range(5):
            sdk.log_metrics(
                {"accuracy": 0.70 + i * 0.1 + step * 0.01, "val_loss": 0.9 - i * 0.2 - step * 0.01},
                step=step,
                timestamp_ms=base + step,
            )
        sdk.end_run()
        runs[name] = run
    other = sdk.create_experiment("other")
    other_run = sdk.start_run("other", run_name="lonely")
    sdk.end_run()
    sdk.flush()
    fetched = {name: sdk.get_run(run.run_id) for name, run in runs.items()}
    return Seeded(fetched["xgb-0"].experiment_id, fetched, other.experiment_id, other_run)


# ---------------------------------------------------------------------- experiments


def test_experiments_list_and_show(seeded: Seeded) -> None:
    data = as_json("experiments", "list")
    listed = {e["name"]: e for e in data["experiments"]}
    assert [e["name"] for e in data["experiments"]] == ["other", "risk_prediction"]  # newest first
    risk = listed["risk_prediction"]
    assert risk["experiment_id"] == seeded.experiment_id
    assert risk["run_count"] == 3
    assert risk["state"] == "ACTIVE"
    assert risk["description"] == "Suicide risk models"
    assert risk["tags"] == {"project": "mh"}

    filtered = as_json("experiments", "list", "--filter", "display_name LIKE 'risk%'")
    assert [e["experiment_id"] for e in filtered["experiments"]] == [seeded.experiment_id]

    table = ok("experiments", "list").stdout
    assert "risk_prediction" in table and seeded.experiment_id in table and "active" in table

    shown = as_json("experiments", "show", "risk_prediction")
    assert shown["experiment_id"] == seeded.experiment_id
    assert shown["tags"] == {"project": "mh"}
    # The most recent runs first.
    assert [r["run_name"] for r in shown["recent_runs"]] == ["xgb-2", "xgb-1", "xgb-0"]
    assert shown["recent_runs"][0]["run_id"] == seeded.runs["xgb-2"].run_id
    # By id as well as by name.
    assert as_json("experiments", "show", seeded.experiment_id)["name"] == "risk_prediction"

    table = ok("experiments", "show", "risk_prediction").stdout
    assert "Suicide risk models" in table
    assert "project" in table and "mh" in table
    assert seeded.runs["xgb-1"].run_id[:8] in table
    assert seeded.runs["xgb-1"].run_id not in table  # short ids in tables


def test_experiments_show_lists_only_the_ten_most_recent_runs(sdk: cairn.Tracker) -> None:
    for i in range(12):
        sdk.start_run("busy", run_name=f"r{i:02d}")
        sdk.end_run()
    shown = as_json("experiments", "show", "busy")
    assert shown["run_count"] == 12
    assert [r["run_name"] for r in shown["recent_runs"]] == [f"r{i:02d}" for i in range(11, 1, -1)]


def test_experiments_create_delete_restore(sdk: cairn.Tracker) -> None:
    created = as_json(
        "experiments",
        "create",
        "churn",
        "--description",
        "who leaves",
        "--tag",
        "team=growth",
        "--tag",
        "tier=1",
    )
    assert created["name"] == "churn"
    assert created["description"] == "who leaves"
    assert created["tags"] == {"team": "growth", "tier": "1"}
    assert sdk.get_experiment("churn").experiment_id == created["experiment_id"]

    assert "already" in fails("experiments", "create", "churn").lower()
    assert "key=value" in invoke("experiments", "create", "x", "--tag", "novalue").output

    message = ok("experiments", "delete", "churn").stdout
    assert "cairn experiments restore" in message
    assert [e["name"] for e in as_json("experiments", "list")["experiments"]] == []
    everything = as_json("experiments", "list", "--all")["experiments"]
    assert [(e["name"], e["state"]) for e in everything] == [("churn", "DELETED")]

    restored = as_json("experiments", "restore", created["experiment_id"])
    assert restored["state"] == "ACTIVE"
    assert [e["name"] for e in as_json("experiments", "list")["experiments"]] == ["churn"]


# ---------------------------------------------------------------------- runs list


def test_runs_list_orders_filters_and_chooses_columns(seeded: Seeded) -> None:
    ids = {name: run.run_id for name, run in seeded.runs.items()}
    data = as_json("runs", "list", "risk_prediction", "--order-by", "metrics.accuracy DESC")
    assert [r["run_id"] for r in data["runs"]] == [ids["xgb-2"], ids["xgb-1"], ids["xgb-0"]]
    assert data["experiment"] == {"experiment_id": seeded.experiment_id, "name": "risk_prediction"}
    assert data["metric_columns"] == ["accuracy", "val_loss"]
    assert data["param_columns"] == ["learning_rate"]  # max_depth is the same everywhere
    assert data["truncated"] is False
    best = data["runs"][0]
    assert best["run_name"] == "xgb-2"
    assert best["status"] == "FINISHED"
    assert best["model_type"] == "xgboost"
    assert best["version"] == 3
    assert best["params"] == {"learning_rate": "0.001", "max_depth": "8"}
    assert best["metrics"]["accuracy"] == pytest.approx(0.94)
    assert best["tags"] == {"team": "ds", "seed": "2"}

    ascending = as_json("runs", "list", "risk_prediction", "--order-by", "metrics.val_loss ASC")
    assert [r["run_name"] for r in ascending["runs"]] == ["xgb-2", "xgb-1", "xgb-0"]

    filtered = as_json(
        "runs",
        "list",
        "risk_prediction",
        "--filter",
        "params.learning_rate = '0.01' OR metrics.accuracy < 0.75",
    )
    assert sorted(r["run_name"] for r in filtered["runs"]) == ["xgb-0", "xgb-1"]

    limited = as_json("runs", "list", seeded.experiment_id, "--max", "2")
    assert [r["run_name"] for r in limited["runs"]] == ["xgb-2", "xgb-1"]  # newest first
    assert limited["truncated"] is True

    chosen = as_json(
        "runs", "list", "risk_prediction", "--metric", "val_loss", "--param", "max_depth"
    )
    assert chosen["metric_columns"] == ["val_loss"]
    assert chosen["param_columns"] == ["max_depth"]

    table = ok("runs", "list", "risk_prediction", "--order-by", "metrics.accuracy DESC").stdout
    for header in (
        "run id",
        "name",
        "status",
        "start",
        "version",
        "model_type",
        "accuracy",
        "val_loss",
        "params.learning_rate",
    ):
        assert header in table
    assert "params.max_depth" not in table
    lines = [line for line in table.splitlines() if "xgb-" in line]
    assert [line.split("│")[1].strip() for line in lines] == [
        ids["xgb-2"][:8],
        ids["xgb-1"][:8],
        ids["xgb-0"][:8],
    ]
    assert ids["xgb-2"] not in table
    assert "0.001" in lines[0] and "xgboost" in lines[0] and "FINISHED" in lines[0]

    table = ok("runs", "list", "risk_prediction", "--max", "1").stdout
    assert "raise --max" in table


# ---------------------------------------------------------------------- runs show


def test_runs_show_everything(sdk: cairn.Tracker, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"\x00model" * 500)
    with cairn.Tracker(capture_environment=True) as capturing:
        run = capturing.start_run(
            "show",
            run_name="full",
            tags={"stage": "dev"},
            note="PUBLISH: best model",
            dataset_id="ds-7",
            dataset_name="survey",
            model_type="rf",
            job_id="job-1",
        )
        capturing.log_params({"n_estimators": 100})
        capturing.log_metrics({"f1": 0.5}, step=1)
        capturing.log_metrics({"f1": 0.8}, step=2)
        capturing.log_artifact(model, "model", artifact_path="models/model.pkl")
        capturing.end_run("FINISHED")
    stored = sdk.get_run(run.run_id)

    data = as_json("runs", "show", run.run_id)
    assert data["run_id"] == run.run_id
    assert data["name"] == f"experiments/{run.experiment_id}/runs/{run.run_id}"
    assert data["experiment_name"] == "show"
    assert data["run_name"] == "full"
    assert data["status"] == "FINISHED"
    assert data["note"] == "PUBLISH: best model"
    assert data["params"] == {"n_estimators": "100"}
    assert data["metrics"] == {"f1": 0.8}
    assert data["metric_steps"] == {"f1": 2}
    assert data["tags"] == {"stage": "dev"}
    assert (data["dataset_id"], data["dataset_name"], data["model_type"], data["job_id"]) == (
        "ds-7",
        "survey",
        "rf",
        "job-1",
    )
    assert data["version"] == 1
    assert data["start_time"] == stored.start_time.isoformat()  # type: ignore[union-attr]
    assert data["end_time"] == stored.end_time.isoformat()  # type: ignore[union-attr]
    digest = stored.artifacts[0].sha256
    assert data["artifacts"] == [
        {
            "path": "models/model.pkl",
            "artifact_type": "model",
            "size_bytes": 3000,
            "sha256": digest,
            "created": data["artifacts"][0]["created"],
        }
    ]
    environment = data["environment"]
    assert environment["python_version"] == stored.environment.python_version  # type: ignore[union-attr]
    assert "click==" in environment["pip_freeze"].lower()
    assert environment["git_commit"] == stored.git_commit

    # A prefix and a resource name find the same run.
    assert as_json("runs", "show", run.run_id[:6])["run_id"] == run.run_id
    assert as_json("runs", "show", stored.name)["run_id"] == run.run_id

    table = ok("runs", "show", run.run_id[:8]).stdout
    for expected in (
        "PUBLISH: best model",
        "n_estimators",
        "models/model.pkl",
        digest[:12],
        "2.9 KiB",
        "ds-7",
        "stage",
        "Environment",
        "FINISHED",
    ):
        assert expected in table, expected
    assert digest not in table
    assert "click==" not in table.lower()  # pip freeze only in --json


# ---------------------------------------------------------------------- run references


def _set_run_id(server: ServerThread, old: str, new: str) -> None:
    """Give a bare run (no params, tags, metrics or environment yet) a chosen id."""
    engine = create_engine(server.settings.database_url_for("tracker"))
    try:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE runs SET run_id = :new WHERE run_id = :old"), {"new": new, "old": old}
            )
    finally:
        engine.dispose()


def test_run_prefix_resolution(sdk: cairn.Tracker, tracker_server: ServerThread) -> None:
    stem = uuid.uuid4().hex[:6]
    ids = [stem + "a" + uuid.uuid4().hex[:25], stem + "b" + uuid.uuid4().hex[:25]]
    for index, new_id in enumerate(ids):
        run = sdk.start_run("prefixes", run_name=f"p{index}", capture_environment=False)
        _set_run_id(tracker_server, run.run_id, new_id)
        sdk.end_run(run_id=new_id)

    output = fails("runs", "show", stem)
    assert "ambiguous" in output
    assert ids[0] in output and ids[1] in output
    assert as_json("runs", "show", stem + "a")["run_name"] == "p0"
    assert as_json("runs", "show", ids[1][:10])["run_name"] == "p1"
    assert as_json("runs", "show", ids[1])["run_name"] == "p1"
    # Deleted runs are still found (to restore them).
    ok("runs", "delete", stem + "b")
    assert as_json("runs", "show", stem + "b")["deleted"] is True
    ok("runs", "restore", stem + "b")

    assert "at least 6" in fails("runs", "show", stem[:5])
    assert "no run with id or id prefix" in fails("runs", "show", "ffffffffff00")
    assert "not a run id" in fails("runs", "show", "abc%def")


# ---------------------------------------------------------------------- compare


def test_runs_compare(seeded: Seeded) -> None:
    ids = [seeded.runs[name].run_id for name in ("xgb-0", "xgb-1", "xgb-2")]
    data = as_json("runs", "compare", ids[0][:8], ids[1], ids[2][:7])
    assert [r["run_id"] for r in data["runs"]] == ids
    params = {p["key"]: p for p in data["params"]}
    assert params["learning_rate"] == {
        "key": "learning_rate",
        "values": ["0.1", "0.01", "0.001"],
        "differs": True,
    }
    assert params["max_depth"] == {"key": "max_depth", "values": ["8", "8", "8"], "differs": False}
    metrics = {m["key"]: m for m in data["metrics"]}
    assert metrics["accuracy"]["goal"] == "max"
    assert metrics["accuracy"]["best_run_ids"] == [ids[2]]
    assert metrics["accuracy"]["values"] == pytest.approx([0.74, 0.84, 0.94])
    assert metrics["val_loss"]["goal"] == "min"  # loss: lower is better
    assert metrics["val_loss"]["best_run_ids"] == [ids[2]]

    only = as_json("runs", "compare", ids[0], ids[1], "--metric", "val_loss")
    assert [m["key"] for m in only["metrics"]] == ["val_loss"]
    assert only["metrics"][0]["best_run_ids"] == [ids[1]]

    table = ok("runs", "compare", ids[0], ids[1], ids[2]).stdout
    assert "params.learning_rate ≠" in table
    assert "params.max_depth ≠" not in table
    accuracy_row = next(line for line in table.splitlines() if "metrics.accuracy" in line)
    cells = [c.strip() for c in accuracy_row.split("│")[2:-1]]
    assert cells == ["0.74", "0.84", "0.94 *"]
    assert ids[0][:8] in table and "xgb-0" in table

    assert "at least two" in invoke("runs", "compare", ids[0]).output


# ---------------------------------------------------------------------- annotate and delete


def test_note_tag_delete_restore(seeded: Seeded) -> None:
    run_id = seeded.runs["xgb-2"].run_id
    noted = as_json("runs", "note", run_id[:8], "PUBLISH: best model")
    assert noted == {"run_id": run_id, "run_name": "xgb-2", "note": "PUBLISH: best model"}
    assert as_json("runs", "show", run_id)["note"] == "PUBLISH: best model"
    filtered = as_json("runs", "list", "risk_prediction", "--filter", "note LIKE 'PUBLISH%'")
    assert [r["run_id"] for r in filtered["runs"]] == [run_id]

    tagged = as_json("runs", "tag", run_id, "stage=prod", "owner=ana", "--remove", "seed")
    assert tagged["tags"] == {"team": "ds", "stage": "prod", "owner": "ana"}
    assert "stage" in ok("runs", "tag", run_id, "stage=staging").stdout
    assert as_json("runs", "show", run_id)["tags"]["stage"] == "staging"

    message = ok("runs", "delete", run_id).stdout
    assert f"cairn runs restore {run_id}" in message
    remaining = as_json("runs", "list", "risk_prediction")["runs"]
    assert run_id not in [r["run_id"] for r in remaining]
    everything = as_json("runs", "list", "risk_prediction", "--all")["runs"]
    assert [r["deleted"] for r in everything if r["run_id"] == run_id] == [True]

    assert as_json("runs", "restore", run_id[:8]) == {
        "run_id": run_id,
        "run_name": "xgb-2",
        "deleted": False,
    }
    assert len(as_json("runs", "list", "risk_prediction")["runs"]) == 3


# ---------------------------------------------------------------------- errors


def test_errors_are_one_clean_line(seeded: Seeded) -> None:
    output = fails("runs", "show", "0123456789abcdef0123456789abcdef")
    assert "error" in output and "0123456789abcdef0123456789abcdef" in output

    output = fails("runs", "list", "risk_prediction", "--filter", "metrics.accuracy >> 0.5")
    assert "position 18" in output
    assert "^" in output

    output = fails("runs", "list", "risk_prediction", "--order-by", "metrics.accuracy SIDEWAYS")
    assert "position" in output

    assert "no experiment named or with id 'nope'" in fails("runs", "list", "nope")
    assert "no experiment" in fails("experiments", "show", "nope")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_tracker_gives_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv("CAIRN_TRACKING_URI", address)
    output = fails("experiments", "list")
    assert f"cannot reach the Cairn tracker at {address}" in output
    assert "cairn up" in output


def test_tracking_uri_option_wins_over_the_environment(
    seeded: Seeded, tracker_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = tracker_server.address()
    monkeypatch.setenv("CAIRN_TRACKING_URI", "127.0.0.1:1")
    run_id = seeded.runs["xgb-0"].run_id
    assert as_json("runs", "--tracking-uri", address, "show", run_id)["run_id"] == run_id
    assert as_json("runs", "show", run_id, "--tracking-uri", address)["run_id"] == run_id
    listed = as_json("experiments", "list", "--tracking-uri", address)["experiments"]
    assert len(listed) == 2
    assert as_json("gc", "--older-than", "1d", "--tracking-uri", address)["purged_run_count"] == 0


# ---------------------------------------------------------------------- gc


def test_parse_duration() -> None:
    assert parse_duration("0") == 0
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration("2w") == 14 * 86400
    for bad in ("", "30", "d", "1x", "-1d", "1d-"):
        with pytest.raises(Exception, match="unit"):
            parse_duration(bad)


def test_gc_purges_deleted_runs_and_reports_freed_bytes(sdk: cairn.Tracker, tmp_path: Path) -> None:
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(5000))
    doomed = sdk.start_run("gc", run_name="doomed")
    sdk.log_artifact(blob, "model")
    sdk.end_run()
    kept = sdk.start_run("gc", run_name="kept")
    sdk.log_artifact(blob, "model")
    sdk.end_run()
    ok("runs", "delete", doomed.run_id)

    recent = as_json("gc", "--older-than", "30d")
    assert (recent["purged_run_count"], recent["freed_bytes"]) == (0, 0)

    dry = as_json("gc", "--older-than", "0", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["purged_run_ids"] == [doomed.run_id]
    assert dry["freed_bytes"] == 5000
    assert as_json("runs", "list", "gc", "--all")["runs"][-1]["run_id"] == doomed.run_id

    table = ok("gc", "--older-than", "0").stdout
    assert "Purged 0 experiments and 1 run" in table
    assert "4.9 KiB" in table
    assert doomed.run_id in table
    assert "no run with id" in fails("runs", "show", doomed.run_id)
    remaining = as_json("runs", "list", "gc", "--all")["runs"]
    assert [r["run_id"] for r in remaining] == [kept.run_id]

    assert as_json("gc", "--older-than", "0")["purged_run_count"] == 0
    assert "unit" in invoke("gc", "--older-than", "30").output


# ---------------------------------------------------------------------- the console entry


@pytest.fixture
def sqlite_tracker(tmp_path: Path) -> Iterator[ServerThread]:
    url = sqlite_url(tmp_path)
    with migrated_database(url):
        pass
    server = ServerThread(make_settings(url, tmp_path / "data")).start()
    yield server
    server.stop()


def test_console_entry_lists_runs(sqlite_tracker: ServerThread) -> None:
    with cairn.Tracker(sqlite_tracker.address(), capture_environment=False) as sdk:
        run = sdk.start_run("console", run_name="from-sdk")
        sdk.log_metrics({"acc": 0.5}, step=1)
        sdk.end_run()
    env = {**os.environ, "CAIRN_TRACKING_URI": sqlite_tracker.address()}
    env.pop("CAIRN_TOKEN", None)
    process = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "runs", "list", "console", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    data = json.loads(process.stdout)
    assert [(r["run_id"], r["run_name"], r["metrics"]) for r in data["runs"]] == [
        (run.run_id, "from-sdk", {"acc": 0.5})
    ]
