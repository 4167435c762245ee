"""`cairn datasets|feature-configs|model-configs|jobs ...` against a real scheduler (and the
tracker it records runs in), through the real click group with CliRunner.

No job is trained here: the scheduler runs without launching anything, so submitted jobs stay
QUEUED until they are cancelled (the lead's scheduler tests cover training end to end).
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from cairn.cli import scheduling as scheduling_cli
from cairn.cli.main import cli
from cairn.scheduling import Scheduler

from cairn_testing import ServerThread


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, f"cairn {' '.join(args)} failed:\n{result.output}"
    return result


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def fails(*args: str, code: int = 1) -> str:
    """Run a command that must fail cleanly: the exit code, a message, no traceback."""
    result = invoke(*args)
    assert result.exit_code == code, (
        f"expected exit {code}, got {result.exit_code}:\n{result.output}"
    )
    assert "Traceback" not in result.output
    return result.output


def write_ratings(path: Path, rows: int = 60) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "item_category", "rating", "timestamp"])
        for i in range(rows):
            writer.writerow([f"u{i % 7}", f"i{i % 11}", f"c{i % 3}", 1 + i % 5, 1_700_000_000 + i])
    return path


@pytest.fixture
def stack(
    scheduler_server: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> ServerThread:
    monkeypatch.setenv("CAIRN_SCHEDULER_URI", scheduler_server.address("scheduler"))
    monkeypatch.setenv("CAIRN_TRACKING_URI", scheduler_server.address("tracker"))
    monkeypatch.delenv("CAIRN_TOKEN", raising=False)
    monkeypatch.setattr(scheduling_cli, "console", Console(width=250))
    monkeypatch.chdir(tmp_path)
    return scheduler_server


@pytest.fixture
def ratings(stack: ServerThread, tmp_path: Path) -> Path:
    return write_ratings(tmp_path / "ratings.csv")


@pytest.fixture
def configs(ratings: Path) -> dict[str, Any]:
    """A dataset, a retrieval feature config, one with a ranking target, and a model config
    of each type (created through the CLI)."""
    dataset = as_json(
        "datasets", "create", "movies", "--uri", str(ratings),
        "--user-column", "user_id", "--item-column", "item_id",
        "--timestamp-column", "timestamp",
    )  # fmt: skip
    ids = as_json(
        "feature-configs", "create", "ids", "--dataset", "movies",
        "--query", "user_id", "--candidate", "item_id:categorical:16",
    )  # fmt: skip
    rated = as_json(
        "feature-configs", "create", "rated", "--dataset", dataset["dataset_id"],
        "--query", "user_id:categorical:32", "--candidate", "item_id:categorical:32",
        "--candidate", "item_category:categorical:8", "--target", "rating",
    )  # fmt: skip
    models = {
        kind: as_json("model-configs", "create", f"{kind}-net", "--type", kind)
        for kind in ("retrieval", "ranking", "multitask")
    }
    return {"dataset": dataset, "ids": ids, "rated": rated, "models": models}


# ---------------------------------------------------------------------- datasets


def test_dataset_create_list_show_delete(ratings: Path) -> None:
    created = as_json(
        "datasets", "create", "movies", "--uri", "ratings.csv",  # relative: made absolute
        "--user-column", "user_id", "--item-column", "item_id",
        "--timestamp-column", "timestamp", "--description", "toy ratings",
    )  # fmt: skip
    assert created["name"] == f"datasets/{created['dataset_id']}"
    assert created["display_name"] == "movies"
    assert created["description"] == "toy ratings"
    assert created["uri"] == str(ratings.resolve())
    assert created["format"] == "DATA_FORMAT_CSV"
    assert created["row_count"] == 60
    assert created["size_bytes"] == ratings.stat().st_size
    assert {c["name"]: c["type"] for c in created["columns"]} == {
        "user_id": "COLUMN_TYPE_STRING",
        "item_id": "COLUMN_TYPE_STRING",
        "item_category": "COLUMN_TYPE_STRING",
        "rating": "COLUMN_TYPE_INT64",
        "timestamp": "COLUMN_TYPE_INT64",
    }
    assert created["create_time"].endswith("Z")

    listed = as_json("datasets", "list")
    assert set(listed) == {"datasets", "next_page_token"}
    assert [d["dataset_id"] for d in listed["datasets"]] == [created["dataset_id"]]
    assert listed["next_page_token"] == ""

    # Display name, id and resource name all find it.
    for ref in ("movies", created["dataset_id"], created["name"]):
        assert as_json("datasets", "show", ref) == created
    table = ok("datasets", "show", "movies").stdout
    assert "Dataset movies" in table and "timestamp column" in table
    assert "item_category" in table and "user" in table and "60" in table
    assert "movies" in ok("datasets", "list").stdout

    deleted = as_json("datasets", "delete", "movies")
    assert deleted == {"name": created["name"], "display_name": "movies", "deleted": True}
    assert "no dataset named or with id 'movies'" in fails("datasets", "show", "movies")
    assert "no datasets" in ok("datasets", "list").stdout


def test_dataset_parquet_and_errors(ratings: Path, tmp_path: Path) -> None:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    parquet = tmp_path / "ratings.data"
    pq.write_table(pa_csv.read_csv(ratings), parquet)
    created = as_json(
        "datasets", "create", "movies-pq", "--uri", str(parquet), "--format", "parquet",
        "--user-column", "user_id", "--item-column", "item_id",
    )  # fmt: skip
    assert created["format"] == "DATA_FORMAT_PARQUET"
    assert created["row_count"] == 60

    # Invalid choices are click's (exit 2); what only the server can check is its message.
    assert "'xls' is not one of" in fails(
        "datasets", "create", "x", "--uri", str(ratings), "--format", "xls",
        "--user-column", "user_id", "--item-column", "item_id", code=2,
    )  # fmt: skip
    assert "Missing option '--item-column'" in fails(
        "datasets", "create", "x", "--uri", str(ratings), "--user-column", "user_id", code=2
    )
    output = fails(
        "datasets", "create", "x", "--uri", str(ratings),
        "--user-column", "user", "--item-column", "item_id",
    )  # fmt: skip
    assert "UNKNOWN_COLUMN" in output and "'user' is not a column of the file" in output
    assert "no such file" in fails(
        "datasets", "create", "x", "--uri", str(tmp_path / "missing.csv"),
        "--user-column", "user_id", "--item-column", "item_id",
    )  # fmt: skip
    # Display names are unique.
    assert "DATASET_EXISTS" in fails(
        "datasets", "create", "movies-pq", "--uri", str(ratings),
        "--user-column", "user_id", "--item-column", "item_id",
    )  # fmt: skip


# ---------------------------------------------------------------------- configs


def test_feature_configs(configs: dict[str, Any]) -> None:
    dataset, ids, rated = configs["dataset"], configs["ids"], configs["rated"]
    assert ids["dataset"] == dataset["name"]
    assert ids["query_features"] == [
        {"column": "user_id", "kind": "FEATURE_KIND_CATEGORICAL", "embedding_dim": 32}
    ]
    assert ids["candidate_features"] == [
        {"column": "item_id", "kind": "FEATURE_KIND_CATEGORICAL", "embedding_dim": 16}
    ]
    assert (ids["query_tensor_dim"], ids["candidate_tensor_dim"]) == (32, 16)
    assert ids["target_column"] == ""
    assert rated["target_column"] == "rating"
    assert (rated["query_tensor_dim"], rated["candidate_tensor_dim"]) == (32, 40)

    for ref in ("rated", rated["feature_config_id"], rated["name"]):
        assert as_json("feature-configs", "show", ref) == rated
    table = ok("feature-configs", "show", "rated").stdout
    assert "Feature config rated" in table and "item_category" in table
    assert "movies" in table  # the dataset by its display name

    listed = as_json("feature-configs", "list", "--dataset", "movies")
    assert {c["display_name"] for c in listed["feature_configs"]} == {"ids", "rated"}
    assert "item_id:categorical:16" in ok("feature-configs", "list").stdout
    narrowed = as_json("feature-configs", "list", "--filter", "target_column = 'rating'")
    assert [c["display_name"] for c in narrowed["feature_configs"]] == ["rated"]

    # Errors: a dataset that does not exist, a malformed feature, a column the data lacks.
    output = fails(
        "feature-configs", "create", "x", "--dataset", "nope",
        "--query", "user_id", "--candidate", "item_id",
    )  # fmt: skip
    assert "no dataset named or with id 'nope'" in output
    assert "kind 'vector' is not one of categorical, numeric" in fails(
        "feature-configs", "create", "x", "--dataset", "movies",
        "--query", "user_id:vector", "--candidate", "item_id", code=2,
    )  # fmt: skip
    assert "'big' is not a whole number" in fails(
        "feature-configs", "create", "x", "--dataset", "movies",
        "--query", "user_id:categorical:big", "--candidate", "item_id", code=2,
    )  # fmt: skip
    output = fails(
        "feature-configs", "create", "x", "--dataset", "movies",
        "--query", "age:numeric", "--candidate", "item_id",
    )  # fmt: skip
    assert "'age' is not a column of dataset 'movies'" in output
    assert "Missing option '--candidate'" in fails(
        "feature-configs", "create", "x", "--dataset", "movies", "--query", "user_id", code=2
    )

    # A dataset in use cannot be deleted; an unused config can.
    output = fails("datasets", "delete", "movies")
    assert "DATASET_IN_USE" in output and "still used by" in output
    assert as_json("feature-configs", "delete", "ids")["deleted"] is True
    assert "no feature config named or with id 'ids'" in fails("feature-configs", "show", "ids")


def test_model_configs(configs: dict[str, Any]) -> None:
    retrieval = configs["models"]["retrieval"]
    assert retrieval["model_type"] == "MODEL_TYPE_RETRIEVAL"
    assert retrieval["query_layers"] == [64, 32]  # the service's defaults
    assert retrieval["optimizer"] == "OPTIMIZER_ADAGRAD"
    assert retrieval["learning_rate"] == pytest.approx(0.1)

    custom = as_json(
        "model-configs", "create", "deep multitask", "--type", "multitask",
        "--query-layers", "128,64,32", "--candidate-layers", "64, 32",
        "--rating-layers", "16", "--optimizer", "adam", "--learning-rate", "0.05",
        "--retrieval-weight", "2", "--ranking-weight", "0.5", "--description", "wide",
    )  # fmt: skip
    assert custom["query_layers"] == [128, 64, 32]
    assert custom["candidate_layers"] == [64, 32]
    assert custom["rating_layers"] == [16]
    assert custom["optimizer"] == "OPTIMIZER_ADAM"
    assert custom["learning_rate"] == pytest.approx(0.05)
    assert (custom["retrieval_weight"], custom["ranking_weight"]) == (2.0, 0.5)
    assert as_json("model-configs", "show", "deep multitask") == custom
    table = ok("model-configs", "show", custom["model_config_id"]).stdout
    assert "128 -> 64 -> 32" in table and "retrieval weight" in table

    ranking = as_json("model-configs", "list", "--type", "ranking")["model_configs"]
    assert [c["display_name"] for c in ranking] == ["ranking-net"]
    multitask = as_json("model-configs", "list", "--type", "multitask")["model_configs"]
    assert {c["display_name"] for c in multitask} == {"multitask-net", "deep multitask"}
    assert len(as_json("model-configs", "list", "--limit", "2")["model_configs"]) == 2

    assert "'deep' is not one of" in fails("model-configs", "create", "x", "--type", "deep", code=2)
    assert "positive layer widths" in fails(
        "model-configs", "create", "x", "--type", "retrieval", "--query-layers", "64,0", code=2
    )
    assert "0<x<=1" in fails(
        "model-configs", "create", "x", "--type", "retrieval", "--learning-rate", "2", code=2
    )
    output = fails(
        "model-configs", "create", "x", "--type", "retrieval",
        "--query-layers", "64,32", "--candidate-layers", "64,16",
    )  # fmt: skip
    assert "TOWER_MISMATCH" in output and "same width" in output

    assert as_json("model-configs", "delete", "deep multitask")["deleted"] is True
    assert "no model config named" in fails("model-configs", "show", "deep multitask")


# ---------------------------------------------------------------------- jobs


def _submit(kind: str, features: str, model: str, *extra: str) -> dict[str, Any]:
    job: dict[str, Any] = as_json(
        "jobs", "submit", kind, "--feature-config", features, "--model-config", model, *extra
    )
    return job


def test_submit_show_and_parameters(configs: dict[str, Any]) -> None:
    job = _submit(
        "quick-test", "ids", "retrieval-net", "--name", "first try", "--description", "hello",
        "--experiment", "cli-quick-tests",
    )  # fmt: skip
    assert job["name"] == f"jobs/{job['job_id']}"
    assert job["kind"] == "JOB_KIND_QUICK_TEST"
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["model_type"] == "MODEL_TYPE_RETRIEVAL"
    assert job["feature_config"] == configs["ids"]["name"]
    assert job["model_config"] == configs["models"]["retrieval"]["name"]
    assert job["dataset"] == configs["dataset"]["name"]
    assert job["display_name"] == "first try" and job["description"] == "hello"
    assert job["experiment"] == "cli-quick-tests"
    # The resolved defaults of a quick test.
    training = job["training"]
    assert training["sample_percent"] == 10
    assert training["epochs"] == 3
    assert training["batch_size"] == 4096
    assert training["learning_rate"] == pytest.approx(0.1)  # the model config's
    assert training["split_strategy"] == "SPLIT_STRATEGY_RANDOM"
    assert training["hardware_tier"] == "HARDWARE_TIER_SMALL"  # recommended: tiny data
    assert [t["state"] for t in job["state_history"]] == ["JOB_STATE_QUEUED"]

    chosen = _submit(
        "quick-test", configs["rated"]["feature_config_id"], "multitask-net",
        "--sample", "25", "--epochs", "7", "--batch-size", "1024", "--learning-rate", "0.02",
        "--hardware", "large", "--split", "time-holdout", "--seed", "7",
    )  # fmt: skip
    assert chosen["training"] == {
        "sample_percent": 25,
        "epochs": 7,
        "batch_size": 1024,
        "learning_rate": pytest.approx(0.02),
        "hardware_tier": "HARDWARE_TIER_LARGE",
        "split_strategy": "SPLIT_STRATEGY_TIME_HOLDOUT",
        "seed": 7,
    }
    training_job = _submit("training", "rated", "ranking-net", "--epochs", "120")
    assert training_job["kind"] == "JOB_KIND_FULL_TRAINING"
    assert training_job["training"]["sample_percent"] == 100
    assert training_job["training"]["epochs"] == 120
    assert training_job["experiment"] == "full-training"

    # show: by id and by resource name; the table has the state history.
    assert as_json("jobs", "show", job["job_id"])["job_id"] == job["job_id"]
    assert as_json("jobs", "show", job["name"])["job_id"] == job["job_id"]
    table = ok("jobs", "show", job["job_id"]).stdout
    assert "Job first try" in table and "State history" in table and "queued" in table
    assert "ids (" in table and "retrieval-net (" in table and "movies (" in table

    # The human submit output names the job and how to follow it.
    text = ok(
        "jobs", "submit", "quick-test", "--feature-config", "ids", "--model-config",
        "retrieval-net",
    ).stdout  # fmt: skip
    assert "Queued quick-test" in text and "cairn jobs watch" in text


def test_submit_errors(configs: dict[str, Any]) -> None:
    base = ("jobs", "submit", "quick-test", "--feature-config", "ids")
    assert "no model config named or with id 'nope'" in fails(*base, "--model-config", "nope")
    assert "no feature config named or with id 'nope'" in fails(
        "jobs", "submit", "quick-test", "--feature-config", "nope", "--model-config", "x"
    )
    model = ("--model-config", "retrieval-net")
    assert "1<=x<=50" in fails(*base, *model, "--epochs", "51", code=2)
    assert "'7' is not one of" in fails(*base, *model, "--sample", "7", code=2)
    assert "'1000' is not one of" in fails(*base, *model, "--batch-size", "1000", code=2)
    assert "'huge' is not one of" in fails(*base, *model, "--hardware", "huge", code=2)
    assert "Missing option '--model-config'" in fails(*base, code=2)
    # Full training allows up to 500 epochs.
    assert "1<=x<=500" in fails(
        "jobs", "submit", "training", "--feature-config", "ids", *model, "--epochs", "501", code=2
    )
    # The server's checks: a ranking model needs a target column.
    output = fails(*base, "--model-config", "ranking-net")
    assert "MISSING_TARGET" in output and "needs a target column" in output


def test_list_filters(configs: dict[str, Any]) -> None:
    retrieval = _submit("quick-test", "ids", "retrieval-net", "--name", "alpha retrieval")
    ranking = _submit("quick-test", "rated", "ranking-net", "--name", "beta ranking")
    multitask = _submit(
        "training", "rated", "multitask-net", "--name", "gamma multitask",
        "--description", "it's the big one",
    )  # fmt: skip

    def listed(*options: str) -> list[str]:
        data = as_json("jobs", "list", *options)
        assert set(data) == {"jobs", "next_page_token"}
        return [j["job_id"] for j in data["jobs"]]

    # Newest first.
    assert listed() == [multitask["job_id"], ranking["job_id"], retrieval["job_id"]]
    assert listed("--model-type", "retrieval") == [retrieval["job_id"]]
    assert listed("--model-type", "ranking", "--model-type", "multitask") == [
        multitask["job_id"],
        ranking["job_id"],
    ]
    assert listed("--kind", "full-training") == [multitask["job_id"]]
    assert listed("--kind", "quick-test", "--model-type", "multitask") == []
    assert listed("--feature-config", "rated") == [multitask["job_id"], ranking["job_id"]]
    assert listed("--model-config", "ranking-net") == [ranking["job_id"]]
    assert len(listed("--dataset", "movies")) == 3
    assert listed("--search", "BETA") == [ranking["job_id"]]
    assert listed("--search", "big one") == [multitask["job_id"]]
    assert len(listed("--state", "queued")) == 3
    assert listed("--state", "running") == []
    assert len(listed("--state", "active")) == 3
    assert listed("--filter", "display_name LIKE 'gamma%'") == [multitask["job_id"]]
    # Convenience options and --filter combine with AND.
    assert listed("--model-type", "ranking", "--filter", "display_name LIKE 'gamma%'") == []
    assert listed("--limit", "2") == [multitask["job_id"], ranking["job_id"]]
    page = as_json("jobs", "list", "--limit", "2")
    assert page["next_page_token"]
    assert listed("--order-by", "create_time asc", "--limit", "1") == [retrieval["job_id"]]

    scheduler_cli_cancel = as_json("jobs", "cancel", ranking["job_id"])
    assert scheduler_cli_cancel["state"] == "JOB_STATE_CANCELLED"
    assert listed("--state", "cancelled") == [ranking["job_id"]]
    assert listed("--state", "finished", "--model-type", "ranking") == [ranking["job_id"]]
    assert listed("--state", "queued", "--state", "cancelled") == listed()

    table = ok("jobs", "list").stdout
    assert "3 jobs" in table and "gamma multitask" in table and "cancelled" in table
    assert "no jobs match" in ok("jobs", "list", "--state", "failed").stdout
    assert "colour" in fails("jobs", "list", "--filter", "colour = 'red'")
    assert "no dataset named or with id 'nope'" in fails("jobs", "list", "--dataset", "nope")


def test_cancel_rerun_delete_and_watch(configs: dict[str, Any]) -> None:
    job = _submit("quick-test", "ids", "retrieval-net", "--name", "to cancel")
    # A queued job cannot be deleted or re-run yet.
    assert "cancel it first" in fails("jobs", "delete", job["job_id"])
    assert "JOB_NOT_FINISHED" in fails("jobs", "rerun", job["job_id"])

    cancelled = as_json("jobs", "cancel", job["job_id"])
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    assert [t["state"] for t in cancelled["state_history"]] == [
        "JOB_STATE_QUEUED",
        "JOB_STATE_CANCELLED",
    ]
    assert "JOB_FINISHED" in fails("jobs", "cancel", job["job_id"])

    # Watching a cancelled job ends at once with exit 1 and says how it ended.
    watched = invoke("jobs", "watch", job["job_id"])
    assert watched.exit_code == 1, watched.output
    assert "cancelled" in watched.output and "Traceback" not in watched.output

    rerun = as_json("jobs", "rerun", job["name"])
    assert rerun["rerun_of"] == job["name"]
    assert rerun["job_id"] != job["job_id"]
    assert rerun["state"] == "JOB_STATE_QUEUED"
    assert rerun["training"] == cancelled["training"]
    assert "a re-run of" in ok("jobs", "rerun", job["job_id"]).stdout

    deleted = as_json("jobs", "delete", job["job_id"])
    assert deleted == {"name": job["name"], "deleted": True}
    output = fails("jobs", "show", job["job_id"])
    assert "JOB_NOT_FOUND" in output and job["job_id"] in output
    assert "is not a jobs id" in fails("jobs", "show", "datasets/abc")


def test_watch_follows_until_the_job_ends(configs: dict[str, Any], stack: ServerThread) -> None:
    """`cairn jobs watch` renders a queued job's progress and ends (exit 1) when it is
    cancelled from elsewhere."""
    job = _submit("quick-test", "ids", "retrieval-net", "--name", "watched")

    def cancel_soon() -> None:
        time.sleep(1.0)
        with Scheduler(stack.address("scheduler")) as scheduler:
            scheduler.cancel_job(job["job_id"])

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    started = time.monotonic()
    result = invoke("jobs", "watch", job["job_id"])
    canceller.join()
    assert result.exit_code == 1, result.output
    assert time.monotonic() - started >= 0.9
    assert "queued" in result.output and "cancelled by the user" in result.output
    assert f"Job {job['job_id']} cancelled" in result.output


def test_unreachable_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_SCHEDULER_URI", "127.0.0.1:9")
    output = fails("jobs", "list")
    assert "the Cairn scheduler at 127.0.0.1:9 did not answer" in output
    assert "CAIRN_SCHEDULER_URI" in output
    output = fails("datasets", "--scheduler-uri", "127.0.0.1:7", "list")
    assert "127.0.0.1:7" in output
