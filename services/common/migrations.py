"""Alembic plumbing shared by every service's store.

Each service owns one alembic history (one head) in services/<svc>/store/migrations and its
own version table (alembic_version_<svc>), so services can share a database or use their own.
Concurrent upgrades (several replicas starting at once) serialize on a PostgreSQL advisory
lock or SQLite's write lock.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text

from services.common.db import Database
from services.common.errors import ConfigurationError

log = logging.getLogger(__name__)


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def alembic_config(service: str, database: Database, script_location: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    config.attributes["service"] = service
    config.attributes["database"] = database
    return config


def upgrade(
    service: str, database: Database, script_location: Path, revision: str = "head"
) -> None:
    command.upgrade(alembic_config(service, database, script_location), revision)


def head_revision(script_location: Path) -> str | None:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(service: str, database: Database) -> str | None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": version_table(service)}
        )
        return context.get_current_revision()


def verify_schema(service: str, database: Database, script_location: Path) -> None:
    """Refuse to serve on a schema that is not at this release's head."""
    current = current_revision(service, database)
    head = head_revision(script_location)
    if current != head:
        raise ConfigurationError(
            f"the {service} schema is at revision {current or 'none'}, this release needs {head}: "
            f"run `cairn db upgrade` (or set CAIRN_AUTO_MIGRATE=true)"
        )


def run_env(context: Any, target_metadata: MetaData) -> None:
    """Body of every service's alembic env.py (online mode only: we always have a DB)."""
    config = context.config
    service: str = config.attributes["service"]
    database: Database | None = config.attributes.get("database")
    owned = database is None
    if database is None:
        database = Database(config.get_main_option("sqlalchemy.url"))
    try:
        engine = database.engine.execution_options(cairn_write=True)
        with engine.connect() as connection, connection.begin():
            if database.dialect == "postgresql":
                lock_id = int.from_bytes(
                    hashlib.sha256(f"cairn-migrate-{service}".encode()).digest()[:8],
                    "big",
                    signed=True,
                )
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                version_table=version_table(service),
                render_as_batch=database.is_sqlite,
                compare_type=True,
            )
            context.run_migrations()
    finally:
        if owned:
            database.dispose()
