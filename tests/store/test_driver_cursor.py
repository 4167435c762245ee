"""The driver's own cursor (services.common.db.driver_cursor), used by the hot paths that
bypass SQLAlchemy's per-row work (history reads, metric inserts, COPY), reports errors as
session.execute would: SQLAlchemy errors around the driver's, so a transaction the database
aborted to resolve a conflict is still ABORTED (retryable) and the rest of the write rolls
back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import exc, insert, select

from services.common.db import Database, driver_cursor
from services.common.errors import Aborted
from services.tracker.store.models import ExperimentRow


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def _experiments(database: Database) -> list[str]:
    with database.read() as session:
        return list(session.scalars(select(ExperimentRow.experiment_id)))


def test_a_driver_error_is_sqlalchemys_and_rolls_the_write_back(database: Database) -> None:
    with pytest.raises(exc.DBAPIError) as caught, database.write() as session:
        session.execute(
            insert(ExperimentRow),
            [{"experiment_id": "e", "display_name": "e", "create_time": 0, "update_time": 0}],
        )
        with driver_cursor(session) as cursor:
            cursor.execute("SELECT * FROM no_such_table")
    assert isinstance(caught.value.orig, database.engine.dialect.loaded_dbapi.Error)
    assert _experiments(database) == []
    # The pooled connection is fine afterwards.
    with database.write() as session, driver_cursor(session) as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchall() == [(1,)]


def test_a_conflict_the_database_resolved_is_aborted(database: Database) -> None:
    if database.dialect != "postgresql":
        pytest.skip("SQLite has no deadlock detection: writers queue on its lock")
    conflict = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40P01'; END $$"
    with (
        pytest.raises(Aborted) as caught,
        database.write() as session,
        driver_cursor(session) as cursor,
    ):
        cursor.execute(conflict)
    assert caught.value.reason == "TRANSACTION_CONFLICT"
