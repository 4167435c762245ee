"""Test plumbing: real servers on loopback in a background thread, fresh databases.

Servers run on their own event loop in a thread so tests can be plain synchronous code using
real gRPC stubs or the SDK, exactly as users do.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from cairn.common.v1 import lineage_pb2
from cairn.scheduler.v1 import (
    dataset_pb2,
    feature_config_pb2,
    job_pb2,
    model_config_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)
from cairn.tracker.v1 import (
    artifact_pb2,
    experiment_pb2,
    metric_pb2,
    run_pb2,
    tracker_service_pb2,
    tracker_service_pb2_grpc,
)
from services.common.db import Database
from services.common.server import GrpcService, Runnable, ServiceSpec
from services.common.settings import Settings, load_settings
from services.embedded import MIGRATORS, build_service

POSTGRES_ADMIN_URL = os.environ.get(
    "CAIRN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class ServerThread:
    """One or more Cairn gRPC services on ephemeral loopback ports, in a background loop."""

    def __init__(
        self,
        settings: Settings,
        names: tuple[str, ...] = ("tracker",),
        specs: dict[str, Callable[[Settings], ServiceSpec]] | None = None,
    ) -> None:
        self.settings = settings
        self.names = names
        # Services built from a custom ServiceSpec (a scheduler with a test launcher).
        self.specs = specs or {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test-server", daemon=True
        )
        self.services: dict[str, Runnable] = {}

    def start(self) -> ServerThread:
        self.thread.start()
        settings = self.settings
        for name in self.names:
            # Backends listen on ephemeral ports: point their clients at the real ones.
            settings = settings.model_copy(
                update={
                    f"{backend}_address": self.services[backend].address
                    for backend in ("tracker", "scheduler", "analytics", "logproxy")
                    if backend in self.services
                }
            )
            # The settings say which port (0 in tests: an ephemeral one).
            service = (
                GrpcService(self.specs[name](settings), settings, host="127.0.0.1", port=0)
                if name in self.specs
                else build_service(settings, name, host="127.0.0.1")
            )
            self.call(service.start())
            self.services[name] = service
        return self

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def address(self, name: str = "tracker") -> str:
        return self.services[name].address

    def stop(self, grace: float = 0) -> None:
        for service in reversed(list(self.services.values())):
            self.call(service.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "artifact_root": str(data_dir / "artifacts"),
        "tracker_port": 0,
        "tracker_metrics_port": 0,
        "analytics_port": 0,
        "analytics_metrics_port": 0,
        "scheduler_port": 0,
        "scheduler_metrics_port": 0,
        "logproxy_port": 0,
        "logproxy_metrics_port": 0,
        "gateway_port": 0,
        "worker_threads": 8,
        "shutdown_grace_seconds": 0,
        "page_token_secret": "test-secret",
    }
    values.update(overrides)
    return load_settings(**values)


class PostgresDatabases:
    """Fresh PostgreSQL databases cloned from one migrated template (fast: no DDL per test)."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.admin_url = make_url(admin_url)
        self.template = f"cairn_tmpl_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection[Any]:
        url = self.admin_url
        return psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            dbname=url.database,
            password=url.password,
            autocommit=True,
        )

    def url_for(self, name: str) -> str:
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def create_template(self) -> None:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        settings = load_settings(database_url=self.url_for(self.template))
        for migrate in MIGRATORS.values():
            migrate(settings)

    def fresh(self) -> str:
        name = f"cairn_t_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return self.url_for(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        with self._admin() as conn:
            for name in [*self.created, self.template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'cairn.db'}"


@contextmanager
def migrated_database(url: str) -> Iterator[Database]:
    settings = load_settings(database_url=url)
    for migrate in MIGRATORS.values():
        migrate(settings)
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()


# =====================================================================================
# Tracker service test helpers (tests/service): real stubs, exact status checks.
# =====================================================================================

TrackerStub = tracker_service_pb2_grpc.TrackerServiceStub
MiB = 1 << 20


def expect_error(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `call`, assert it fails with exactly `code`, return the grpc.RpcError (a grpc.Call).

    Streaming responses are consumed, so errors raised mid-stream are caught too.
    """
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            for _ in result:
                pass
    error = info.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    return error


def error_info(error: Any) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail of a failed call (exactly one is expected)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in the trailers of {error.details()!r}"
    assert status.message == error.details()
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"expected one ErrorInfo, got {infos}"
    assert infos[0].domain == "cairn.dev"
    return infos[0]


def new_experiment(
    tracker: TrackerStub, display_name: str | None = None, **fields: Any
) -> experiment_pb2.Experiment:
    name = display_name if display_name is not None else f"exp-{uuid.uuid4().hex[:10]}"
    return tracker.CreateExperiment(
        tracker_service_pb2.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(display_name=name, **fields)
        )
    )


def new_run(
    tracker: TrackerStub,
    experiment: experiment_pb2.Experiment,
    *,
    request_id: str = "",
    dataset_id: str = "",
    model_type: str = "",
    **fields: Any,
) -> run_pb2.Run:
    run = run_pb2.Run(**fields)
    if dataset_id or model_type:
        run.lineage.CopyFrom(lineage_pb2.Lineage(dataset_id=dataset_id, model_type=model_type))
    return tracker.CreateRun(
        tracker_service_pb2.CreateRunRequest(parent=experiment.name, run=run, request_id=request_id)
    )


def log_params(tracker: TrackerStub, run: run_pb2.Run, **params: str) -> int:
    response = tracker.LogParams(tracker_service_pb2.LogParamsRequest(run=run.name, params=params))
    return int(response.new_param_count)


def metric(
    key: str, value: float, step: int = 0, timestamp_ms: int | None = None
) -> metric_pb2.Metric:
    point = metric_pb2.Metric(key=key, value=value, step=step)
    if timestamp_ms is not None:
        point.timestamp.FromMilliseconds(timestamp_ms)
    return point


def log_metrics(
    tracker: TrackerStub, run: run_pb2.Run, points: Iterable[metric_pb2.Metric], batch_id: str = ""
) -> tracker_service_pb2.LogMetricsResponse:
    return tracker.LogMetrics(
        tracker_service_pb2.LogMetricsRequest(run=run.name, batch_id=batch_id, metrics=points)
    )


def upload_requests(
    run_name: str,
    path: str,
    data: bytes,
    *,
    artifact_type: int = artifact_pb2.ARTIFACT_TYPE_OTHER,
    overwrite: bool = False,
    expected_sha256: str = "",
    chunk_size: int = MiB,
) -> Iterator[tracker_service_pb2.UploadArtifactRequest]:
    yield tracker_service_pb2.UploadArtifactRequest(
        metadata=tracker_service_pb2.UploadArtifactMetadata(
            run=run_name,
            path=path,
            artifact_type=artifact_type,
            overwrite=overwrite,
            expected_sha256=expected_sha256,
        )
    )
    for start in range(0, len(data), chunk_size):
        yield tracker_service_pb2.UploadArtifactRequest(chunk=data[start : start + chunk_size])


def upload(
    tracker: TrackerStub, run_name: str, path: str, data: bytes, **options: Any
) -> artifact_pb2.Artifact:
    return tracker.UploadArtifact(upload_requests(run_name, path, data, **options))


def download(tracker: TrackerStub, run_name: str, path: str) -> tuple[artifact_pb2.Artifact, bytes]:
    """(the Artifact of the first message, the concatenated content of the rest)."""
    responses = list(
        tracker.DownloadArtifact(
            tracker_service_pb2.DownloadArtifactRequest(run=run_name, path=path)
        )
    )
    assert responses and responses[0].WhichOneof("payload") == "artifact"
    assert all(r.WhichOneof("payload") == "chunk" for r in responses[1:])
    return responses[0].artifact, b"".join(r.chunk for r in responses[1:])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> dict[str, int]:
    """Every regular file below `root` (relative path -> size)."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@contextmanager
def tracker_stack(
    kind: str, data_dir: Path, postgres: PostgresDatabases | None, **overrides: Any
) -> Iterator[tuple[ServerThread, TrackerStub, grpc.Channel]]:
    """A tracker on a fresh database of `kind` ("sqlite" or "postgresql"), for fixtures with a
    wider scope than the per-test `tracker` (module-scoped data sets, extra servers)."""
    if kind == "sqlite":
        url = sqlite_url(data_dir)
        with migrated_database(url):
            pass
    else:
        assert postgres is not None
        url = postgres.fresh()
    server = ServerThread(make_settings(url, data_dir / "data", **overrides), ("tracker",))
    server.start()
    try:
        with grpc.insecure_channel(server.address()) as channel:
            yield server, TrackerStub(channel), channel
    finally:
        server.stop()
        if postgres is not None and kind != "sqlite":
            postgres.drop(url)


DATABASE_KINDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def shared_tracker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackerStub]:
    """One tracker per test module and database kind, for tests that need no empty database
    (they create uniquely named resources and only look at those): saves a server and a
    database per test. Import it into a test module to use it."""
    kind = str(request.param)
    postgres = request.getfixturevalue("postgres") if kind == "postgresql" else None
    with tracker_stack(kind, tmp_path_factory.mktemp(f"shared-{kind}"), postgres) as (_, stub, _):
        yield stub


# =====================================================================================
# Scheduler helpers: a dataset (the bundled sample), a feature config and a retrieval
# model config, created through the real API.
# =====================================================================================


def make_configs(scheduler: Any, csv: Path) -> dict[str, str]:
    dataset = scheduler.CreateDataset(
        scheduler_service_pb2.CreateDatasetRequest(
            dataset=dataset_pb2.Dataset(
                display_name="interactions",
                uri=str(csv),
                user_column="user_id",
                item_column="item_id",
                timestamp_column="timestamp",
            )
        )
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
        )
    )
    model = scheduler.CreateModelConfig(
        scheduler_service_pb2.CreateModelConfigRequest(
            model_config=model_config_pb2.ModelConfig(
                display_name="two-tower",
                model_type=model_config_pb2.MODEL_TYPE_RETRIEVAL,
                learning_rate=0.05,
            )
        )
    )
    return {"dataset": dataset.name, "features": features.name, "model": model.name}


class SchedulerClients:
    """Clients of a ServerThread's scheduler and tracker (what test_scheduler_jobs' helpers
    need of a stack: .scheduler and .tracker)."""

    def __init__(self, server: ServerThread) -> None:
        self.channels = [
            grpc.insecure_channel(server.address("scheduler")),
            grpc.insecure_channel(server.address("tracker")),
        ]
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(self.channels[0])
        self.tracker = tracker_service_pb2_grpc.TrackerServiceStub(self.channels[1])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


@contextmanager
def scheduler_with_launcher(
    settings: Settings, launcher: Any, **updates: Any
) -> Iterator[SchedulerClients]:
    """A tracker and a scheduler whose reconcile loop runs `launcher` (settings `updates`
    applied), with clients; stopped on exit."""
    from services.scheduler import app as scheduler_app

    server = ServerThread(
        settings.model_copy(update=updates),
        ("tracker", "scheduler"),
        specs={"scheduler": functools.partial(scheduler_app.build_spec, launcher=launcher)},
    ).start()
    clients = SchedulerClients(server)
    try:
        yield clients
    finally:
        clients.close()
        server.stop()


def wait_job(
    scheduler: Any, job: job_pb2.Job, done: Callable[[job_pb2.Job], bool], timeout: float = 30
) -> job_pb2.Job:
    """Polls the job until `done(job)`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        current: job_pb2.Job = scheduler.GetJob(scheduler_service_pb2.GetJobRequest(name=job.name))
        if done(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"job never reached the expected state: {current}")
        time.sleep(0.05)
