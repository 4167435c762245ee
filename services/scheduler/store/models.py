"""The scheduler's tables (SQLAlchemy 2 declarative). Alembic migrations own the schema.

Times are epoch milliseconds (BIGINT), as in the tracker. Structured configuration (feature
lists, layer widths, resolved training parameters, final metrics) is JSON text: it is read
and written whole, never queried inside; the columns lists filter on are real columns.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text
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

ID_LENGTH = 64
NAME_LENGTH = 256
REQUEST_ID_LENGTH = 128
FINGERPRINT_LENGTH = 64


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def table_of(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


class DatasetRow(Base):
    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    user_column: Mapped[str] = mapped_column(String(NAME_LENGTH))
    item_column: Mapped[str] = mapped_column(String(NAME_LENGTH))
    timestamp_column: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    # [{"name": ..., "type": "STRING"|"INT64"|"DOUBLE"}] as read from the file.
    columns_json: Mapped[str] = mapped_column(Text)
    row_count: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_LENGTH))


class FeatureConfigRow(Base):
    __tablename__ = "feature_configs"

    feature_config_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # RESTRICT: a dataset in use cannot be deleted (FAILED_PRECONDITION, not a dangling id).
    dataset_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("datasets.dataset_id", ondelete="RESTRICT"), index=True
    )
    # [{"column": ..., "kind": "CATEGORICAL"|"NUMERIC", "embedding_dim": n}]
    query_features_json: Mapped[str] = mapped_column(Text)
    candidate_features_json: Mapped[str] = mapped_column(Text)
    target_column: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    query_tensor_dim: Mapped[int] = mapped_column(Integer)
    candidate_tensor_dim: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_LENGTH))


class ModelConfigRow(Base):
    __tablename__ = "model_configs"

    model_config_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    model_type: Mapped[str] = mapped_column(String(16), index=True)
    optimizer: Mapped[str] = mapped_column(String(16))
    learning_rate: Mapped[float] = mapped_column(Float)
    # {"query_layers": [...], "candidate_layers": [...], "rating_layers": [...],
    #  "retrieval_weight": w, "ranking_weight": w}
    architecture_json: Mapped[str] = mapped_column(Text)
    create_time: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_LENGTH))


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_create_time", "state", "create_time"),)

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16))
    feature_config_id: Mapped[str] = mapped_column(
        String(ID_LENGTH),
        ForeignKey("feature_configs.feature_config_id", ondelete="RESTRICT"),
        index=True,
    )
    model_config_id: Mapped[str] = mapped_column(
        String(ID_LENGTH),
        ForeignKey("model_configs.model_config_id", ondelete="RESTRICT"),
        index=True,
    )
    dataset_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("datasets.dataset_id", ondelete="RESTRICT"), index=True
    )
    model_type: Mapped[str] = mapped_column(String(16))
    hardware_tier: Mapped[str] = mapped_column(String(16))
    # The resolved TrainingParameters (proto3 JSON): what the job trains with.
    training_json: Mapped[str] = mapped_column(Text)
    experiment: Mapped[str] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(32), default="")
    progress_percent: Mapped[float] = mapped_column(Float, default=0.0)
    current_epoch: Mapped[int] = mapped_column(Integer, default=0)
    latest_loss: Mapped[float | None] = mapped_column(Float)
    error_stage: Mapped[str] = mapped_column(String(32), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    error_details: Mapped[str] = mapped_column(Text, default="")
    # The tracker run, "experiments/{e}/runs/{r}" ('' until it is created).
    run: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    final_metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    rerun_of: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    launcher: Mapped[str] = mapped_column(String(32), default="")
    # The launcher's handle of the workload (JSON), recorded before the launch returns.
    workload_json: Mapped[str] = mapped_column(Text, default="")
    # Where its logs are: {"kind": ..., "attributes": {...}} (the launcher's log_location).
    log_source_json: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Which scheduler replica claimed the job and when (epoch ms): the claim is the lease
    # that keeps two reconcilers from launching one job.
    claimed_by: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    claim_time: Mapped[int | None] = mapped_column(BigInteger)
    # Set once the workload's results are in the tracker (metrics, artifacts, run status).
    finalized: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)
    start_time: Mapped[int | None] = mapped_column(BigInteger)
    end_time: Mapped[int | None] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_LENGTH))


class JobTransitionRow(Base):
    __tablename__ = "job_transitions"

    transition_id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(16))
    time: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(Text, default="")
