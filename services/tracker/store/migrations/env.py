"""Alembic environment for the tracker's schema (version table alembic_version_tracker)."""

from alembic import context

from services.common.migrations import run_env
from services.tracker.store.models import Base

run_env(context, Base.metadata)
