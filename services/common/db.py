"""Engines and sessions for every service: PostgreSQL (psycopg 3) or embedded SQLite.

SQLite gets WAL, a busy timeout and foreign keys, and write transactions start with
BEGIN IMMEDIATE so concurrent writers queue on the database lock instead of failing halfway
through with "database is locked" when they upgrade a read lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select

from services.common.errors import Aborted, ConfigurationError, Unavailable

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "cairn_write"
# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back
# whole, so the same call can simply be made again.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def normalize_database_url(url: str) -> URL:
    """Parse a database URL; plain postgres:// URLs get the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError) as error:
        # Not echoed: an unparsable URL cannot be shown with its password masked.
        raise ConfigurationError(
            f"invalid database URL ({error}): use postgresql+psycopg://user:password@host:port/"
            "database or sqlite:///path/to/cairn.db"
        ) from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise ConfigurationError(
            f"unsupported database {parsed.drivername!r}: use postgresql+psycopg://... or sqlite:///..."
        )
    return parsed


def create_database_engine(url: str, *, pool_size: int = 10) -> Engine:
    parsed = normalize_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, pool_size)
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_engine(url: URL, pool_size: int) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=pool_size,
        max_overflow=pool_size,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so the "begin" hook below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # LIKE is case-sensitive, as on PostgreSQL (ILIKE is the case-insensitive one);
        # SQLite's default folds ASCII case, which made one filter mean two things.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # lower() folds all of Unicode, as on PostgreSQL, not only ASCII: ILIKE, which is
        # lower(x) LIKE lower(y) on SQLite, must match "Über" with "über" on both databases.
        dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class Database:
    """One service's engine plus the session discipline: short read and write units."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_database_engine(url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        self._reads = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            bind=self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        # Closing (not rolling back) ends the read transaction without expiring the rows
        # read, so callers may use them after the block.
        with _translate_connection_errors(), self._reads() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits when the block succeeds and rolls back otherwise."""
        with _translate_connection_errors(), self._writes() as session, session.begin():
            yield session

    def insert(self, table: Table) -> Any:
        """An INSERT that supports ON CONFLICT (upserts, idempotent claims) in this dialect."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def driver_cursor(session: Session, *, binary: bool = False) -> Iterator[Any]:
    """A cursor of the driver itself on the session's connection (so inside its transaction),
    for the hot paths where SQLAlchemy's per-row work cost more than the query: reads of long
    results (fetch_tuples), bulk inserts, COPY. `binary`: PostgreSQL sends rows in its binary
    format. Driver errors come out as SQLAlchemy's, as from session.execute (so a lost
    connection is still UNAVAILABLE and a deadlock ABORTED), and a lost connection is
    invalidated in the pool."""
    connection = session.connection()
    dialect = connection.dialect
    dbapi_connection = connection.connection
    cursor = (
        dbapi_connection.cursor(binary=True)
        if binary and dialect.name == "postgresql"
        else dbapi_connection.cursor()
    )
    try:
        yield cursor
    except dialect.loaded_dbapi.Error as error:
        invalidated = dialect.is_disconnect(error, dbapi_connection, cursor)
        if invalidated:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(
            None,
            None,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated,
            dialect=dialect,
        ) from error
    finally:
        cursor.close()


def fetch_tuples(session: Session, statement: Select[Any]) -> list[tuple[Any, ...]]:
    """Every row of a Core SELECT as the driver's own tuples, past SQLAlchemy's result layer:
    no Row object per row and no type processing of parameters or results. For long reads of
    plain numbers and text (a metric's history), where building a Row per row cost more than
    the query."""
    dialect = session.connection().dialect
    compiled = statement.compile(dialect=dialect)
    sql = compiled.string
    if "POSTCOMPILE" in sql:
        raise ValueError("fetch_tuples takes no expanding (IN) or literal-execute parameters")
    named = compiled.construct_params()
    parameters: Any = (
        tuple(named[name] for name in compiled.positiontup or ()) if compiled.positional else named
    )
    with driver_cursor(session, binary=True) as cursor:
        cursor.execute(sql, parameters)
        rows = cursor.fetchall()  # a list from both drivers
        return rows if isinstance(rows, list) else list(rows)


@contextmanager
def _translate_connection_errors() -> Iterator[None]:
    """A database that cannot be reached is UNAVAILABLE to callers, never SQL text; a
    transaction PostgreSQL aborted to resolve a conflict (deadlock, serialization failure) is
    ABORTED, which clients retry."""
    try:
        yield
    except exc.DBAPIError as error:
        sqlstate = getattr(error.orig, "sqlstate", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            log.warning("transaction aborted by the database (%s): %s", sqlstate, error.orig)
            raise Aborted(
                "the database aborted the transaction because it conflicted with a concurrent "
                "one; nothing was written, retry the call",
                reason="TRANSACTION_CONFLICT",
                metadata={"sqlstate": sqlstate},
            ) from error
        if not isinstance(error, exc.OperationalError):
            raise
        if error.connection_invalidated or _is_connection_problem(error):
            log.warning("database unavailable: %s", error.orig)
            raise Unavailable("the database is unavailable; retry later") from error
        raise


def _is_connection_problem(error: exc.OperationalError) -> bool:
    text = str(error.orig).lower()
    return any(
        marker in text
        for marker in ("connection", "could not connect", "server closed", "database is locked")
    )
