"""Alembic owns each service's schema: the migrations build exactly the models, on both
databases, in the service's own version table (services may share one database), and run
down and up again cleanly without touching the other services' tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from services.common.db import Database
from services.common.migrations import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from services.scheduler import app as scheduler_app
from services.scheduler.store import models as scheduler_models
from services.tracker import app as tracker_app
from services.tracker.store import models as tracker_models


class Schema(NamedTuple):
    service: str
    migrations: Path
    metadata: MetaData
    tables: set[str]


SCHEMAS = {
    "tracker": Schema(
        "tracker",
        tracker_app.MIGRATIONS,
        tracker_models.Base.metadata,
        {"runs", "metrics", "latest_metrics", "params"},
    ),
    "scheduler": Schema(
        "scheduler",
        scheduler_app.MIGRATIONS,
        scheduler_models.Base.metadata,
        {"datasets", "feature_configs", "model_configs", "jobs", "job_transitions"},
    ),
}


@pytest.fixture(params=sorted(SCHEMAS))
def schema(request: pytest.FixtureRequest) -> Schema:
    return SCHEMAS[request.param]


def _tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names())


def test_migrations_match_the_models(database_url: str, schema: Schema) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            options: dict[str, Any] = {
                "version_table": f"alembic_version_{schema.service}",
                "compare_type": True,
                # Only this service's tables: the others share the database.
                "include_name": lambda name, kind, _parent: (
                    kind != "table" or name in schema.metadata.tables
                ),
            }
            context = MigrationContext.configure(connection, opts=options)
            differences = compare_metadata(context, schema.metadata)
        assert differences == [], differences
        assert current_revision(schema.service, database) == head_revision(schema.migrations)
        tables = _tables(database)
        assert f"alembic_version_{schema.service}" in tables
        assert "alembic_version" not in tables  # services may share one database
    finally:
        database.dispose()


def test_downgrade_to_base_and_upgrade_again(database_url: str, schema: Schema) -> None:
    database = Database(database_url)
    try:
        version_table = f"alembic_version_{schema.service}"
        others = _tables(database) - set(schema.metadata.tables) - {version_table}
        upgrade(schema.service, database, schema.migrations, revision="head")  # idempotent
        command.downgrade(alembic_config(schema.service, database, schema.migrations), "base")
        assert _tables(database) - {version_table} == others
        assert current_revision(schema.service, database) is None
        upgrade(schema.service, database, schema.migrations)
        assert current_revision(schema.service, database) == head_revision(schema.migrations)
        assert schema.tables <= _tables(database)
    finally:
        database.dispose()


def test_every_migration_file_has_a_docstring_and_down_path(schema: Schema) -> None:
    versions = Path(schema.migrations) / "versions"
    files = [p for p in versions.glob("*.py") if p.name != "__init__.py"]
    assert files
    for file in files:
        text = file.read_text()
        assert text.startswith('"""'), file
        assert "def downgrade() -> None:" in text, file
