"""Run tokens against a real tracker (and the REST gateway) with auth on: a job's token may
write its own run and read it back, nothing else; CAIRN_AUTH_TOKENS tokens keep full access."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from cairn.tracker.v1 import experiment_pb2, run_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.common.run_tokens import mint_run_token, run_token_secret

from cairn_testing import (
    MiB,
    ServerThread,
    TrackerStub,
    error_info,
    expect_error,
    make_settings,
    metric,
    new_experiment,
    new_run,
    upload_requests,
)

FULL = (("authorization", "Bearer s3cret"),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Authorized:
    """A stub whose every call carries one bearer token."""

    def __init__(self, stub: TrackerStub, token: str) -> None:
        self._stub = stub
        self._metadata = bearer(token)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda request, **kwargs: method(request, metadata=self._metadata, **kwargs)


@pytest.fixture
def secured(database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    settings = make_settings(database_url, tmp_path / "secured", auth_tokens="s3cret")
    server = ServerThread(settings, ("tracker",)).start()
    yield server
    server.stop()


@pytest.fixture
def stub(secured: ServerThread) -> Iterator[TrackerStub]:
    with grpc.insecure_channel(secured.address()) as channel:
        yield tracker_service_pb2_grpc.TrackerServiceStub(channel)


@pytest.fixture
def admin(stub: TrackerStub) -> Any:
    """The tracker with the full token."""
    return Authorized(stub, "s3cret")


@pytest.fixture
def runs(admin: Any) -> tuple[experiment_pb2.Experiment, run_pb2.Run, run_pb2.Run]:
    """An experiment with two runs: the job's own and another."""
    experiment = new_experiment(admin)
    return experiment, new_run(admin, experiment), new_run(admin, experiment)


def token_for(server: ServerThread, run: run_pb2.Run) -> str:
    """What the scheduler hands a job: a token minted with the servers' secret."""
    return mint_run_token(run_token_secret(server.settings), run.name)


def points_of(admin: Any, run: run_pb2.Run, key: str) -> list[tuple[int, float]]:
    history = admin.ListMetricHistory(pb.ListMetricHistoryRequest(run=run.name, metric_key=key))
    return [(p.step, p.value) for p in history.points]


def expect_denied(run: run_pb2.Run, call: Any, *args: Any) -> None:
    error = expect_error(grpc.StatusCode.PERMISSION_DENIED, call, *args)
    assert f"this token may only write run {run.name}" in error.details()
    assert error_info(error).reason == "RUN_TOKEN_SCOPE"


def test_a_run_token_writes_and_reads_its_own_run(
    secured: ServerThread, admin: Any, stub: TrackerStub, runs: Any
) -> None:
    _, own, _ = runs
    job = Authorized(stub, token_for(secured, own))

    logged = job.LogMetrics(pb.LogMetricsRequest(run=own.name, metrics=[metric("loss", 0.9, 0)]))
    assert logged.stored_point_count == 1
    streamed = job.StreamMetrics(
        iter(
            pb.StreamMetricsRequest(
                run=own.name, batch_id=f"b{step}", metrics=[metric("loss", v, step)]
            )
            for step, v in ((1, 0.5), (2, 0.25))
        )
    )
    assert (streamed.batch_count, streamed.stored_point_count) == (2, 2)
    assert (
        job.LogParams(pb.LogParamsRequest(run=own.name, params={"lr": "0.1"})).new_param_count == 1
    )
    job.SetRunTags(pb.SetRunTagsRequest(run=own.name, tags={"epoch": "2"}))
    artifact = job.UploadArtifact(upload_requests(own.name, "model/weights.bin", b"w" * 1000))
    assert artifact.size_bytes == 1000

    # Read-back, also by the run's wildcard name.
    read = job.GetRun(pb.GetRunRequest(name=own.name))
    assert read.name == own.name
    assert (
        job.GetRun(pb.GetRunRequest(name=f"experiments/-/runs/{own.name.split('/')[-1]}")) == read
    )

    # What the full token sees: everything landed on the job's run.
    assert points_of(admin, own, "loss") == [(0, 0.9), (1, 0.5), (2, 0.25)]
    stored = admin.GetRun(pb.GetRunRequest(name=own.name))
    assert dict(stored.params) == {"lr": "0.1"}
    assert stored.tags["epoch"] == "2"
    listed = admin.ListArtifacts(pb.ListArtifactsRequest(parent=own.name))
    assert [a.path for a in listed.artifacts] == ["model/weights.bin"]


def test_a_run_token_may_not_touch_another_run(
    secured: ServerThread, admin: Any, stub: TrackerStub, runs: Any
) -> None:
    _, own, other = runs
    job = Authorized(stub, token_for(secured, own))

    expect_denied(
        own, job.LogMetrics, pb.LogMetricsRequest(run=other.name, metrics=[metric("m", 1)])
    )
    expect_denied(own, job.LogParams, pb.LogParamsRequest(run=other.name, params={"a": "b"}))
    expect_denied(own, job.SetRunTags, pb.SetRunTagsRequest(run=other.name, tags={"a": "b"}))
    expect_denied(own, job.GetRun, pb.GetRunRequest(name=other.name))
    expect_denied(own, job.LogMetrics, pb.LogMetricsRequest(run="", metrics=[metric("m", 1)]))
    # The same run id under another experiment is another name: refused, not resolved.
    run_id = own.name.split("/")[-1]
    expect_denied(own, job.GetRun, pb.GetRunRequest(name=f"experiments/elsewhere/runs/{run_id}"))

    # A stream is checked message by message: one batch for another run ends it, and the
    # other run gets nothing.
    def mixed() -> Iterator[pb.StreamMetricsRequest]:
        yield pb.StreamMetricsRequest(run=own.name, batch_id="ok", metrics=[metric("m", 1, 0)])
        yield pb.StreamMetricsRequest(run=other.name, batch_id="no", metrics=[metric("m", 2, 1)])
        yield pb.StreamMetricsRequest(run=own.name, batch_id="late", metrics=[metric("m", 3, 2)])

    expect_denied(own, job.StreamMetrics, mixed())
    expect_denied(
        own,
        job.StreamMetrics,
        iter([pb.StreamMetricsRequest(run=other.name, metrics=[metric("m", 2, 1)])]),
    )
    assert points_of(admin, other, "m") == []
    assert (2, 3.0) not in points_of(admin, own, "m")

    # Uploads: the metadata names the run; a stream that starts with content names none.
    expect_denied(own, job.UploadArtifact, upload_requests(other.name, "x.bin", b"x" * 10))
    # The client may still be writing when it is refused: it sees the refusal all the same.
    big = upload_requests(other.name, "big.bin", b"x" * (16 * MiB), chunk_size=MiB)
    expect_denied(own, job.UploadArtifact, big)
    expect_denied(
        own,
        job.UploadArtifact,
        iter([pb.UploadArtifactRequest(chunk=b"x"), *upload_requests(own.name, "y", b"y")]),
    )
    assert not admin.ListArtifacts(pb.ListArtifactsRequest(parent=other.name)).artifacts
    assert not admin.ListArtifacts(pb.ListArtifactsRequest(parent=own.name)).artifacts

    # Nothing else, not even on its own run.
    experiment = experiment_pb2.Experiment(display_name="by-a-job")
    expect_denied(own, job.CreateExperiment, pb.CreateExperimentRequest(experiment=experiment))
    expect_denied(own, job.DeleteRun, pb.DeleteRunRequest(name=own.name))
    expect_denied(own, job.ListRuns, pb.ListRunsRequest(parent="experiments/-"))
    expect_denied(own, job.UpdateRun, pb.UpdateRunRequest(run=run_pb2.Run(name=own.name)))
    expect_denied(own, job.DeleteRunTag, pb.DeleteRunTagRequest(run=own.name, key="k"))
    expect_denied(
        own, job.ListMetricHistory, pb.ListMetricHistoryRequest(run=own.name, metric_key="m")
    )
    expect_denied(own, job.DownloadArtifact, pb.DownloadArtifactRequest(run=own.name, path="x.bin"))
    # The denials changed nothing.
    assert admin.GetRun(pb.GetRunRequest(name=own.name)).status == own.status
    assert len(admin.ListExperiments(pb.ListExperimentsRequest()).experiments) == 1


def test_forged_and_garbage_tokens_are_unauthenticated(
    secured: ServerThread, stub: TrackerStub, runs: Any
) -> None:
    _, own, other = runs
    genuine = token_for(secured, own)
    prefix, _, mac = genuine.split(".")
    other_part = token_for(secured, other).split(".")[1]
    for credential in (
        "garbage",
        "cairn-run.x.y",
        genuine[:-3],
        f"{prefix}.{other_part}.{mac}",  # own run's MAC on another run
        mint_run_token(b"not the servers' secret at all", own.name),
    ):
        error = expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            stub.LogMetrics,
            pb.LogMetricsRequest(run=own.name, metrics=[metric("m", 1)]),
            metadata=bearer(credential),
        )
        assert "bearer token" in error.details()
        assert error_info(error).reason == "UNAUTHENTICATED"
    # A run token in anything but a Bearer header is no credential either.
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        stub.GetRun,
        pb.GetRunRequest(name=own.name),
        metadata=(("authorization", f"Basic {genuine}"),),
    )


def test_the_full_token_keeps_full_access(admin: Any, runs: Any) -> None:
    experiment, own, other = runs
    admin.LogMetrics(pb.LogMetricsRequest(run=other.name, metrics=[metric("m", 1)]))
    admin.StreamMetrics(
        iter([pb.StreamMetricsRequest(run=run.name, metrics=[metric("m", 2)]) for run in runs[1:]])
    )
    admin.DeleteRun(pb.DeleteRunRequest(name=own.name))
    listed = admin.ListRuns(pb.ListRunsRequest(parent=experiment.name))
    assert [run.name for run in listed.runs] == [other.name]


def test_a_configured_secret_is_the_one_servers_verify_with(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path / "data", auth_tokens="s3cret", run_token_secret="shared" * 4
    )
    server = ServerThread(settings, ("tracker",)).start()
    try:
        with grpc.insecure_channel(server.address()) as channel:
            stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
            run = new_run(Authorized(stub, "s3cret"), new_experiment(Authorized(stub, "s3cret")))
            # What a scheduler in another process, sharing the secret, would mint.
            token = mint_run_token(b"shared" * 4, run.name)
            assert Authorized(stub, token).GetRun(pb.GetRunRequest(name=run.name)) == run
    finally:
        server.stop()


def test_without_auth_tokens_any_bearer_is_ignored(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker)
    run = new_run(tracker, experiment)
    job = Authorized(tracker, mint_run_token(b"whatever key of any length", run.name))
    job.CreateExperiment(
        pb.CreateExperimentRequest(experiment=experiment_pb2.Experiment(display_name="open"))
    )
    anyone = Authorized(tracker, "garbage")
    anyone.LogMetrics(pb.LogMetricsRequest(run=run.name, metrics=[metric("m", 1)]))


# ------------------------------------------------------------------ through the REST gateway


def test_a_run_token_reports_metrics_through_the_gateway(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", auth_tokens="s3cret")
    server = ServerThread(
        settings, ("tracker", "scheduler", "analytics", "logproxy", "gateway")
    ).start()
    try:
        with grpc.insecure_channel(server.address("tracker")) as channel:
            admin = Authorized(tracker_service_pb2_grpc.TrackerServiceStub(channel), "s3cret")
            experiment = new_experiment(admin)
            own, other = new_run(admin, experiment), new_run(admin, experiment)
            headers = {"Authorization": f"Bearer {token_for(server, own)}"}
            batches = [
                {
                    "batchId": f"epoch-{epoch}",
                    "metrics": [{"key": "rmse", "value": 1 / (epoch + 1), "step": epoch}],
                }
                for epoch in range(3)
            ]
            with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=10) as http:
                response = http.post(f"/v1/{own.name}:streamMetrics", json=batches, headers=headers)
                assert response.status_code == 200, response.text
                assert response.json() == {"batchCount": "3", "storedPointCount": "3"}
                assert points_of(admin, own, "rmse") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]

                denied = http.post(f"/v1/{other.name}:streamMetrics", json=batches, headers=headers)
                assert denied.status_code == 403, denied.text
                body = denied.json()
                assert body["code"] == 7
                assert f"this token may only write run {own.name}" in body["message"]
                assert points_of(admin, other, "rmse") == []
                # A raw upload to another run is refused while its body is still arriving.
                upload_headers = {**headers, "content-type": "application/octet-stream"}
                upload = http.post(
                    f"/v1/{other.name}/artifacts:upload",
                    params={"metadata.path": "model.bin"},
                    content=iter([b"x" * MiB] * 16),
                    headers=upload_headers,
                )
                assert upload.status_code == 403, upload.text
                uploaded = http.post(
                    f"/v1/{own.name}/artifacts:upload",
                    params={"metadata.path": "model.bin"},
                    content=iter([b"x" * MiB] * 2),
                    headers=upload_headers,
                )
                assert uploaded.status_code == 200, uploaded.text
                assert http.get("/v1/experiments", headers=headers).status_code == 403
                assert http.get(f"/v1/{own.name}", headers=headers).status_code == 200
                unauthenticated = http.post(
                    f"/v1/{own.name}:streamMetrics",
                    json=batches,
                    headers={"Authorization": "Bearer cairn-run.forged.token"},
                )
                assert unauthenticated.status_code == 401
    finally:
        server.stop()
