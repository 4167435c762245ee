"""`cairn runs export` / `cairn runs import`: a bundle made on one tracker (SQLite or
PostgreSQL) is imported into a second, fresh tracker and everything round-trips, once only."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import cairn
from cairn.cli import tracking
from cairn.cli.bundle import FORMAT, batch_id
from cairn.cli.main import cli
from cairn.tracker.v1 import run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import ServerThread, make_settings, migrated_database, sqlite_url

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok_json(*args: str) -> Any:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, f"cairn {' '.join(args)} failed:\n{result.output}"
    return json.loads(result.stdout)


def fails(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 1, f"expected exit 1, got {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def target(tmp_path: Path) -> Iterator[ServerThread]:
    """A second tracker on its own fresh SQLite database."""
    directory = tmp_path / "target"
    directory.mkdir()
    url = sqlite_url(directory)
    with migrated_database(url):
        pass
    server = ServerThread(make_settings(url, directory / "data")).start()
    yield server
    server.stop()


@dataclass
class Source:
    address: str
    experiment_id: str
    runs: dict[str, cairn.Run]  # by name
    files: dict[str, bytes]  # artifact path -> content


def history(tracker: cairn.Tracker, run_name: str, key: str) -> list[tuple[int, Any, int]]:
    """Every (step, value, timestamp ms) of a metric, NaN/inf as strings for comparison."""
    points: list[tuple[int, Any, int]] = []
    token = ""
    while True:
        response = tracker.stub.ListMetricHistory(
            pb.ListMetricHistoryRequest(run=run_name, metric_key=key, page_token=token),
            metadata=tracker.metadata,
        )
        for p in response.points:
            value: Any = p.value if math.isfinite(p.value) else repr(p.value)
            points.append((p.step, value, p.timestamp.ToMilliseconds()))
        token = response.next_page_token
        if not token:
            return points


def raw_run(tracker: cairn.Tracker, run_id: str) -> run_pb2.Run:
    run: run_pb2.Run = tracker.stub.GetRun(
        pb.GetRunRequest(name=f"experiments/-/runs/{run_id}"), metadata=tracker.metadata
    )
    return run


@pytest.fixture
def source(tracker_server: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Source:
    monkeypatch.setenv("CAIRN_TRACKING_URI", tracker_server.address())
    monkeypatch.delenv("CAIRN_TOKEN", raising=False)
    monkeypatch.setattr(tracking, "console", Console(width=250))
    files = {
        "models/model.pkl": os.urandom(300_000),
        "plots/roc curve.png": b"\x89PNG\r\n fake plot",
    }
    for relative, content in files.items():
        (tmp_path / relative.replace("/", "_")).write_bytes(content)
    with cairn.Tracker(tracker_server.address(), capture_environment=True) as sdk:
        sdk.create_experiment("risk", "Risk models", {"project": "mh", "owner": "ana"})
        best = sdk.start_run(
            "risk",
            run_name="best",
            tags={"team": "ds", "stage": "prod"},
            note="PUBLISH: best model",
            dataset_id="survey-v2",
            dataset_name="Survey",
            model_type="xgboost",
            pipeline_id="pipe-1",
        )
        sdk.log_params({"learning_rate": 0.05, "max_depth": 8, "features": ["a", "b"]})
        for step in range(300):
            value = 1.0 / (step + 1)
            if step == 17:
                value = math.nan
            elif step == 18:
                value = math.inf
            elif step == 19:
                value = -math.inf
            sdk.log_metrics({"loss": value}, step=step, timestamp_ms=BASE_MS + step * 10)
        for step in range(50):
            sdk.log_metrics({"accuracy": 0.5 + step / 100}, step=step, timestamp_ms=BASE_MS + step)
        for relative in files:
            kind = "model" if relative.startswith("models/") else "plot"
            sdk.log_artifact(tmp_path / relative.replace("/", "_"), kind, artifact_path=relative)
        sdk.end_run("FINISHED")
        failed = sdk.start_run("risk", run_name="crashed", model_type="xgboost")
        sdk.log_params({"learning_rate": 0.5})
        sdk.log_metrics({"loss": 9.0}, step=0, timestamp_ms=BASE_MS)
        sdk.end_run("FAILED")
        running = sdk.start_run("risk", run_name="still-going", capture_environment=False)
        sdk.flush()
        runs = {r.run_name: r for r in (sdk.get_run(x.run_id) for x in (best, failed, running))}
    return Source(tracker_server.address(), best.experiment_id, runs, files)


def bundle_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as archive:
        return {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }


def write_bundle(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:  # type: ignore[assignment]
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return path


def test_export_import_round_trip_once(
    source: Source, target: ServerThread, tmp_path: Path
) -> None:
    out = tmp_path / "risk.tar.gz"
    exported = ok_json("runs", "export", "risk", "--out", str(out))
    assert exported["format"] == FORMAT
    assert exported["run_count"] == 3
    assert exported["metric_points"] == 300 + 50 + 1
    assert exported["artifact_count"] == 2
    assert exported["artifact_bytes"] == sum(len(c) for c in source.files.values())
    assert exported["file_bytes"] == out.stat().st_size
    assert not (tmp_path / "risk.tar.gz.partial").exists()

    members = bundle_members(out)
    best = source.runs["best"]
    assert set(members) == {
        "manifest.json",
        *(f"metrics/{r.run_id}.jsonl" for r in source.runs.values()),
        *(f"artifacts/{best.run_id}/{p}" for p in source.files),
    }
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "cairn-bundle/1"
    assert manifest["experiment"]["name"] == "risk"
    entry = next(r for r in manifest["runs"] if r["run_id"] == best.run_id)
    assert entry["metrics"] == {"accuracy": 50, "loss": 300}
    assert entry["lineage"]["dataset_id"] == "survey-v2"
    assert {a["path"]: a["artifact_type"] for a in entry["artifacts"]} == {
        "models/model.pkl": "model",
        "plots/roc curve.png": "plot",
    }
    lines = [json.loads(x) for x in members[f"metrics/{best.run_id}.jsonl"].splitlines()]
    loss = {line["step"]: line for line in lines if line["key"] == "loss"}
    assert (loss[17]["value"], loss[18]["value"], loss[19]["value"]) == (
        "NaN",
        "Infinity",
        "-Infinity",
    )
    assert loss[5] == {"key": "loss", "step": 5, "value": 1 / 6, "timestamp_ms": BASE_MS + 50}

    imported = ok_json("runs", "import", str(out), "--tracking-uri", target.address())
    assert imported["experiment"]["name"] == "risk"
    assert imported["experiment"]["created"] is True
    assert [r["result"] for r in imported["runs"]] == ["created"] * 3
    assert sum(r["stored_points"] for r in imported["runs"]) == 351
    by_source = {r["source_run_id"]: r for r in imported["runs"]}
    assert by_source[best.run_id]["uploaded_artifacts"] == 2
    # Versions are assigned anew by the target: (survey-v2, xgboost) and ("", xgboost).
    assert (by_source[best.run_id]["source_version"], by_source[best.run_id]["version"]) == (1, 1)

    with cairn.Tracker(target.address(), capture_environment=False) as dst:
        experiment = dst.get_experiment("risk")
        assert (experiment.description, experiment.tags) == (
            "Risk models",
            {"project": "mh", "owner": "ana"},
        )
        copies = {r.run_name: r for r in dst.search_runs("risk")}
        assert set(copies) == {"best", "crashed", "still-going"}
        with cairn.Tracker(source.address, capture_environment=False) as src:
            for name, original in source.runs.items():
                copy = dst.get_run(copies[name].run_id)
                assert copy.run_id != original.run_id
                assert copy.params == original.params
                assert copy.tags == original.tags
                assert copy.note == original.note
                assert copy.status == original.status
                assert copy.start_time == original.start_time
                assert copy.end_time == original.end_time
                assert copy.user == original.user
                for field in ("dataset_id", "dataset_name", "model_type", "pipeline_id"):
                    assert getattr(copy, field) == getattr(original, field), field
                assert copy.environment == original.environment
                assert set(copy.metrics) == set(original.metrics)
                for key in original.metrics:
                    assert history(dst, copy.name, key) == history(src, original.name, key)
                assert [
                    (a.path, a.artifact_type, a.size_bytes, a.sha256) for a in copy.artifacts
                ] == [(a.path, a.artifact_type, a.size_bytes, a.sha256) for a in original.artifacts]
        best_copy = dst.get_run(copies["best"].run_id)
        assert best_copy.status == "FINISHED" and best_copy.version == 1
        assert len(history(dst, best_copy.name, "loss")) == 300
        assert history(dst, best_copy.name, "loss")[17:20] == [
            (17, "nan", BASE_MS + 170),
            (18, "inf", BASE_MS + 180),
            (19, "-inf", BASE_MS + 190),
        ]
        downloads = tmp_path / "downloads"
        for relative, content in source.files.items():
            path = dst.download_artifact(best_copy.run_id, relative, downloads / relative)
            assert path.read_bytes() == content
        assert dst.get_run(copies["still-going"].run_id).end_time is None

        # Importing the same bundle again changes nothing.
        again = ok_json("runs", "import", str(out), "--tracking-uri", target.address())
        assert again["experiment"]["created"] is False
        assert [r["result"] for r in again["runs"]] == ["reused"] * 3
        assert [r["run_id"] for r in again["runs"]] == [r["run_id"] for r in imported["runs"]]
        assert sum(r["stored_points"] for r in again["runs"]) == 0
        assert sum(r["uploaded_artifacts"] for r in again["runs"]) == 0
        assert sum(r["skipped_artifacts"] for r in again["runs"]) == 2
        assert sum(r["new_params"] for r in again["runs"]) == 0
        assert len(dst.search_runs("risk")) == 3
        assert len(history(dst, best_copy.name, "loss")) == 300
        assert len(history(dst, best_copy.name, "accuracy")) == 50

        # A readable summary, naming the versions the target assigned.
        table = invoke("runs", "import", str(out), "--tracking-uri", target.address()).stdout
        assert "reused" in table and "assigned anew" in table and "(source 1)" in table

        # A run deleted in the target since is left alone, and the import says why.
        dst.delete_run(copies["crashed"].run_id)
        skipped = ok_json("runs", "import", str(out), "--tracking-uri", target.address())
        results = {r["run_name"]: (r["result"], r["message"]) for r in skipped["runs"]}
        assert results["crashed"][0] == "skipped"
        assert "cairn runs restore" in results["crashed"][1]
        assert results["best"] == ("reused", "")
        assert len(dst.search_runs("risk", include_deleted=True)) == 3
        dst.restore_run(copies["crashed"].run_id)

        # Into another experiment: new runs (the request ids include the target experiment).
        other = ok_json(
            "runs",
            "import",
            str(out),
            "--experiment",
            "risk-copy",
            "--tracking-uri",
            target.address(),
        )
        assert other["experiment"]["created"] is True
        assert [r["result"] for r in other["runs"]] == ["created"] * 3
        assert len(dst.search_runs("risk-copy")) == 3
        assert dst.get_experiment("risk-copy").tags == {}


def test_export_filter_and_no_artifacts(
    source: Source, target: ServerThread, tmp_path: Path
) -> None:
    out = tmp_path / "finished.tar.gz"
    exported = ok_json(
        "runs",
        "export",
        source.experiment_id,
        "--out",
        str(out),
        "--filter",
        "status = 'FINISHED'",
        "--no-artifacts",
    )
    best = source.runs["best"]
    assert exported["run_ids"] == [best.run_id]
    assert exported["artifacts_included"] is False
    members = bundle_members(out)
    assert set(members) == {"manifest.json", f"metrics/{best.run_id}.jsonl"}
    table = invoke("runs", "export", "risk", "--out", str(tmp_path / "all.tar.gz")).stdout
    assert "Exported 3 runs of risk" in table and "cairn runs import" in table

    imported = ok_json("runs", "import", str(out), "--tracking-uri", target.address())
    assert [(r["run_name"], r["status"], r["uploaded_artifacts"]) for r in imported["runs"]] == [
        ("best", "FINISHED", 0)
    ]
    with cairn.Tracker(target.address(), capture_environment=False) as dst:
        copy = dst.get_run(imported["runs"][0]["run_id"])
        assert copy.artifacts == []
        assert copy.params == best.params


def test_metric_batch_ids_are_deterministic() -> None:
    assert batch_id("run1", "loss", 0, 99) == batch_id("run1", "loss", 0, 99)
    ids = {
        batch_id("run1", "loss", 0, 99),
        batch_id("run1", "loss", 0, 98),
        batch_id("run1", "loss", 100, 199),
        batch_id("run2", "loss", 0, 99),
        batch_id("run1", "acc", 0, 99),
    }
    assert len(ids) == 5
    assert all(len(i) <= 128 for i in ids)


def test_a_newer_bundle_of_a_grown_run_adds_only_what_is_new(
    source: Source, target: ServerThread, tmp_path: Path
) -> None:
    going = source.runs["still-going"]
    uri = ("--tracking-uri", target.address())
    only = ("--filter", "run_name = 'still-going'")
    with cairn.Tracker(source.address, capture_environment=False) as src:
        for step in range(10):
            src.log_metrics({"loss": 1 / (step + 1)}, step=step, run_id=going.run_id)
        src.flush()
        first = tmp_path / "first.tar.gz"
        ok_json("runs", "export", "risk", "--out", str(first), *only)
        imported = ok_json("runs", "import", str(first), *uri)["runs"]
        assert [(r["result"], r["status"], r["stored_points"]) for r in imported] == [
            ("created", "RUNNING", 10)
        ]
        copy_id = imported[0]["run_id"]

        for step in range(10, 15):
            src.log_metrics({"loss": 1 / (step + 1)}, step=step, run_id=going.run_id)
        src.set_tag("phase", "done", run_id=going.run_id)
        src.end_run("FINISHED", run_id=going.run_id)
        second = tmp_path / "second.tar.gz"
        ok_json("runs", "export", "risk", "--out", str(second), *only)
        with cairn.Tracker(target.address(), capture_environment=False) as dst:
            dst.set_tag("reviewed", "yes", run_id=copy_id)
            again = ok_json("runs", "import", str(second), *uri)["runs"]
            assert [(r["run_id"], r["result"], r["stored_points"]) for r in again] == [
                (copy_id, "reused", 5)
            ]
            copy = dst.get_run(copy_id)
            original = src.get_run(going.run_id)
            assert (copy.status, copy.end_time) == ("FINISHED", original.end_time)
            assert copy.tags == {"phase": "done", "reviewed": "yes"}
            assert history(dst, copy.name, "loss") == history(src, original.name, "loss")
            assert len(history(dst, copy.name, "loss")) == 15
            assert ok_json("runs", "import", str(second), *uri)["runs"][0]["stored_points"] == 0
            assert len(history(dst, copy.name, "loss")) == 15


def test_bad_bundles_are_refused_cleanly(
    source: Source, target: ServerThread, tmp_path: Path
) -> None:
    good = tmp_path / "good.tar.gz"
    ok_json("runs", "export", "risk", "--out", str(good))
    members = bundle_members(good)
    best = source.runs["best"]
    model_member = f"artifacts/{best.run_id}/models/model.pkl"
    uri = ("--tracking-uri", target.address())

    def refused(name: str, members: dict[str, bytes], extra: list[tarfile.TarInfo] = []) -> str:  # noqa: B006
        path = write_bundle(tmp_path / name, members, extra)
        return fails("runs", "import", str(path), *uri)

    escape = tmp_path / "escaped.txt"
    output = refused("traversal.tar.gz", {**members, "../escaped.txt": b"gotcha"})
    assert "path traversal" in output and "../escaped.txt" in output
    assert not escape.exists()
    output = refused("nested.tar.gz", {**members, "artifacts/x/../../../escaped.txt": b"!"})
    assert "path traversal" in output
    assert not escape.exists()
    assert "absolute path" in refused("absolute.tar.gz", {**members, str(escape): b"gotcha"})
    assert not escape.exists()

    link = tarfile.TarInfo("artifacts/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    assert "only regular files" in refused("symlink.tar.gz", members, [link])

    tampered = dict(members)
    content = bytearray(tampered[model_member])
    content[1000] ^= 0xFF
    tampered[model_member] = bytes(content)
    output = refused("tampered.tar.gz", tampered)
    assert "sha256" in output and "models/model.pkl" in output

    missing = {k: v for k, v in members.items() if k != model_member}
    assert "missing" in refused("missing.tar.gz", missing)
    no_metrics = {k: v for k, v in members.items() if k != f"metrics/{best.run_id}.jsonl"}
    assert "missing" in refused("no-metrics.tar.gz", no_metrics)
    truncated = dict(members)
    truncated[f"metrics/{best.run_id}.jsonl"] = b"\n".join(
        members[f"metrics/{best.run_id}.jsonl"].splitlines()[:-5]
    )
    assert "does not hold the points" in refused("truncated.tar.gz", truncated)

    manifest = json.loads(members["manifest.json"])
    manifest["format"] = "cairn-bundle/99"
    future = {**members, "manifest.json": json.dumps(manifest).encode()}
    assert "unsupported bundle format 'cairn-bundle/99'" in refused("future.tar.gz", future)
    assert "manifest.json is missing" in refused(
        "no-manifest.tar.gz", {k: v for k, v in members.items() if k != "manifest.json"}
    )

    not_tar = tmp_path / "not-a-bundle.tar.gz"
    not_tar.write_bytes(gzip.compress(b"just text"))
    assert "not a readable cairn bundle" in fails("runs", "import", str(not_tar), *uri)
    assert "no such bundle" in fails("runs", "import", str(tmp_path / "nope.tar.gz"), *uri)

    # Nothing reached the target tracker.
    with cairn.Tracker(target.address(), capture_environment=False) as dst:
        assert dst.list_experiments(include_deleted=True) == []
