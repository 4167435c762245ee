"""The Python SDK end to end against a real tracker (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest

import cairn
from cairn._sender import MetricSender, PendingPoint
from cairn.tracker.v1 import metric_pb2, tracker_service_pb2
from services.common.settings import Settings

from cairn_testing import ServerThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(tracker_server: ServerThread) -> Iterator[cairn.Tracker]:
    with cairn.Tracker(tracker_server.address(), flush_interval=0.2) as tracker:
        yield tracker


def test_seed_001_quick_start_round_trip(client: cairn.Tracker, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(os.urandom(300_000))
    plot = tmp_path / "roc.png"
    plot.write_bytes(b"\x89PNG fake")
    run = client.start_run(
        experiment_name="mental_health_risk_model",
        run_name="baseline_v1",
        tags={"model_type": "random_forest", "dataset": "v1.2"},
        dataset_id="ds-1",
        dataset_name="survey v1.2",
        model_type="random_forest",
    )
    assert run.status == "RUNNING"
    assert run.version == 1
    client.log_params({"n_estimators": 100, "max_depth": 10, "learning_rate": 0.01})
    for epoch in range(10):
        client.log_metrics({"accuracy": 0.5 + epoch / 20, "loss": 1.0 / (epoch + 1)}, step=epoch)
    client.log_metrics({"final_accuracy": 0.91})
    client.log_artifact(model, artifact_type="model")
    client.log_artifact(plot, artifact_type="plot", artifact_path="plots/roc.png")
    ended = client.end_run(status="FINISHED")
    assert ended.status == "FINISHED"
    assert ended.end_time is not None

    fetched = client.get_run(run.run_id)
    assert fetched.run_name == "baseline_v1"
    assert fetched.params == {"n_estimators": "100", "max_depth": "10", "learning_rate": "0.01"}
    assert fetched.metrics["accuracy"] == pytest.approx(0.95)
    assert fetched.metrics["loss"] == pytest.approx(0.1)
    assert fetched.metrics["final_accuracy"] == pytest.approx(0.91)
    assert fetched.tags == {"model_type": "random_forest", "dataset": "v1.2"}
    assert {(a.path, a.artifact_type, a.size_bytes) for a in fetched.artifacts} == {
        ("model.pkl", "model", 300_000),
        ("plots/roc.png", "plot", 9),
    }
    assert fetched.dataset_id == "ds-1" and fetched.model_type == "random_forest"
    assert fetched.environment is not None
    assert fetched.environment.python_version.count(".") == 2
    assert "grpcio==" in fetched.environment.pip_freeze
    assert fetched.environment.command
    assert len(client.get_metric_history(run.run_id, "accuracy")) == 10

    downloaded = client.download_artifact(run.run_id, "model.pkl", tmp_path / "out")
    assert downloaded.read_bytes() == model.read_bytes()


def test_reads_flush_pending_metrics_first(client: cairn.Tracker) -> None:
    run = client.start_run("flush")
    client.log_metric("loss", 0.5, step=1)
    # No explicit flush: a read in the same process must see the point.
    assert client.get_run(run.run_id).metrics == {"loss": 0.5}
    assert [p.value for p in client.get_metric_history(run.run_id, "loss")] == [0.5]


def test_context_manager_ends_finished_or_failed(client: cairn.Tracker) -> None:
    with client.run("ctx", run_name="ok") as good:
        client.log_metric("m", 1.0)
    with pytest.raises(RuntimeError), client.run("ctx", run_name="bad") as bad:
        client.log_metric("m", 2.0)
        raise RuntimeError("training diverged")
    assert client.get_run(good.run_id).status == "FINISHED"
    failed = client.get_run(bad.run_id)
    assert failed.status == "FAILED"
    assert failed.metrics == {"m": 2.0}


def test_params_are_immutable_through_the_sdk(client: cairn.Tracker) -> None:
    client.start_run("immutability")
    client.log_params({"lr": 0.01})
    client.log_params({"lr": 0.01})  # the same value again is fine
    with pytest.raises(cairn.AlreadyExistsError) as caught:
        client.log_params({"lr": 0.02})
    assert caught.value.reason == "PARAM_IMMUTABLE"
    assert caught.value.metadata["key"] == "lr"
    assert caught.value.metadata["old_value"] == "0.01"
    assert caught.value.metadata["new_value"] == "0.02"


def test_search_runs_with_filter_and_order(client: cairn.Tracker) -> None:
    for name, model, accuracy, f1 in [
        ("a", "xgboost", 0.80, 0.70),
        ("b", "xgboost", 0.90, 0.85),
        ("c", "xgboost", 0.95, 0.80),
        ("d", "random_forest", 0.99, 0.95),
    ]:
        with client.run("risk_prediction", run_name=name):
            client.log_params({"model_type": model})
            client.log_metrics({"accuracy": accuracy, "f1_score": f1})
    found = client.search_runs(
        experiment_name="risk_prediction",
        filter_string="params.model_type = 'xgboost' AND metrics.accuracy > 0.85",
        order_by=["metrics.f1_score DESC", "start_time DESC"],
    )
    assert [r.run_name for r in found] == ["b", "c"]
    everything = client.search_runs("risk_prediction", order_by=["metrics.accuracy DESC"])
    assert [r.run_name for r in everything] == ["d", "c", "b", "a"]
    assert client.search_runs("no-such-experiment") == []
    with pytest.raises(cairn.InvalidArgumentError, match="position"):
        client.search_runs("risk_prediction", filter_string="metrics.accuracy >")


def test_compare_runs_is_a_dataframe(client: cairn.Tracker) -> None:
    ids = []
    for depth, accuracy in [(3, 0.8), (6, 0.9)]:
        with client.run("compare") as run:
            client.log_params({"max_depth": depth})
            client.log_metrics({"accuracy": accuracy, "auc": accuracy + 0.05})
            ids.append(run.run_id)
    table = client.compare_runs(ids, metric_names=["accuracy", "f1_score"])
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ids
    assert list(table["accuracy"]) == [0.8, 0.9]
    assert table["f1_score"].isna().all()
    assert list(table["params.max_depth"]) == ["3", "6"]


def test_tags_note_and_downsampled_history(client: cairn.Tracker) -> None:
    run = client.start_run("notes")
    client.set_tags({"purpose": "tuning"})
    client.set_note("PUBLISH: best model")
    for step in range(2_000):
        client.log_metric("loss", math.sin(step / 50) + (5.0 if step == 777 else 0.0), step=step)
    client.end_run()
    fetched = client.get_run(run.run_id)
    assert fetched.note == "PUBLISH: best model"
    assert fetched.tags == {"purpose": "tuning"}
    points = client.get_metric_history(run.run_id, "loss", max_points=100)
    assert len(points) <= 100
    assert points[0].step == 0 and points[-1].step == 1_999
    assert 777 in [p.step for p in points]  # the spike survives downsampling


def test_log_run_decorator_captures_everything(
    tracker_server: ServerThread, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.ckpt"
    with cairn.Tracker(tracker_server.address()) as client:

        @cairn.log_run(experiment_name="decorated", tracker=client, dataset_id="iris")
        def train(
            model_name: str = "logreg", learning_rate: float = 0.1, n_epochs: int = 3
        ) -> dict:
            checkpoint.write_bytes(b"weights")
            return {"accuracy": 0.93, "train_loss": 0.2, "checkpoint": str(checkpoint)}

        result = train("svm", n_epochs=5)
        assert result["accuracy"] == 0.93
        (run,) = client.search_runs("decorated")
        run = client.get_run(run.run_id)
    assert run.status == "FINISHED"
    assert run.params == {"model_name": "svm", "learning_rate": "0.1", "n_epochs": "5"}
    assert run.metrics == {"accuracy": 0.93, "train_loss": 0.2}
    assert [a.path for a in run.artifacts] == ["model.ckpt"]
    assert run.dataset_id == "iris"
    assert run.environment is not None and run.environment.hostname


SCRIPT = textwrap.dedent(
    """
    import sys
    import cairn

    tracker = cairn.Tracker(sys.argv[1], flush_interval=30)
    run = tracker.start_run("exit-test", run_name=sys.argv[2])
    print(run.run_id, flush=True)
    for step in range(5000):
        tracker.log_metric("loss", 1.0 / (step + 1), step=step)
    if sys.argv[2] == "crash":
        raise RuntimeError("crash after logging")
    # no end_run, no flush: process exit must deliver everything
    """
)


@pytest.mark.parametrize("ending", ["clean", "crash"])
def test_process_exit_without_end_run_keeps_every_point(
    client: cairn.Tracker, tracker_server: ServerThread, tmp_path: Path, ending: str
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), tracker_server.address(), ending],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode == 0) == (ending == "clean"), result.stderr
    run_id = result.stdout.split()[0]
    history = client.get_metric_history(run_id, "loss")
    assert len(history) == 5000
    assert [p.step for p in history] == list(range(5000))
    assert client.get_run(run_id).status == ("FINISHED" if ending == "clean" else "FAILED")


def test_unreachable_tracker_is_a_clear_error() -> None:
    with (
        cairn.Tracker("127.0.0.1:9", timeout=2) as client,
        pytest.raises(cairn.UnavailableError, match="cairn up"),
    ):
        client.list_experiments()


class _LostAcknowledgement(grpc.RpcError):
    """What a client sees when the server stored a batch but the reply never arrived."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset after the request was sent"


def test_retried_batch_after_a_lost_acknowledgement_is_stored_once(
    client: cairn.Tracker,
) -> None:
    run = client.start_run("lost-ack")
    attempts: list[str] = []

    def send_then_lose_the_first_reply(name: str, batch_id: str, metrics: list) -> None:  # type: ignore[type-arg]
        client.stub.LogMetrics(
            tracker_service_pb2.LogMetricsRequest(run=name, batch_id=batch_id, metrics=metrics)
        )
        attempts.append(batch_id)
        if len(attempts) == 1:
            raise _LostAcknowledgement()

    sender = MetricSender(send_then_lose_the_first_reply, max_batch=100, interval=0.05)
    points = []
    for step in range(100):
        metric = metric_pb2.Metric(key="loss", value=float(step), step=step)
        points.append(PendingPoint(run.name, metric))
    sender.add(points)
    sender.flush(timeout=30)
    assert len(attempts) == 2 and attempts[0] == attempts[1]  # retried with the same id
    assert len(client.get_metric_history(run.run_id, "loss")) == 100


def test_metrics_logged_while_the_tracker_is_down_arrive_when_it_is_up(
    settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tracker_settings = settings.model_copy(update={"tracker_port": port})
    server = ServerThread(tracker_settings).start()
    address = f"127.0.0.1:{port}"
    with cairn.Tracker(address, flush_interval=0.1) as client:
        run = client.start_run("outage")
        server.stop()  # the tracker goes away...
        for step in range(50):
            client.log_metric("loss", 1.0 / (step + 1), step=step)
        time.sleep(1.0)  # ...the sender keeps retrying...
        restarted = ServerThread(tracker_settings).start()  # ...and the same address is back
        try:
            client.flush(timeout=60)
            assert len(client.get_metric_history(run.run_id, "loss")) == 50
        finally:
            restarted.stop()


def test_stream_metrics_bulk_ingest_is_idempotent_with_a_batch_prefix(
    client: cairn.Tracker,
) -> None:
    run = client.start_run("bulk")
    points = [("loss", 1.0 / (step + 1), step, 1_700_000_000_000 + step) for step in range(25_000)]
    assert client.stream_metrics(points, batch_size=10_000, batch_id_prefix="import-1") == 25_000
    # The same ingest again (a re-run of a script): acknowledged, nothing stored twice.
    assert client.stream_metrics(points, batch_size=10_000, batch_id_prefix="import-1") == 25_000
    history = client.get_metric_history(run.run_id, "loss")
    assert len(history) == 25_000
    assert history[7].timestamp is not None
    assert int(history[7].timestamp.timestamp() * 1000) == 1_700_000_000_007


def test_stream_metrics_several_keys_mixed_timestamps_and_bad_points(
    client: cairn.Tracker,
) -> None:
    run = client.start_run("bulk-mixed")
    before = int(time.time() * 1000)
    points: list[Any] = []
    for step in range(30):
        points.append(("loss", 1.0 / (step + 1), step, 1_700_000_000_000 + step))
        points.append(("acc", step / 30, step))  # no timestamp: the client's clock
    points.append(("acc", float("nan"), 30))
    assert client.stream_metrics(iter(points), batch_size=7) == 61
    loss = client.get_metric_history(run.run_id, "loss")
    assert [(p.step, p.value) for p in loss] == [(s, 1.0 / (s + 1)) for s in range(30)]
    assert loss[3].timestamp is not None
    assert int(loss[3].timestamp.timestamp() * 1000) == 1_700_000_000_003
    acc = client.get_metric_history(run.run_id, "acc")
    assert [p.step for p in acc] == list(range(31))
    assert math.isnan(acc[-1].value)
    assert acc[0].timestamp is not None
    assert acc[0].timestamp.timestamp() * 1000 >= before - 1_000
    with pytest.raises(cairn.InvalidArgumentError):
        client.stream_metrics([("loss", "not a number", 1)])  # type: ignore[list-item]
    with pytest.raises(cairn.InvalidArgumentError):
        client.stream_metrics([("bad\x00key", 1.0, 1)])
    assert len(client.get_metric_history(run.run_id, "loss")) == 30


def test_full_history_over_several_pages(client: cairn.Tracker) -> None:
    """More points than one page of the SDK's history read (100,000): every point comes back
    once, in step order (a step's points in logging order, also where a page ends inside a
    step), NaN and infinities as logged, timestamps to the millisecond."""
    count, t0 = 200_003, 1_700_000_000_000

    def value(i: int) -> float:
        return math.nan if i % 1000 == 500 else math.inf if i == 7 else i / 4

    run = client.start_run("long-history")
    points = [("loss", value(i), i // 3, t0 + i) for i in range(count)]
    assert client.stream_metrics(points, batch_size=10_000) == count
    history = client.get_metric_history(run.run_id, "loss")
    assert isinstance(history, cairn.MetricHistory)
    assert len(history) == count
    assert history.steps() == [i // 3 for i in range(count)]
    assert history.timestamps_ms() == [t0 + i for i in range(count)]
    got = history.values()
    assert [i for i, v in enumerate(got) if math.isnan(v)] == list(range(500, count, 1000))
    assert all(got[i] == value(i) for i in range(count) if i % 1000 != 500)
    # Points are built as they are read, from either page.
    at = datetime.fromtimestamp((t0 + 100_000) / 1000, tz=UTC)
    assert history[100_000] == cairn.MetricPoint(33_333, 25_000.0, at)
    assert history[99_999].step == 33_333 and history[99_999].value == 99_999 / 4
    assert history[-1] == history[count - 1] and history[-1].step == (count - 1) // 3
    assert history[7].value == math.inf and math.isnan(history[500].value)
    assert history[200_000:200_002] == [history[200_000], history[200_001]]
    steps = []
    for point in history:
        steps.append(point.step)
    assert steps == history.steps()
    copied = pickle.loads(pickle.dumps(history))
    assert copied.steps() == history.steps() and len(copied) == count


def test_stream_metrics_refuses_a_tracker_that_stored_fewer_points() -> None:
    """A tracker older than columnar batches ignores the columns field and acknowledges
    empty batches: the SDK says so instead of reporting the points as stored."""
    from concurrent.futures import ThreadPoolExecutor

    from cairn.tracker.v1 import tracker_service_pb2_grpc

    class OlderTracker(tracker_service_pb2_grpc.TrackerServiceServicer):
        def StreamMetrics(self, request_iterator: Any, context: Any) -> Any:
            batches = list(request_iterator)
            stored = sum(len(batch.metrics) for batch in batches)  # no columns known
            return tracker_service_pb2.StreamMetricsResponse(
                batch_count=len(batches), stored_point_count=stored
            )

    server = grpc.server(ThreadPoolExecutor(2))
    tracker_service_pb2_grpc.add_TrackerServiceServicer_to_server(OlderTracker(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = cairn.Tracker(f"127.0.0.1:{port}", capture_environment=False)
    try:
        with pytest.raises(cairn.CairnError, match="stored 0 of 3 points"):
            client.stream_metrics([("m", 1.0, s) for s in range(3)], run_id="r1")
    finally:
        client.close()
        server.stop(0)
