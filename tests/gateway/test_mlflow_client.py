"""The unmodified MLflow client logs into Cairn through the gateway's MLflow REST layer.

A typical training script runs against `gateway_url` (a real tracker and gateway, on SQLite
and PostgreSQL); what it logged is then read back through MLflow's client and, to prove it
landed in Cairn, through Cairn's own SDK.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import mlflow.tracking.fluent as fluent
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

import cairn

from cairn_testing import ServerThread

REPORT = b"precision 0.75\nrecall 0.81\n"
MODEL_FILES = {
    "MLmodel": b"flavors: {}\n",
    "weights/layer1.bin": bytes(range(256)) * 64,
    "weights/nested/deep.json": b'{"deep": true}',
}


@pytest.fixture
def tracking(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """MLflow's fluent API and a client pointed at the gateway, restored afterwards."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(gateway_url)
    try:
        yield MlflowClient(gateway_url)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _names(runs: list[mlflow.entities.Run]) -> list[str]:
    return [run.info.run_name for run in runs]


def test_training_script_logs_into_cairn(
    tracking: MlflowClient, gateway_server: ServerThread, tmp_path: Path
) -> None:
    # ---- an ordinary MLflow training script
    experiment = mlflow.set_experiment("mlflow-compat")
    (tmp_path / "report.txt").write_bytes(REPORT)
    _write_tree(tmp_path / "model", MODEL_FILES)
    losses = [0.9, 0.5, 0.3, 0.2, 0.15]
    with mlflow.start_run(run_name="train") as parent:
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"model": "xgb", "depth": 6})
        for step, loss in enumerate(losses):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8})
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev", "key with space": "v"})
        mlflow.log_artifact(str(tmp_path / "report.txt"))
        mlflow.log_artifacts(str(tmp_path / "model"), artifact_path="model")
        for name, depth, acc in (("trial-1", 3, 0.7), ("trial-2", 9, 0.95)):
            with mlflow.start_run(run_name=name, nested=True):
                mlflow.log_param("depth", depth)
                mlflow.log_metric("acc", acc)
    parent_id = parent.info.run_id
    experiment_id = experiment.experiment_id

    # ---- read back through MLflow
    client = tracking
    search = client.search_runs
    assert _names(search([experiment_id], "metrics.acc > 0.8", order_by=["metrics.acc DESC"])) == [
        "trial-2",
        "train",
    ]
    assert _names(search([experiment_id], "metrics.acc > 0.5 and params.model = 'xgb'")) == [
        "train"
    ]
    children = search(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
    )
    assert _names(children) == ["trial-1", "trial-2"]
    assert _names(search([experiment_id], "attributes.run_name = 'trial-1'")) == ["trial-1"]
    assert _names(search([experiment_id], "tags.mlflow.runName = 'trial-2'")) == ["trial-2"]
    assert _names(search([experiment_id], "tags.\"key with space\" = 'v'")) == ["train"]
    finished = search([experiment_id], "attributes.status = 'FINISHED'", order_by=["params.depth"])
    assert _names(finished) == ["trial-1", "train", "trial-2"]

    run = client.get_run(parent_id)
    assert run.info.run_name == "train"
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == experiment_id
    assert run.info.lifecycle_stage == "active"
    assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
    assert run.info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{parent_id}/artifacts"
    assert run.data.params == {"lr": "0.01", "model": "xgb", "depth": "6"}
    assert run.data.metrics == {"loss": 0.15, "acc": 0.9, "f1": 0.8}
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.source")} == {
        "team": "vision",
        "stage": "dev",
        "key with space": "v",
        "mlflow.runName": "train",
        "mlflow.user": run.info.user_id,
    }
    history = client.get_metric_history(parent_id, "loss")
    assert [(m.step, m.value) for m in history] == list(enumerate(losses))

    listed = client.list_artifacts(parent_id)
    assert [(f.path, f.is_dir, f.file_size) for f in listed] == [
        ("model", True, None),
        ("report.txt", False, len(REPORT)),
    ]
    assert [(f.path, f.is_dir) for f in client.list_artifacts(parent_id, "model/weights")] == [
        ("model/weights/layer1.bin", False),
        ("model/weights/nested", True),
    ]
    downloaded = Path(client.download_artifacts(parent_id, "", str(tmp_path / "download")))
    assert _tree(downloaded) == {"report.txt": REPORT} | {
        f"model/{path}": content for path, content in MODEL_FILES.items()
    }
    single = mlflow.artifacts.download_artifacts(
        run_id=parent_id, artifact_path="report.txt", dst_path=str(tmp_path / "single")
    )
    assert Path(single).read_bytes() == REPORT

    found = client.search_experiments(filter_string="name = 'mlflow-compat'")
    assert [e.experiment_id for e in found] == [experiment_id]
    assert client.get_experiment_by_name("mlflow-compat").experiment_id == experiment_id

    trial_1 = children[0].info.run_id
    client.delete_run(trial_1)
    assert _names(search([experiment_id], "params.depth = '3'")) == []
    deleted = search([experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert _names(deleted) == ["trial-1"]
    assert client.get_run(trial_1).info.lifecycle_stage == "deleted"
    client.restore_run(trial_1)
    assert _names(search([experiment_id], "params.depth = '3'")) == ["trial-1"]

    client.rename_experiment(experiment_id, "mlflow-compat-renamed")
    assert client.get_experiment(experiment_id).name == "mlflow-compat-renamed"

    # ---- the same data, through Cairn's own SDK
    tracker = cairn.Tracker(gateway_server.address("tracker"), capture_environment=False)
    try:
        stored = tracker.get_run(parent_id)
        assert stored.experiment_id == experiment_id
        assert stored.run_name == "train"
        assert stored.status == "FINISHED"
        assert stored.params == {"lr": "0.01", "model": "xgb", "depth": "6"}
        assert stored.metrics == {"loss": 0.15, "acc": 0.9, "f1": 0.8}
        assert {k: v for k, v in stored.tags.items() if not k.startswith("mlflow.source")} == {
            "team": "vision",
            "stage": "dev",
            "key with space": "v",
        }
        assert stored.user == run.info.user_id
        points = tracker.get_metric_history(parent_id, "loss")
        assert [(p.step, p.value) for p in points] == list(enumerate(losses))
        artifacts = {a.path: a for a in tracker.list_artifacts(parent_id)}
        expected = {"report.txt": REPORT} | {f"model/{p}": c for p, c in MODEL_FILES.items()}
        assert sorted(artifacts) == sorted(expected)
        for path, content in expected.items():
            assert artifacts[path].size_bytes == len(content)
            assert artifacts[path].sha256 == hashlib.sha256(content).hexdigest()
        assert artifacts["model/MLmodel"].artifact_type == "model"
        assert artifacts["model/weights/nested/deep.json"].artifact_type == "other"
        child = tracker.get_run(trial_1)
        assert child.tags["mlflow.parentRunId"] == parent_id
        assert child.params == {"depth": "3"}
        assert tracker.get_experiment(experiment_id).name == "mlflow-compat-renamed"
    finally:
        tracker.close()


def test_mlflow_errors_keep_their_codes(tracking: MlflowClient) -> None:
    client = tracking
    experiment_id = client.create_experiment("errors")
    run = client.create_run(experiment_id, run_name="r")
    client.log_param(run.info.run_id, "alpha", "1")
    client.log_param(run.info.run_id, "alpha", "1")  # the same value again is fine

    with pytest.raises(MlflowException) as changed:
        client.log_param(run.info.run_id, "alpha", "2")
    assert changed.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Changing param values is not allowed" in changed.value.message
    assert client.get_run(run.info.run_id).data.params == {"alpha": "1"}

    with pytest.raises(MlflowException) as missing:
        client.get_run("0123456789abcdef0123456789abcdef")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    with pytest.raises(MlflowException) as exists:
        client.create_experiment("errors")
    assert exists.value.error_code == "RESOURCE_ALREADY_EXISTS"

    assert client.get_experiment_by_name("no such experiment") is None


def test_default_experiment_is_zero(tracking: MlflowClient, gateway_server: ServerThread) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.0)
    assert run.info.experiment_id == "0"
    assert run.info.artifact_uri.startswith(f"mlflow-artifacts:/0/{run.info.run_id}/")
    default = tracking.get_experiment("0")
    assert (default.experiment_id, default.name, default.lifecycle_stage) == (
        "0",
        "Default",
        "active",
    )
    assert [r.info.run_id for r in tracking.search_runs(["0"])] == [run.info.run_id]
    assert tracking.get_run(run.info.run_id).info.experiment_id == "0"

    tracker = cairn.Tracker(gateway_server.address("tracker"), capture_environment=False)
    try:
        stored = tracker.get_run(run.info.run_id)
        assert tracker.get_experiment("Default").experiment_id == stored.experiment_id
        assert stored.metrics == {"m": 1.0}
        assert stored.status == "FINISHED"
    finally:
        tracker.close()


class Doubler(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    def predict(
        self, context: object, model_input: list[float], params: object = None
    ) -> list[float]:
        return [2 * x for x in model_input]


def test_log_model_and_load_it_back(
    tracking: MlflowClient, gateway_server: ServerThread, tmp_path: Path
) -> None:
    """MLflow 3's logged models: log_model inside a run, read it, load it, predict, search,
    tag it; its files are the run's MODEL artifacts in Cairn."""
    import pandas as pd

    experiment = mlflow.set_experiment("logged-models")
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_param("lr", "0.1")
        mlflow.log_metric("acc", 0.5, step=0)
        mlflow.log_metric("acc", 0.7, step=1)
        frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
        mlflow.log_input(mlflow.data.from_pandas(frame, name="train-df"), context="training")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Doubler(),
            step=1,
            tags={"team": "vision"},
            pip_requirements=["mlflow-skinny"],  # no requirement inference (a subprocess)
        )
        mlflow.log_metric("acc", 0.9, step=1)
    run_id = run.info.run_id
    model_id = info.model_id
    assert info.model_uri == f"models:/{model_id}"

    model = mlflow.get_logged_model(model_id)
    assert (model.name, model.status.to_proto(), model.source_run_id) == (
        "model",
        2,  # LOGGED_MODEL_READY
        run_id,
    )
    assert model.experiment_id == experiment.experiment_id
    assert model.params == {"lr": "0.1"}
    assert model.tags["team"] == "vision"
    assert model.artifact_location == (
        f"mlflow-artifacts:/{experiment.experiment_id}/{run_id}/artifacts/models/{model_id}"
    )
    # log_model logs the step's metrics again with the model's id: stored once
    history = tracking.get_metric_history(run_id, "acc")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.7), (1, 0.9)]

    stored_run = tracking.get_run(run_id)
    assert [(o.model_id, o.step) for o in stored_run.outputs.model_outputs] == [(model_id, 1)]
    [dataset_input] = stored_run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "train-df"
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}
    assert not any(key.startswith("cairn.") for key in stored_run.data.tags)

    # load it back: by model id and by run-relative name
    for uri in (info.model_uri, f"runs:/{run_id}/model"):
        loaded = mlflow.pyfunc.load_model(uri)
        assert list(loaded.predict([1.0, 2.5])) == [2.0, 5.0], uri
    assert [f.path for f in tracking.list_artifacts(run_id, "model")] == [
        "model/MLmodel",
        "model/conda.yaml",
        "model/python_env.yaml",
        "model/python_model.pkl",
        "model/requirements.txt",
    ]

    tracking.set_logged_model_tags(model_id, {"stage": "prod"})
    tracking.delete_logged_model_tag(model_id, "team")
    assert "team" not in mlflow.get_logged_model(model_id).tags
    external = mlflow.create_external_model(name="ext", source_run_id=run_id)
    assert external.status.to_proto() == 2

    found = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string="name = 'model' AND tags.stage = 'prod'",
        output_format="list",
    )
    assert [m.model_id for m in found] == [model_id]
    everything = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id], output_format="list"
    )
    assert [m.name for m in everything] == ["ext", "model"]  # newest first
    first = tracking.search_logged_models([experiment.experiment_id], max_results=1)
    second = tracking.search_logged_models(
        [experiment.experiment_id], max_results=1, page_token=first.token
    )
    assert [m.name for m in first] + [m.name for m in second] == ["ext", "model"]
    assert second.token is None
    by_name = tracking.search_logged_models(
        [experiment.experiment_id], order_by=[{"field_name": "name", "ascending": False}]
    )
    assert [m.name for m in by_name] == ["model", "ext"]
    tracking.delete_logged_model(external.model_id)
    with pytest.raises(MlflowException) as gone:
        tracking.get_logged_model(external.model_id)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert [m.name for m in mlflow.search_logged_models(output_format="list")] == ["model"]

    # outside a run: refused, saying why
    with pytest.raises(MlflowException) as orphan:
        mlflow.pyfunc.log_model(name="orphan", python_model=Doubler(), pip_requirements=[])
    assert orphan.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "inside a run" in orphan.value.message

    # in Cairn: the run's MODEL artifacts under models/<model_id>/, and the model's record
    tracker = cairn.Tracker(gateway_server.address("tracker"), capture_environment=False)
    try:
        artifacts = {a.path: a for a in tracker.list_artifacts(run_id)}
        files = sorted(p for p in artifacts if p.startswith(f"models/{model_id}/"))
        assert [p.rsplit("/", 1)[1] for p in files] == [
            "MLmodel",
            "conda.yaml",
            "python_env.yaml",
            "python_model.pkl",
            "requirements.txt",
        ]
        assert {artifacts[p].artifact_type for p in files} == {"model"}
        assert artifacts[f"models/{model_id}.json"].artifact_type == "model"
        stored = tracker.get_run(run_id)
        listed = json.loads(stored.tags[f"cairn.mlflow.model.{model_id}"])
        assert listed == {"name": "model", "created": model.creation_timestamp}
    finally:
        tracker.close()
