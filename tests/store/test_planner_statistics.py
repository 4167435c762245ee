"""The tracker keeps PostgreSQL's planner statistics fresh between autovacuum's rounds: a
table that changed by more than a share of its rows since its last ANALYZE is analyzed, one
that did not is left alone, and on SQLite the keeper does nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import insert, text

from services.common.db import Database
from services.common.statistics import STALE_MIN_ROWS, StatisticsKeeper
from services.tracker.app import SEARCHED_TABLES
from services.tracker.store.models import ExperimentRow, ParamRow, RunRow

from cairn_testing import PostgresDatabases, migrated_database, sqlite_url


@pytest.fixture
def postgres_database(postgres: PostgresDatabases) -> Iterator[Database]:
    url = postgres.fresh()
    database = Database(url)
    yield database
    database.dispose()
    postgres.drop(url)


def _add_runs(database: Database, count: int, first: int = 0) -> None:
    with database.write() as session:
        if first == 0:
            session.execute(
                insert(ExperimentRow),
                [{"experiment_id": "e", "display_name": "e", "create_time": 0, "update_time": 0}],
            )
        ids = [f"{first + i:032x}" for i in range(count)]
        session.execute(
            insert(RunRow),
            [
                {"run_id": run_id, "experiment_id": "e", "run_name": "r", "status": "RUNNING"}
                | {"start_time": 0, "create_time": 0, "update_time": 0}
                for run_id in ids
            ],
        )
        session.execute(
            insert(ParamRow), [{"run_id": run_id, "key": "model", "value": "x"} for run_id in ids]
        )


def _analyzed_rows(database: Database, table: str) -> float:
    """The row count the planner knows of (pg_class.reltuples: -1 when never analyzed)."""
    with database.engine.connect() as connection:
        return float(
            connection.execute(
                text("SELECT reltuples FROM pg_class WHERE relname = :name"), {"name": table}
            ).scalar_one()
        )


def _refresh_until(keeper: StatisticsKeeper, expected: set[str], timeout_s: float = 30) -> None:
    """PostgreSQL publishes a backend's row counts a moment after its commit: poll."""
    deadline = time.monotonic() + timeout_s
    analyzed: set[str] = set()
    while time.monotonic() < deadline:
        analyzed |= set(keeper.refresh())
        if expected <= analyzed:
            return
        time.sleep(0.5)
    pytest.fail(f"analyzed {sorted(analyzed)}, expected {sorted(expected)}")


def test_changed_tables_are_analyzed_and_unchanged_ones_are_not(
    postgres_database: Database,
) -> None:
    keeper = StatisticsKeeper(postgres_database, SEARCHED_TABLES)
    _add_runs(postgres_database, 1_000)
    _refresh_until(keeper, {"runs", "params"})
    assert _analyzed_rows(postgres_database, "runs") == 1_000
    assert _analyzed_rows(postgres_database, "params") == 1_000
    # Nothing changed since: nothing to do, and tables never written stay as they were.
    assert keeper.refresh() == []
    assert _analyzed_rows(postgres_database, "latest_metrics") <= 0
    # A change below the share (10% of 1,000, under the minimum too) waits...
    _add_runs(postgres_database, STALE_MIN_ROWS // 2, first=1_000)
    time.sleep(2)
    assert keeper.refresh() == []
    assert _analyzed_rows(postgres_database, "runs") == 1_000
    # ...until the table has changed enough.
    _add_runs(postgres_database, 1_000, first=2_000)
    _refresh_until(keeper, {"runs", "params"})
    assert _analyzed_rows(postgres_database, "runs") == 2_000 + STALE_MIN_ROWS // 2


def test_the_keeper_does_nothing_on_sqlite(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    with migrated_database(url):
        pass
    database = Database(url)
    try:
        _add_runs(database, 1_000)
        assert StatisticsKeeper(database, SEARCHED_TABLES).refresh() == []
    finally:
        database.dispose()


def test_the_running_keeper_analyzes_in_the_background_and_stops(
    postgres_database: Database,
) -> None:
    keeper = StatisticsKeeper(postgres_database, SEARCHED_TABLES, interval_s=0.2)

    async def scenario() -> float:
        task = asyncio.create_task(keeper.run())
        await asyncio.to_thread(_add_runs, postgres_database, 1_000)
        deadline = time.monotonic() + 30
        while _analyzed_rows(postgres_database, "runs") != 1_000:
            assert time.monotonic() < deadline, "the keeper never analyzed runs"
            await asyncio.sleep(0.2)
        began = time.monotonic()
        keeper.stop()
        await asyncio.wait_for(task, timeout=10)
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5


def test_a_table_someone_else_holds_is_skipped_without_waiting(
    postgres_database: Database,
) -> None:
    """Another replica's ANALYZE (or a VACUUM) holds the table: this round skips it at once
    and a later one analyzes it."""
    keeper = StatisticsKeeper(postgres_database, SEARCHED_TABLES)
    _add_runs(postgres_database, 1_000)
    # A connection of its own (a pooled one could be the writer's, whose row counts
    # PostgreSQL publishes only once it is idle).
    url = postgres_database.engine.url.set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as holder:
        holder.execute("LOCK TABLE runs IN SHARE UPDATE EXCLUSIVE MODE")
        began = time.monotonic()
        _refresh_until(keeper, {"params"})
        assert _analyzed_rows(postgres_database, "runs") <= 0
        assert time.monotonic() - began < 30
        holder.rollback()
    _refresh_until(keeper, {"runs"})
    assert _analyzed_rows(postgres_database, "runs") == 1_000
