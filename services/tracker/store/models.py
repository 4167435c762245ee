"""The tracker's tables (SQLAlchemy 2 declarative). Alembic migrations own the schema.

Times are epoch milliseconds (BIGINT): exact, cheap to compare and the same on PostgreSQL and
SQLite. Metric points carry no foreign key: they are the hot path (bulk COPY), and purging a
run deletes them explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

ID_LENGTH = 32
NAME_LENGTH = 256
KEY_LENGTH = 250
REQUEST_ID_LENGTH = 128


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def table_of(model: type[Base]) -> Table:
    """A model's Table, typed as one (Core queries on the hot paths use tables)."""
    return cast(Table, model.__table__)


class ExperimentRow(Base):
    __tablename__ = "experiments"

    experiment_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    lifecycle_state: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    create_time: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)
    delete_time: Mapped[int | None] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    # SHA-256 of the create request that used request_id: a retry must match it.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index(None, "lifecycle_state", "create_time"),)


class ExperimentTagRow(Base):
    __tablename__ = "experiment_tags"

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.experiment_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunRow(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.experiment_id", ondelete="CASCADE")
    )
    run_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    start_time: Mapped[int] = mapped_column(BigInteger)
    end_time: Mapped[int | None] = mapped_column(BigInteger)
    create_time: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)
    lifecycle_state: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    delete_time: Mapped[int | None] = mapped_column(BigInteger)
    # True when the run was deleted because its experiment was: restoring the experiment
    # restores exactly these.
    deleted_with_experiment: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(Text, default="")
    user: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    dataset_id: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    dataset_name: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    pipeline_id: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    node_id: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    job_id: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    model_type: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index(None, "experiment_id", "lifecycle_state", "start_time"),
        Index(None, "lifecycle_state", "start_time"),
        # The safety net under version allocation: two runs can never share a version.
        Index(
            "uq_runs_model_version",
            "dataset_id",
            "model_type",
            "version",
            unique=True,
            postgresql_where=text("version > 0"),
            sqlite_where=text("version > 0"),
        ),
    )


class RunEnvironmentRow(Base):
    """Kept apart from runs: large text (pip freeze, diffs) stays out of search scans."""

    __tablename__ = "run_environments"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    git_commit: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    git_branch: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    git_remote: Mapped[str] = mapped_column(Text, default="")
    git_dirty: Mapped[bool] = mapped_column(Boolean, default=False)
    git_diff: Mapped[str] = mapped_column(Text, default="")
    command: Mapped[str] = mapped_column(Text, default="")
    python_version: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    pip_freeze: Mapped[str] = mapped_column(Text, default="")
    hostname: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    platform: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    device_info: Mapped[str] = mapped_column(Text, default="")
    user: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")


class ParamRow(Base):
    __tablename__ = "params"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    # The value as a number when it parses as one, so `params.depth > 5` compares numbers.
    value_num: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index(None, "key", "value_num"),)


class RunTagRow(Base):
    __tablename__ = "run_tags"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MetricRow(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    step: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[int] = mapped_column(BigInteger)
    # NULL stands for NaN: SQLite cannot store NaN and would turn it into NULL anyway.
    value: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index(None, "run_id", "key", "step", "id"),)


class LatestMetricRow(Base):
    """The newest point (highest step, then timestamp) of every metric of every run."""

    __tablename__ = "latest_metrics"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    step: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index(None, "key", "value"),)


class MetricBatchRow(Base):
    """Batch ids already stored per run: a retried batch is acknowledged, not stored again."""

    __tablename__ = "metric_batches"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    batch_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), primary_key=True)
    point_count: Mapped[int] = mapped_column(Integer)
    # SHA-256 of the batch's (key, step, value) points: a batch id reused for other points
    # is refused instead of silently dropping them.
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[int] = mapped_column(BigInteger)


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    artifact_type: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact record as the service sees it (no ORM state attached)."""

    path: str
    artifact_type: str
    size_bytes: int
    sha256: str
    create_time: int

    @classmethod
    def of(cls, row: ArtifactRow) -> StoredArtifact:
        return cls(row.path, row.artifact_type, row.size_bytes, row.sha256, row.create_time)


class ArtifactOrphanRow(Base):
    """Content an overwrite left unreferenced. Purging sweeps it once it is older than the
    purge's cut-off and still unreferenced (an upload may be about to reuse it)."""

    __tablename__ = "artifact_orphans"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    orphan_time: Mapped[int] = mapped_column(BigInteger)


class ModelVersionCounterRow(Base):
    """Last version handed out per (dataset_id, model_type): the row lock serializes
    concurrent run creations, and a rolled-back creation gives its number back."""

    __tablename__ = "model_version_counters"

    dataset_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    model_type: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    last_version: Mapped[int] = mapped_column(BigInteger)
