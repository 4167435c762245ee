"""Real quick tests end to end: the scheduler launches the TFX pipeline in the trainer
runtime (`cairn trainer-env`, built once per machine into the user cache; `make test`
builds it before pytest) through the local launcher, and the trainer trains TensorFlow
Recommenders retrieval, ranking and multitask models on a 5% sample of the bundled dataset
for one epoch. Auth is on: the trainer reports its metrics live through the REST gateway with
its per-job run token, and the scheduler ingests training_metrics.json at the end without
duplicating what arrived live."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cairn.scheduler.v1 import (
    dataset_pb2,
    feature_config_pb2,
    job_pb2,
    model_config_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)
from cairn.tracker.v1 import run_pb2, tracker_service_pb2, tracker_service_pb2_grpc
from services.common.settings import Settings

from cairn_testing import ServerThread, make_settings, sqlite_url

pytestmark = pytest.mark.slow

TOKEN = "e2e-service-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MODEL_TYPES = {
    "retrieval": model_config_pb2.MODEL_TYPE_RETRIEVAL,
    "ranking": model_config_pb2.MODEL_TYPE_RANKING,
    "multitask": model_config_pb2.MODEL_TYPE_MULTITASK,
}
EXPECTED_FINAL = {
    "retrieval": {
        "test/recall_at_5",
        "test/recall_at_10",
        "test/recall_at_50",
        "test/recall_at_100",
    },
    "ranking": {"test/rmse", "test/mae"},
    "multitask": {"test/recall_at_10", "test/recall_at_100", "test/rmse", "test/mae"},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.server = ServerThread(settings, ("tracker", "scheduler", "gateway")).start()
        self.channels = [
            grpc.insecure_channel(self.server.address("scheduler")),
            grpc.insecure_channel(self.server.address("tracker")),
        ]
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(self.channels[0])
        self.tracker = tracker_service_pb2_grpc.TrackerServiceStub(self.channels[1])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("training") / "data"
    data_dir.mkdir()
    settings = make_settings(
        sqlite_url(data_dir),
        data_dir,
        auth_tokens=TOKEN,
        # The gateway's port is known before it starts: the trainer reports to it.
        gateway_port=_free_port(),
        scheduler_max_running_jobs=2,
        scheduler_poll_seconds=0.5,
    )
    running = Stack(settings)
    yield running
    running.close()


def _create(stack: Stack, sample_csv: Path) -> dict[str, str]:
    scheduler = stack.scheduler
    dataset = scheduler.CreateDataset(
        scheduler_service_pb2.CreateDatasetRequest(
            dataset=dataset_pb2.Dataset(
                display_name="interactions",
                uri=str(sample_csv),
                user_column="user_id",
                item_column="item_id",
                timestamp_column="timestamp",
            )
        ),
        metadata=AUTH,
    )
    features = scheduler.CreateFeatureConfig(
        scheduler_service_pb2.CreateFeatureConfigRequest(
            feature_config=feature_config_pb2.FeatureConfig(
                display_name="ids",
                dataset=dataset.name,
                query_features=[feature_config_pb2.Feature(column="user_id", embedding_dim=16)],
                candidate_features=[
                    feature_config_pb2.Feature(column="item_id", embedding_dim=16),
                    feature_config_pb2.Feature(column="item_category", embedding_dim=4),
                ],
                target_column="rating",
            )
        ),
        metadata=AUTH,
    )
    names = {"features": features.name}
    for word, model_type in MODEL_TYPES.items():
        model = scheduler.CreateModelConfig(
            scheduler_service_pb2.CreateModelConfigRequest(
                model_config=model_config_pb2.ModelConfig(
                    display_name=word,
                    model_type=model_type,
                    query_layers=[32],
                    candidate_layers=[32],
                    rating_layers=[16],
                    learning_rate=0.1,
                )
            ),
            metadata=AUTH,
        )
        names[word] = model.name
    return names


def _wait(stack: Stack, names: list[str], timeout: float = 900) -> list[job_pb2.Job]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [
            stack.scheduler.GetJob(scheduler_service_pb2.GetJobRequest(name=n), metadata=AUTH)
            for n in names
        ]
        if all(j.state in (5, 6, 7) for j in jobs):  # SUCCEEDED, FAILED, CANCELLED
            return jobs
        assert time.monotonic() < deadline, f"jobs did not finish: {jobs}"
        time.sleep(1)


def _history(stack: Stack, run: str, key: str) -> list[Any]:
    return list(
        stack.tracker.ListMetricHistory(
            tracker_service_pb2.ListMetricHistoryRequest(run=run, metric_key=key),
            metadata=AUTH,
        ).points
    )


def test_retrieval_ranking_and_multitask_quick_tests_train_for_real(
    stack: Stack, sample_csv: Path
) -> None:
    names = _create(stack, sample_csv)
    submitted = {
        word: stack.scheduler.CreateJob(
            scheduler_service_pb2.CreateJobRequest(
                job=job_pb2.Job(
                    feature_config=names["features"],
                    model_config=names[word],
                    training=job_pb2.TrainingParameters(
                        sample_percent=5, epochs=1, batch_size=1024
                    ),
                ),
                request_id=f"e2e-{word}",
            ),
            metadata=AUTH,
        )
        for word in MODEL_TYPES
    }
    finished = dict(zip(submitted, _wait(stack, [j.name for j in submitted.values()]), strict=True))
    for word, job in finished.items():
        seconds = job.end_time.seconds - job.start_time.seconds
        print(f"{word}: {seconds} s, {dict(job.final_metrics)}")  # shown with pytest -s
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, (word, job.error)
        assert [t.state for t in job.state_history] == [1, 2, 3, 5]
        assert EXPECTED_FINAL[word] <= set(job.final_metrics), (word, dict(job.final_metrics))

        run = stack.tracker.GetRun(
            tracker_service_pb2.GetRunRequest(name=job.run, view=run_pb2.RUN_VIEW_FULL),
            metadata=AUTH,
        )
        assert run.status == run_pb2.RUN_STATUS_FINISHED
        assert run.lineage.model_type == word and run.params["epochs"] == "1"
        latest = {m.key: m.value for m in run.metrics}
        for key in EXPECTED_FINAL[word]:
            assert latest[key] == pytest.approx(job.final_metrics[key]), key
        # Per-epoch training history: losses, gradient norms and weight stats per tower.
        for key in ("train/loss", "grad_norm/query", "grad_norm/candidate", "weights/query/l2"):
            points = _history(stack, job.run, key)
            assert [p.step for p in points] == [1], (word, key)
        # Everything arrived live through the gateway with the job's run token; the final
        # ingest found it all there and stored nothing twice.
        assert int(run.tags["cairn.metrics_reported_live"]) > 0, run.tags
        assert run.tags["cairn.metrics_from_file"] == "0", run.tags
        artifacts = {a.path for a in run.artifacts}
        assert {"schema.pbtxt", "statistics.json", "vocabulary_sizes.json"} <= artifacts
        assert "weight_histograms.json" in artifacts and "training_metrics.json" in artifacts
        assert any(p.startswith("serving_model/") and p.endswith(".pb") for p in artifacts)

    retrieval = finished["retrieval"].final_metrics
    # 1,000 items: chance Recall@100 is 0.1. One epoch on 4,000 interactions already beats it.
    assert retrieval["test/recall_at_100"] > 0.15, dict(retrieval)
    assert (
        retrieval["test/recall_at_5"]
        <= retrieval["test/recall_at_10"]
        <= retrieval["test/recall_at_50"]
        <= retrieval["test/recall_at_100"]
    )
    ranking = finished["ranking"].final_metrics
    assert 0 < ranking["test/mae"] <= ranking["test/rmse"] < 2.0, dict(ranking)
