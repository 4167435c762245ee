"""Wires the tracker together from Settings: database, schema, artifact store, servicer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Final

import grpc

from cairn.tracker.v1 import tracker_service_pb2, tracker_service_pb2_grpc
from services.common.concurrency import BlockingRunner
from services.common.db import Database
from services.common.migrations import upgrade, verify_schema
from services.common.paging import PageTokenCodec
from services.common.server import ServiceSpec
from services.common.settings import Settings
from services.common.statistics import StatisticsKeeper
from services.tracker.artifact_store import open_artifact_store
from services.tracker.service import TrackerService
from services.tracker.servicer import TrackerServicer
from services.tracker.store.models import (
    ExperimentRow,
    ExperimentTagRow,
    LatestMetricRow,
    ParamRow,
    RunRow,
    RunTagRow,
    table_of,
)
from services.tracker.store.store import TrackerStore

log = logging.getLogger(__name__)

SERVICE: Final = "tracker"
MIGRATIONS = Path(__file__).parent / "store" / "migrations"
# The tables searches plan over, kept analyzed on PostgreSQL (the metric points are read by
# their index alone, whatever their statistics).
SEARCHED_TABLES = tuple(
    table_of(model).name
    for model in (ExperimentRow, ExperimentTagRow, RunRow, ParamRow, RunTagRow, LatestMetricRow)
)
STATISTICS_STOP_S = 35.0
GRPC_SERVICE_NAME = tracker_service_pb2.DESCRIPTOR.services_by_name["TrackerService"].full_name


def migrate(settings: Settings) -> None:
    """`cairn db upgrade` for the tracker's schema."""
    database = Database(settings.database_url_for(SERVICE))
    try:
        upgrade(SERVICE, database, MIGRATIONS)
    finally:
        database.dispose()


def build_service(settings: Settings) -> tuple[TrackerService, Database]:
    database = Database(settings.database_url_for(SERVICE), pool_size=settings.worker_threads)
    if settings.auto_migrate:
        upgrade(SERVICE, database, MIGRATIONS)
    else:
        verify_schema(SERVICE, database, MIGRATIONS)
    artifacts = open_artifact_store(settings.resolved_artifact_root())
    store = TrackerStore(database, artifacts.run_uri)
    return TrackerService(store, artifacts, PageTokenCodec(settings.page_token_secret)), database


def build_spec(settings: Settings) -> ServiceSpec:
    """The tracker as a ServiceSpec; the database is opened (and migrated) on start."""
    runner = BlockingRunner(settings.worker_threads, "tracker")
    servicer: TrackerServicer | None = None
    database: Database | None = None

    keeper: StatisticsKeeper | None = None
    statistics: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal servicer, database, keeper, statistics
        service, opened = await asyncio.to_thread(build_service, settings)
        database = opened
        servicer = TrackerServicer(service, runner)
        keeper = StatisticsKeeper(opened, SEARCHED_TABLES)
        statistics = asyncio.create_task(keeper.run())

    def register(server: grpc.aio.Server) -> None:
        assert servicer is not None, "register runs after the start hook"
        tracker_service_pb2_grpc.add_TrackerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server
        )

    async def stop() -> None:
        try:
            if keeper is not None and statistics is not None:
                keeper.stop()
                # A refresh in flight ends before the database closes (its statements are
                # bounded by the keeper's timeouts).
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(statistics), STATISTICS_STOP_S)
        finally:
            runner.shutdown()
            if database is not None:
                database.dispose()

    return ServiceSpec(
        name=SERVICE,
        service_names=[GRPC_SERVICE_NAME],
        register=register,
        on_start=[start],
        on_stop=[stop],
    )
