"""PostgreSQL statistics on params' (key, value) pairs

Without them the planner multiplies the selectivity of `key = 'model'` by that of `value =
'xgb'` over all params, as if the two were independent: it expected 332 runs with
model 'xgb' among 10,000 seeded runs where 3,388 have it, and chose a hash join of every
candidate over reading the sort key's index in order (18 ms instead of 5). The MCV list of
the pairs gives it the real frequency. SQLite has no such statistics; its plan does not
depend on them. MCV statistics need PostgreSQL 12 or later.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 23:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE STATISTICS IF NOT EXISTS params_key_value (mcv) ON key, value FROM params"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS params_key_value")
