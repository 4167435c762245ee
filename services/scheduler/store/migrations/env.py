"""Alembic environment for the scheduler's schema (version table alembic_version_scheduler)."""

from alembic import context

from services.common.migrations import run_env
from services.scheduler.store.models import Base

run_env(context, Base.metadata)
