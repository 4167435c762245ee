"""The scheduler SDK (cairn.scheduling.Scheduler): its argument handling, and every method
against a real scheduler on loopback (no job is trained: submitted jobs stay QUEUED)."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import grpc
import pytest

from cairn.cli.scheduling import job_filter
from cairn.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from cairn.scheduler.v1 import feature_config_pb2, job_pb2, model_config_pb2
from cairn.scheduling import FeatureSpec, Scheduler, _feature, all_of, quote, resource_name
from services.common.filtering import And, Comparison, InList, parse_filter

from cairn_testing import ServerThread

# ---------------------------------------------------------------------- arguments


def test_feature_spec_parse() -> None:
    assert FeatureSpec.parse("user_id") == FeatureSpec("user_id", "categorical", 32)
    assert FeatureSpec.parse("item:categorical:8") == FeatureSpec("item", "categorical", 8)
    assert FeatureSpec.parse(" age : NUMERIC ") == FeatureSpec("age", "numeric", 32)
    assert FeatureSpec.parse("item::16") == FeatureSpec("item", "categorical", 16)
    for bad in ("", ":categorical", "a:b:c:d", "a:vector", "a:categorical:x"):
        with pytest.raises(InvalidArgumentError):
            FeatureSpec.parse(bad)


def test_features_from_every_shape() -> None:
    expected = feature_config_pb2.Feature(
        column="item", kind=feature_config_pb2.FEATURE_KIND_CATEGORICAL, embedding_dim=8
    )
    assert _feature(FeatureSpec("item", embedding_dim=8)) == expected
    assert _feature({"column": "item", "embedding_dim": 8}) == expected
    assert _feature("item:categorical:8") == expected
    assert _feature(expected) is expected
    numeric = _feature({"column": "age", "kind": "numeric"})
    assert numeric.kind == feature_config_pb2.FEATURE_KIND_NUMERIC
    with pytest.raises(InvalidArgumentError):
        _feature({"name": "item"})
    with pytest.raises(InvalidArgumentError):
        _feature({"column": "item", "kind": "vector"})


def test_resource_names() -> None:
    assert resource_name("jobs", "abc") == "jobs/abc"
    assert resource_name("jobs", " jobs/abc ") == "jobs/abc"
    with pytest.raises(InvalidArgumentError):
        resource_name("jobs", "datasets/abc")
    with pytest.raises(InvalidArgumentError):
        resource_name("jobs", "  ")


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "''", "a\\'b", "%_", "\n"])
def test_quote_reads_back_exactly(value: str) -> None:
    node = parse_filter(f"display_name = {quote(value)}")
    assert isinstance(node, Comparison)
    assert node.value == value


def test_all_of() -> None:
    assert all_of("", "  ") == ""
    assert all_of("a = 1", "") == "a = 1"
    assert all_of("a = 1 OR b = 2", "c = 3") == "(a = 1 OR b = 2) AND (c = 3)"


def test_job_filter_grammar() -> None:
    assert job_filter() == ""
    text = job_filter(
        states=["active"],
        model_types=["retrieval"],
        kind="full-training",
        dataset="d1",
        feature_config="f'1",
        extra="display_name LIKE 'x%' OR description = 'y'",
    )
    node = parse_filter(text)
    assert isinstance(node, And)
    # The user's OR stays one operand: the options narrow it, they do not join it.
    assert len(node.operands) == 6
    states = node.operands[1]
    assert isinstance(states, InList)
    assert states.values == ("QUEUED", "SUBMITTING", "RUNNING", "CANCELLING")
    comparisons = {op.field.key: op.value for op in node.operands[2:] if isinstance(op, Comparison)}
    assert comparisons == {
        "model_type": "RETRIEVAL",
        "kind": "FULL_TRAINING",
        "dataset": "d1",
        "feature_config": "f'1",
    }
    both = parse_filter(job_filter(model_types=["ranking", "multitask"], states=["failed"]))
    assert isinstance(both, And)
    assert both.operands[0] == parse_filter("state = 'FAILED'")
    assert both.operands[1] == parse_filter("model_type IN ('RANKING', 'MULTITASK')")


# ---------------------------------------------------------------------- against the server


def write_ratings(path: Path, rows: int = 40) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        for i in range(rows):
            writer.writerow([f"u{i % 5}", f"i{i % 9}", 1 + i % 5, 1_700_000_000 + i])
    return path


@pytest.fixture
def scheduler(scheduler_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Scheduler:
    monkeypatch.delenv("CAIRN_TOKEN", raising=False)
    monkeypatch.setenv("CAIRN_SCHEDULER_URI", scheduler_server.address("scheduler"))
    client = Scheduler()  # from the environment
    assert client.target == scheduler_server.address("scheduler")
    return client


@pytest.fixture
def ratings(tmp_path: Path) -> Path:
    return write_ratings(tmp_path / "ratings.csv")


def test_datasets(scheduler: Scheduler, ratings: Path) -> None:
    with scheduler:
        created = scheduler.create_dataset(
            "ratings", str(ratings), "user_id", "item_id", timestamp_column="timestamp"
        )
        assert created.row_count == 40
        assert scheduler.get_dataset(created.dataset_id) == created
        assert scheduler.get_dataset(created.name) == created
        assert scheduler.resolve_dataset("ratings") == created
        assert scheduler.resolve_dataset(created.dataset_id) == created
        with pytest.raises(NotFoundError, match="no dataset named or with id 'other'"):
            scheduler.resolve_dataset("other")
        with pytest.raises(NotFoundError):
            scheduler.get_dataset("0123456789abcdef")

        # A retry with the same request_id returns the first dataset; a new one conflicts.
        again = scheduler.create_dataset(
            "copy", str(ratings), "user_id", "item_id", request_id="same"
        )
        assert (
            scheduler.create_dataset("copy", str(ratings), "user_id", "item_id", request_id="same")
            == again
        )
        with pytest.raises(AlreadyExistsError):
            scheduler.create_dataset("copy", str(ratings), "user_id", "item_id")
        with pytest.raises(InvalidArgumentError, match="'nope' is not a column"):
            scheduler.create_dataset("bad", str(ratings), "nope", "item_id")
        with pytest.raises(InvalidArgumentError, match="format 'xls' is not one of"):
            scheduler.create_dataset("bad", str(ratings), "user_id", "item_id", format="xls")  # type: ignore[arg-type]

        # Paging: every page, a limit, or one page at a time.
        for i in range(3):
            scheduler.create_dataset(f"extra-{i}", str(ratings), "user_id", "item_id")
        everything = scheduler.list_datasets(page_size=2)
        assert len(everything) == 5
        order = "display_name"
        assert [d.display_name for d in scheduler.list_datasets(limit=3, order_by=order)] == [
            "copy",
            "extra-0",
            "extra-1",
        ]
        first = scheduler.list_datasets_page(page_size=2, order_by=order)
        assert len(first.datasets) == 2 and first.next_page_token
        second = scheduler.list_datasets_page(
            page_size=2, page_token=first.next_page_token, order_by=order
        )
        assert [d.display_name for d in second.datasets] == ["extra-1", "extra-2"]
        assert [
            d.display_name
            for d in scheduler.list_datasets(filter=f"display_name = {quote('copy')}")
        ] == ["copy"]

        scheduler.delete_dataset(again.dataset_id)
        with pytest.raises(NotFoundError):
            scheduler.delete_dataset(again.name)


def test_configs_and_jobs(scheduler: Scheduler, ratings: Path) -> None:
    data = scheduler.create_dataset(
        "ratings", str(ratings), "user_id", "item_id", timestamp_column="timestamp"
    )
    features = scheduler.create_feature_config(
        "towers",
        data.dataset_id,
        query_features=[FeatureSpec("user_id", embedding_dim=8)],
        candidate_features=[{"column": "item_id", "embedding_dim": 8}, "rating:numeric"],
        target_column="rating",
    )
    assert features.dataset == data.name
    assert (features.query_tensor_dim, features.candidate_tensor_dim) == (8, 9)
    assert scheduler.resolve_feature_config("towers") == features
    assert scheduler.list_feature_configs(filter=f"dataset = {quote(data.dataset_id)}") == [
        features
    ]

    model = scheduler.create_model_config(
        "net", "ranking", query_layers=[16, 8], candidate_layers=[8], rating_layers=[4],
        optimizer="adam", learning_rate=0.3,
    )  # fmt: skip
    assert model.model_type == model_config_pb2.MODEL_TYPE_RANKING
    assert model.optimizer == model_config_pb2.OPTIMIZER_ADAM
    assert scheduler.resolve_model_config(model.name) == model
    assert scheduler.list_model_configs(filter="model_type = 'RANKING'") == [model]
    with pytest.raises(InvalidArgumentError, match="model type 'deep' is not one of"):
        scheduler.create_model_config("x", "deep")  # type: ignore[arg-type]

    quick = scheduler.submit_quick_test(
        features.feature_config_id, model.model_config_id, epochs=2, split_strategy="time-holdout"
    )
    assert quick.kind == job_pb2.JOB_KIND_QUICK_TEST
    assert quick.state == job_pb2.JOB_STATE_QUEUED
    assert quick.training.epochs == 2
    assert quick.training.learning_rate == pytest.approx(0.3)  # the model config's
    assert quick.training.split_strategy == job_pb2.SPLIT_STRATEGY_TIME_HOLDOUT
    full = scheduler.submit_training(
        features.name, model.name, hardware_tier="medium", request_id="full-1"
    )
    assert full.kind == job_pb2.JOB_KIND_FULL_TRAINING
    assert full.training.hardware_tier == job_pb2.HARDWARE_TIER_MEDIUM
    # The same request_id is the same job: a retried submit never queues a second one.
    assert scheduler.submit_training(features.name, model.name, hardware_tier="medium",
                                     request_id="full-1").job_id == full.job_id  # fmt: skip

    assert [j.job_id for j in scheduler.list_jobs()] == [full.job_id, quick.job_id]
    assert [j.job_id for j in scheduler.list_jobs(filter="kind = 'QUICK_TEST'")] == [quick.job_id]
    assert [j.job_id for j in scheduler.list_jobs(page_size=1)] == [full.job_id, quick.job_id]
    assert [j.job_id for j in scheduler.list_jobs(limit=1)] == [full.job_id]
    assert scheduler.list_jobs_page(page_size=1).next_page_token
    assert scheduler.get_job(quick.name).job_id == quick.job_id

    with pytest.raises(FailedPreconditionError):
        scheduler.delete_job(quick.job_id)  # not finished
    with pytest.raises(FailedPreconditionError):
        scheduler.rerun_job(quick.job_id)
    with pytest.raises(FailedPreconditionError):
        scheduler.delete_model_config(model.name)  # used by jobs

    cancelled = scheduler.cancel_job(quick.job_id)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    # Watching a finished job gives it once and ends.
    assert [j.state for j in scheduler.watch_job(quick.job_id)] == [job_pb2.JOB_STATE_CANCELLED]
    assert scheduler.wait_job(quick.name).state == job_pb2.JOB_STATE_CANCELLED

    rerun = scheduler.rerun_job(quick.job_id, request_id="again")
    assert rerun.rerun_of == quick.name
    assert scheduler.rerun_job(quick.job_id, request_id="again").job_id == rerun.job_id

    scheduler.delete_job(quick.job_id)
    with pytest.raises(NotFoundError):
        scheduler.get_job(quick.job_id)
    scheduler.close()


def test_watch_streams_changes(scheduler: Scheduler, ratings: Path) -> None:
    data = scheduler.create_dataset("ratings", str(ratings), "user_id", "item_id")
    features = scheduler.create_feature_config("f", data.name, ["user_id"], ["item_id"])
    model = scheduler.create_model_config("m", "retrieval")
    job = scheduler.submit_quick_test(features.name, model.name)

    def cancel_soon() -> None:
        time.sleep(0.5)
        scheduler.cancel_job(job.job_id)

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    states = [j.state for j in scheduler.watch_job(job.job_id)]
    thread.join()
    assert states[0] == job_pb2.JOB_STATE_QUEUED
    assert states[-1] == job_pb2.JOB_STATE_CANCELLED


def test_unreachable_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAIRN_SCHEDULER_URI", raising=False)
    assert Scheduler().target == "127.0.0.1:50052"
    assert Scheduler("grpc://127.0.0.1:9/").target == "127.0.0.1:9"
    with Scheduler("127.0.0.1:9", timeout=5) as client:
        with pytest.raises(UnavailableError, match="CAIRN_SCHEDULER_URI") as raised:
            client.list_jobs()
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1:9" in str(raised.value)
    monkeypatch.setenv("CAIRN_TOKEN", "secret")
    assert ("authorization", "Bearer secret") in Scheduler()._metadata
