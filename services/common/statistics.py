"""Planner statistics kept fresh on PostgreSQL between autovacuum's rounds.

PostgreSQL plans with the statistics ANALYZE last gathered. Autovacuum refreshes them, but
at most once a minute (autovacuum_naptime) and only after a tenth of a table changed: a table
filled in the meantime is planned as the empty table it was. Measured: a search over 1,000
runs created moments before took 40 ms in a nested loop that rescanned every run for each
candidate (each side planned as 1 row), 3 ms once the tables were analyzed.

The keeper looks every few seconds at how many rows of a service's tables changed since
their last ANALYZE (anyone's, autovacuum's included) and analyzes those that changed by more
than a share of their size. ANALYZE samples at most 30,000 rows per table, so it stays cheap
however large the table, and it takes no lock that blocks reads or writes. SQLite plans
without such statistics; the keeper does nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from sqlalchemy import Connection, text

from services.common.db import Database

log = logging.getLogger(__name__)

# A table is stale once this share of its rows changed since its last ANALYZE, and at least
# STALE_MIN_ROWS (small tables plan the same either way).
STALE_SHARE = 0.2
STALE_MIN_ROWS = 200
INTERVAL_S = 5.0
LOCK_TIMEOUT_MS = 1_000
STATEMENT_TIMEOUT_MS = 30_000


def stale_tables(connection: Connection, tables: Sequence[str]) -> list[str]:
    """Those of `tables` (in the current schema) that changed enough to be analyzed again."""
    # Only tables this role may analyze (it owns them, owns the database, or is a superuser):
    # ANALYZE skips the others with a warning, and they would stay stale, warned about every
    # round.
    rows = connection.execute(
        text(
            "SELECT s.relname, s.n_live_tup, s.n_mod_since_analyze "
            "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.schemaname = current_schema() AND s.relname = ANY(:names) "
            "AND (pg_has_role(c.relowner, 'USAGE') "
            "OR pg_has_role((SELECT datdba FROM pg_database "
            "WHERE datname = current_database()), 'USAGE') "
            "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)) "
            "ORDER BY s.relname"
        ),
        {"names": list(tables)},
    )
    return [
        name for name, live, modified in rows if modified >= max(STALE_MIN_ROWS, STALE_SHARE * live)
    ]


class StatisticsKeeper:
    """Analyzes a service's stale tables (see the module's docstring)."""

    def __init__(
        self, database: Database, tables: Sequence[str], interval_s: float = INTERVAL_S
    ) -> None:
        self.database = database
        self.tables = list(tables)
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    def refresh(self) -> list[str]:
        """Analyze the stale tables now; returns their names."""
        if self.database.dialect != "postgresql":
            return []
        with self.database.engine.connect() as connection:
            # Never wait behind a lock (another replica's ANALYZE, a VACUUM, an index build):
            # a table that is busy now is analyzed next round. The timeouts bound a round, so
            # stopping the service never waits long for one.
            connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
            connection.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT_MS}ms'"))
            stale = stale_tables(connection, self.tables)
            for name in stale:
                # A name from the service's own list, quoted as an identifier.
                connection.execute(text(f'ANALYZE (SKIP_LOCKED) "{name}"'))
            connection.commit()
        if stale:
            log.debug("analyzed %s", ", ".join(stale))
        return stale

    async def run(self) -> None:
        """Refresh every interval until stop(); a failed round is logged and retried."""
        if self.database.dialect != "postgresql":
            return
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
                return
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as error:  # never let upkeep stop the service
                log.warning("could not refresh planner statistics: %s", error)

    def stop(self) -> None:
        """Ends run() after its current round (a round in flight finishes first: await the
        task before closing the database)."""
        self._stopping.set()
