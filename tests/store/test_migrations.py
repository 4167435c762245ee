"""Alembic owns the tracker's schema: the migrations build exactly the models, on both
databases, in their own version table, and run down and up again cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from services.common.db import Database
from services.common.migrations import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from services.tracker.app import MIGRATIONS
from services.tracker.store.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": "alembic_version_tracker", "compare_type": True}
            )
            differences = compare_metadata(context, Base.metadata)
        assert differences == [], differences
        assert current_revision("tracker", database) == head_revision(MIGRATIONS)
        tables = set(inspect(database.engine).get_table_names())
        assert "alembic_version_tracker" in tables
        assert "alembic_version" not in tables  # services may share one database
    finally:
        database.dispose()


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    database = Database(database_url)
    try:
        upgrade("tracker", database, MIGRATIONS, revision="head")  # idempotent at head
        command.downgrade(alembic_config("tracker", database, MIGRATIONS), "base")
        remaining = set(inspect(database.engine).get_table_names()) - {"alembic_version_tracker"}
        assert remaining == set()
        assert current_revision("tracker", database) is None
        upgrade("tracker", database, MIGRATIONS)
        assert current_revision("tracker", database) == head_revision(MIGRATIONS)
        assert {"runs", "metrics", "latest_metrics", "params"} <= set(
            inspect(database.engine).get_table_names()
        )
    finally:
        database.dispose()


def test_every_migration_file_has_a_docstring_and_down_path() -> None:
    versions = Path(MIGRATIONS) / "versions"
    files = [p for p in versions.glob("*.py") if p.name != "__init__.py"]
    assert files
    for file in files:
        text = file.read_text()
        assert text.startswith('"""'), file
        assert "def downgrade() -> None:" in text, file
