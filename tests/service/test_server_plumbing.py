"""What every call of the tracker's server gets regardless of the RPC: request ids, error
mapping without leaks, health, reflection, bearer-token auth and start-up validation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import text

from cairn.common.v1 import environment_pb2, lineage_pb2
from cairn.tracker.v1 import experiment_pb2, metric_pb2, run_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.common.db import Database
from services.common.errors import ConfigurationError
from services.common.settings import load_settings

from cairn_testing import (
    ServerThread,
    TrackerStub,
    error_info,
    expect_error,
    make_settings,
    new_experiment,
    new_run,
    upload,
    upload_requests,
)

TRACKER_SERVICE = "cairn.tracker.v1.TrackerService"
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "SELECT",
    "INSERT",
    "params",
    "no such table",
    "does not exist",
    ".py",
)


def request_id_of(metadata: Any) -> str:
    values = [value for key, value in metadata or () if key == "x-request-id"]
    assert len(values) == 1, f"expected one x-request-id, got {metadata}"
    return str(values[0])


# ------------------------------------------------------------------ request ids


def test_every_response_carries_a_request_id(tracker: TrackerStub) -> None:
    experiment, call = tracker.CreateExperiment.with_call(
        pb.CreateExperimentRequest(experiment=experiment_pb2.Experiment(display_name="rid"))
    )
    first = request_id_of(call.trailing_metadata())
    assert len(first) == 32  # a fresh uuid hex per call
    _, call = tracker.GetExperiment.with_call(pb.GetExperimentRequest(name=experiment.name))
    assert request_id_of(call.trailing_metadata()) != first

    # Errors carry it in the trailers and in the ErrorInfo.
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        tracker.GetExperiment,
        pb.GetExperimentRequest(name="experiments/x"),
    )
    rid = request_id_of(error.trailing_metadata())
    assert error_info(error).metadata["request_id"] == rid
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, tracker.GetExperiment, pb.GetExperimentRequest(name="x")
    )
    assert error_info(error).metadata["request_id"] == request_id_of(error.trailing_metadata())

    # Streams too: client streaming, server streaming and their errors.
    run = new_run(tracker, experiment)
    _, call = tracker.UploadArtifact.with_call(upload_requests(run.name, "a.txt", b"abc"))
    assert request_id_of(call.trailing_metadata())
    _, call = tracker.StreamMetrics.with_call(
        iter([pb.StreamMetricsRequest(run=run.name, metrics=[metric_pb2.Metric(key="m")])])
    )
    assert request_id_of(call.trailing_metadata())
    responses = tracker.DownloadArtifact(pb.DownloadArtifactRequest(run=run.name, path="a.txt"))
    assert b"".join(r.chunk for r in responses) == b"abc"
    assert request_id_of(responses.trailing_metadata())
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        tracker.DownloadArtifact,
        pb.DownloadArtifactRequest(run=run.name, path="missing.txt"),
    )
    assert error_info(error).metadata["request_id"] == request_id_of(error.trailing_metadata())


def test_a_client_request_id_is_echoed(tracker: TrackerStub) -> None:
    metadata = (("x-request-id", "client-chosen-42"),)
    _, call = tracker.ListExperiments.with_call(pb.ListExperimentsRequest(), metadata=metadata)
    assert request_id_of(call.trailing_metadata()) == "client-chosen-42"

    with pytest.raises(grpc.RpcError) as info:
        tracker.GetExperiment(pb.GetExperimentRequest(name="experiments/none"), metadata=metadata)
    assert request_id_of(info.value.trailing_metadata()) == "client-chosen-42"
    assert error_info(info.value).metadata["request_id"] == "client-chosen-42"

    run = new_run(tracker, new_experiment(tracker))
    _, call = tracker.UploadArtifact.with_call(
        upload_requests(run.name, "b.txt", b"b"), metadata=metadata
    )
    assert request_id_of(call.trailing_metadata()) == "client-chosen-42"
    responses = tracker.DownloadArtifact(
        pb.DownloadArtifactRequest(run=run.name, path="b.txt"), metadata=metadata
    )
    list(responses)
    assert request_id_of(responses.trailing_metadata()) == "client-chosen-42"

    # Overlong ids are cut to 128 characters.
    _, call = tracker.ListExperiments.with_call(
        pb.ListExperimentsRequest(), metadata=(("x-request-id", "r" * 500),)
    )
    assert request_id_of(call.trailing_metadata()) == "r" * 128


# ------------------------------------------------------------------ no leaks


def test_an_unexpected_error_is_internal_without_details(
    tracker: TrackerStub, database_url: str
) -> None:
    run = new_run(tracker, new_experiment(tracker))
    # Break the database under the running server: a failure no validation can foresee.
    database = Database(database_url)
    try:
        with database.engine.begin() as connection:
            connection.execute(text("DROP TABLE params"))
    finally:
        database.dispose()

    error = expect_error(
        grpc.StatusCode.INTERNAL,
        tracker.LogParams,
        pb.LogParamsRequest(run=run.name, params={"lr": "0.1"}),
        metadata=(("x-request-id", "trace-me"),),
    )
    assert error.details() == "internal error (request id trace-me)"
    for marker in LEAK_MARKERS:
        assert marker not in error.details()
    info = error_info(error)
    assert info.reason == "INTERNAL"
    assert dict(info.metadata) == {"request_id": "trace-me"}
    assert request_id_of(error.trailing_metadata()) == "trace-me"
    for key, value in error.trailing_metadata():
        if key == "grpc-status-details-bin":
            continue
        assert all(marker not in str(value) for marker in LEAK_MARKERS)
    # GetRun reads params as well; the server survives and answers what it still can.
    expect_error(grpc.StatusCode.INTERNAL, tracker.GetRun, pb.GetRunRequest(name=run.name))
    basic = tracker.GetRun(pb.GetRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC))
    assert basic.run_id == run.run_id


def _nul_calls(
    tracker: TrackerStub, experiment: experiment_pb2.Experiment, run: run_pb2.Run
) -> list[tuple[str, Callable[[], Any]]]:
    nul = "a\x00b"
    return [
        (
            "experiment name",
            lambda: new_experiment(tracker, nul),
        ),
        ("description", lambda: new_experiment(tracker, description=nul)),
        ("experiment tag", lambda: new_experiment(tracker, tags={"k": nul})),
        (
            "request id",
            lambda: tracker.CreateExperiment(
                pb.CreateExperimentRequest(
                    experiment=experiment_pb2.Experiment(display_name="nul-rid"), request_id=nul
                )
            ),
        ),
        (
            "by name",
            lambda: tracker.GetExperimentByName(pb.GetExperimentByNameRequest(display_name=nul)),
        ),
        (
            "update",
            lambda: tracker.UpdateExperiment(
                pb.UpdateExperimentRequest(
                    experiment=experiment_pb2.Experiment(name=experiment.name, description=nul)
                )
            ),
        ),
        ("run name", lambda: new_run(tracker, experiment, run_name=nul)),
        ("note", lambda: new_run(tracker, experiment, note=nul)),
        ("user", lambda: new_run(tracker, experiment, user=nul)),
        ("run tag", lambda: new_run(tracker, experiment, tags={"t": nul})),
        ("lineage", lambda: new_run(tracker, experiment, dataset_id=nul)),
        (
            "pipeline",
            lambda: new_run(tracker, experiment, lineage=lineage_pb2.Lineage(pipeline_id=nul)),
        ),
        (
            "environment",
            lambda: new_run(
                tracker, experiment, environment=environment_pb2.Environment(git_diff=nul)
            ),
        ),
        (
            "update run",
            lambda: tracker.UpdateRun(
                pb.UpdateRunRequest(
                    run=run_pb2.Run(name=run.name, note=nul),
                    update_mask=field_mask_pb2.FieldMask(paths=["note"]),
                )
            ),
        ),
        (
            "set tag",
            lambda: tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={"t": nul})),
        ),
        (
            "param",
            lambda: tracker.LogParams(pb.LogParamsRequest(run=run.name, params={"p": nul})),
        ),
        (
            "batch id",
            lambda: tracker.LogMetrics(pb.LogMetricsRequest(run=run.name, batch_id=nul)),
        ),
        (
            "history key",
            lambda: tracker.ListMetricHistory(
                pb.ListMetricHistoryRequest(run=run.name, metric_key=nul)
            ),
        ),
        (
            "tag key",
            lambda: tracker.DeleteRunTag(pb.DeleteRunTagRequest(run=run.name, key=nul)),
        ),
        (
            "search ids",
            lambda: tracker.SearchRuns(pb.SearchRunsRequest(experiment_ids=[nul])),
        ),
        ("filter", lambda: tracker.SearchRuns(pb.SearchRunsRequest(filter=f"tags.t = '{nul}'"))),
        ("order", lambda: tracker.SearchRuns(pb.SearchRunsRequest(order_by=f"tags.`{nul}`"))),
        (
            "experiment filter",
            lambda: tracker.ListExperiments(
                pb.ListExperimentsRequest(filter=f"display_name = '{nul}'")
            ),
        ),
        (
            "prefix",
            lambda: tracker.ListArtifacts(
                pb.ListArtifactsRequest(parent=run.name, path_prefix=nul)
            ),
        ),
        ("artifact path", lambda: upload(tracker, run.name, nul, b"x")),
        (
            "purge ids",
            lambda: tracker.PurgeDeleted(pb.PurgeDeletedRequest(experiment_ids=[nul])),
        ),
    ]


def test_nul_characters_are_invalid_argument_everywhere(tracker: TrackerStub) -> None:
    """PostgreSQL text cannot hold NUL: every database refuses it up front, never INTERNAL."""
    experiment = new_experiment(tracker, "nul-home")
    run = new_run(tracker, experiment)
    for what, call in _nul_calls(tracker, experiment, run):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            what,
            info.value.code(),
            info.value.details(),
        )
        assert error_info(info.value).reason != "INTERNAL", what
    names = tracker.ListExperiments(pb.ListExperimentsRequest(lifecycle_filter=3)).experiments
    assert [e.display_name for e in names] == ["nul-home"]
    assert len(tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name)).runs) == 1


# ------------------------------------------------------------------ health and reflection


def test_health_reports_serving(tracker_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(tracker_channel)
    for service in ("", TRACKER_SERVICE):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        health.Check,
        health_pb2.HealthCheckRequest(service="cairn.nothing.v1.Nope"),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_tracker(tracker_channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(tracker_channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=TRACKER_SERVICE),
    ]
    listing, symbol = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listing.list_services_response.service}
    assert {TRACKER_SERVICE, "grpc.health.v1.Health"} <= names
    files = symbol.file_descriptor_response.file_descriptor_proto
    assert files, symbol
    methods = set()
    for raw in files:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in proto.service:
            if f"{proto.package}.{service.name}" == TRACKER_SERVICE:
                methods = {m.name for m in service.method}
    assert {"CreateRun", "SearchRuns", "UploadArtifact", "PurgeDeleted"} <= methods


# ------------------------------------------------------------------ auth


@pytest.fixture
def secured(database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    settings = make_settings(database_url, tmp_path / "secured", auth_tokens="s3cret, other")
    server = ServerThread(settings, ("tracker",)).start()
    yield server
    server.stop()


def test_bearer_tokens_guard_every_rpc_but_health(secured: ServerThread) -> None:
    with grpc.insecure_channel(secured.address()) as channel:
        tracker = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        request = pb.ListExperimentsRequest()
        for metadata in (
            (),
            (("authorization", "Bearer wrong"),),
            (("authorization", "Bearer s3cret-not"),),
            (("authorization", "Basic s3cret"),),
            (("authorization", "s3cret"),),
            (("authorization", "Bearer "),),
            (("x-api-key", "s3cret"),),
        ):
            error = expect_error(
                grpc.StatusCode.UNAUTHENTICATED, tracker.ListExperiments, request, metadata=metadata
            )
            assert "bearer token" in error.details()
            assert "s3cret" not in error.details()
            assert request_id_of(error.trailing_metadata())

        good = (("authorization", "Bearer s3cret"),)
        experiment = tracker.CreateExperiment(
            pb.CreateExperimentRequest(experiment=experiment_pb2.Experiment(display_name="auth")),
            metadata=good,
        )
        assert tracker.ListExperiments(request, metadata=good).experiments == [experiment]
        for also_good in ("Bearer other", "bearer s3cret"):
            response = tracker.ListExperiments(request, metadata=(("authorization", also_good),))
            assert len(response.experiments) == 1

        # Streaming RPCs are guarded too, and nothing is written without a token.
        run = tracker.CreateRun(pb.CreateRunRequest(parent=experiment.name), metadata=good)
        expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            tracker.UploadArtifact,
            upload_requests(run.name, "x.bin", b"x"),
        )
        expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            tracker.DownloadArtifact,
            pb.DownloadArtifactRequest(run=run.name, path="x.bin"),
        )
        expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            tracker.StreamMetrics,
            iter([pb.StreamMetricsRequest(run=run.name, metrics=[metric_pb2.Metric(key="m")])]),
        )
        listed = tracker.ListArtifacts(pb.ListArtifactsRequest(parent=run.name), metadata=good)
        assert not listed.artifacts
        tracker.UploadArtifact(upload_requests(run.name, "x.bin", b"x"), metadata=good)

        # Probes need no token.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", TRACKER_SERVICE):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_binding_beyond_loopback_requires_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_HOST", "0.0.0.0")
    monkeypatch.delenv("CAIRN_AUTH_TOKENS", raising=False)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "CAIRN_HOST=0.0.0.0" in str(info.value)
    assert "CAIRN_AUTH_TOKENS" in str(info.value)
    monkeypatch.setenv("CAIRN_AUTH_TOKENS", " , ")  # blank tokens are no tokens
    with pytest.raises(ConfigurationError):
        load_settings()
    monkeypatch.setenv("CAIRN_AUTH_TOKENS", "s3cret")
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    assert settings.tokens == frozenset({"s3cret"})
    monkeypatch.delenv("CAIRN_AUTH_TOKENS")
    for loopback in ("127.0.0.1", "::1", "localhost"):
        monkeypatch.setenv("CAIRN_HOST", loopback)
        assert load_settings().host == loopback
