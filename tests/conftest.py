"""Fixtures shared by every test: databases (SQLite and PostgreSQL) and live servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cairn.analytics.v1 import analytics_service_pb2_grpc
from cairn.scheduler.v1 import scheduler_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2_grpc
from services.common.settings import Settings

from cairn_testing import PostgresDatabases, ServerThread, make_settings, sqlite_url

# Fixtures of the local stand-ins for clouds, for every test module: the S3 and GCS emulators
# (tests/artifact_emulators.py) and Vertex AI's PipelineService (tests/vertex_api.py).
pytest_plugins = ["artifact_emulators", "vertex_api"]

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    try:
        databases.create_template()
    except Exception as error:
        pytest.fail(
            f"PostgreSQL is required for the store and service tests ({databases.admin_url}): "
            f"{error}. Start it (.ci/run does) or set CAIRN_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    yield databases
    databases.drop_all()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, empty database of each kind."""
    if request.param == "sqlite":
        from cairn_testing import migrated_database

        url = sqlite_url(tmp_path)
        with migrated_database(url):
            pass
        yield url
        return
    postgres: PostgresDatabases = request.getfixturevalue("postgres")
    url = postgres.fresh()
    yield url
    postgres.drop(url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "data")


@pytest.fixture
def tracker_server(settings: Settings) -> Iterator[ServerThread]:
    server = ServerThread(settings, ("tracker",)).start()
    yield server
    server.stop()


@pytest.fixture
def tracker_channel(tracker_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(tracker_server.address()) as channel:
        yield channel


@pytest.fixture
def tracker(tracker_channel: grpc.Channel) -> tracker_service_pb2_grpc.TrackerServiceStub:
    """A real gRPC stub for the tracker on loopback."""
    return tracker_service_pb2_grpc.TrackerServiceStub(tracker_channel)


@pytest.fixture
def analytics_server(settings: Settings) -> Iterator[ServerThread]:
    """A tracker and the analytics service reading it, on ephemeral loopback ports."""
    server = ServerThread(settings, ("tracker", "analytics")).start()
    yield server
    server.stop()


@pytest.fixture
def analytics(
    analytics_server: ServerThread,
) -> Iterator[
    tuple[
        tracker_service_pb2_grpc.TrackerServiceStub, analytics_service_pb2_grpc.AnalyticsServiceStub
    ]
]:
    """Real stubs for the tracker (to seed runs) and analytics, on loopback."""
    with (
        grpc.insecure_channel(analytics_server.address("tracker")) as tracker_channel,
        grpc.insecure_channel(analytics_server.address("analytics")) as analytics_channel,
    ):
        yield (
            tracker_service_pb2_grpc.TrackerServiceStub(tracker_channel),
            analytics_service_pb2_grpc.AnalyticsServiceStub(analytics_channel),
        )


@pytest.fixture
def gateway_server(settings: Settings) -> Iterator[ServerThread]:
    """The tracker, analytics and the REST gateway in front of them, on ephemeral loopback
    ports."""
    server = ServerThread(
        settings, ("tracker", "scheduler", "analytics", "logproxy", "gateway")
    ).start()
    yield server
    server.stop()


@pytest.fixture
def gateway_url(gateway_server: ServerThread) -> str:
    """Base URL of the gateway, e.g. http://127.0.0.1:41234 (no trailing slash)."""
    return f"http://{gateway_server.address('gateway')}"


# ------------------------------------------------------------------------------- scheduler


@pytest.fixture
def scheduler_server(settings: Settings) -> Iterator[ServerThread]:
    """A tracker and a scheduler serving its API WITHOUT the reconcile loop: jobs stay
    QUEUED (for API and CLI tests; tests/service/test_scheduler_jobs.py runs the loop)."""
    from functools import partial

    from services.scheduler import app as scheduler_app

    server = ServerThread(
        settings,
        ("tracker", "scheduler"),
        specs={"scheduler": partial(scheduler_app.build_spec, reconcile=False)},
    ).start()
    yield server
    server.stop()


@pytest.fixture
def scheduler(
    scheduler_server: ServerThread,
) -> Iterator[scheduler_service_pb2_grpc.SchedulerServiceStub]:
    """A real stub of the scheduler (no reconcile loop) on loopback."""
    with grpc.insecure_channel(scheduler_server.address("scheduler")) as channel:
        yield scheduler_service_pb2_grpc.SchedulerServiceStub(channel)


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    """The bundled sample dataset (user_id, item_id, item_category, rating, timestamp)."""
    from cairn.sample_data import sample_dataset_path

    return sample_dataset_path()
