"""One active reconcile loop per database: leader election for scheduler replicas.

Every replica serves the API; only the leader reconciles (claims, launches, polls,
finalizes). On PostgreSQL the leader holds a session advisory lock on a connection of its
own: when its process dies or its connection drops, PostgreSQL releases the lock and a
standby takes it within one poll. On SQLite (one machine) an exclusive file lock next to the
database does the same. A leader that cannot confirm it still holds the lock steps down
before its next pass, so two loops never act at once for longer than a pass.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from services.common.db import Database

log = logging.getLogger(__name__)

# The advisory lock key of "the scheduler's reconcile loop" (distinct from the claim lock).
LEADER_LOCK_KEY = 0x43414952_4E4C4452 & 0x7FFFFFFFFFFFFFFF


class Leadership(Protocol):
    def hold(self) -> bool:
        """Try to be (or stay) the leader; True while this replica leads. Blocking."""
        ...

    def release(self) -> None: ...


class PostgresLeadership:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._connection: Connection | None = None

    def hold(self) -> bool:
        try:
            if self._connection is not None:
                # Still ours only while the session that took the lock is alive.
                self._connection.execute(text("SELECT 1"))
                self._connection.commit()
                return True
            connection = self._database.engine.connect()
            acquired = bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK_KEY}
                ).scalar()
            )
            connection.commit()  # end the implicit transaction; the session lock stays
            if not acquired:
                connection.close()
                return False
            self._connection = connection
            log.info("this scheduler is now the leader (PostgreSQL advisory lock)")
            return True
        except DBAPIError as error:
            log.warning("leadership lost or not taken: %s", error)
            self._drop()
            return False

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()  # never returned to the pool holding the lock
            finally:
                self._connection = None

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK_KEY}
            )
            self._connection.commit()
            self._connection.close()
        except DBAPIError:
            self._drop()
        self._connection = None


class FileLeadership:
    """An exclusive flock on a file beside the SQLite database (released by the kernel when
    the process dies)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: IO[str] | None = None

    def hold(self) -> bool:
        if self._handle is not None:
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._path.open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        log.info("this scheduler is now the leader (lock file %s)", self._path)
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


class AlwaysLeader:
    """A database only this process can see (in-memory SQLite)."""

    def hold(self) -> bool:
        return True

    def release(self) -> None:
        return None


def leadership_for(database: Database) -> Leadership:
    if not database.is_sqlite:
        return PostgresLeadership(database)
    path = database.engine.url.database or ""
    if path in ("", ":memory:"):
        return AlwaysLeader()
    return FileLeadership(Path(path).expanduser().resolve().with_name("scheduler.leader.lock"))
