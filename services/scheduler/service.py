"""The scheduler's domain rules: resources and their validation, job defaults, the job
state machine's user-facing transitions (create, cancel, rerun, delete), and what a job
becomes for the trainer (its spec) and the tracker (its run's params and lineage).

No grpc and no SQL here: the store persists, the TrackerWriter talks to the tracker, the
reconcile loop (reconciler.py) drives launched work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cairn.common.v1 import lineage_pb2
from cairn.scheduler.v1 import dataset_pb2, feature_config_pb2, job_pb2, model_config_pb2
from cairn.tracker.v1 import run_pb2
from services.common.clients import RETRYABLE_CODES, BackendError
from services.common.concurrency import BlockingRunner
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.filtering import parse_filter, parse_order_by
from services.common.paging import PageTokenCodec, coerce_page_size
from services.common.timeutil import now_ms
from services.scheduler.datasets import FORMATS, inspect_dataset
from services.scheduler.launchers import MACHINE_TYPES
from services.scheduler.store import convert
from services.scheduler.store.models import (
    DatasetRow,
    FeatureConfigRow,
    JobRow,
    ModelConfigRow,
)
from services.scheduler.store.store import (
    DATASETS,
    FEATURE_CONFIGS,
    JOBS,
    MODEL_CONFIGS,
    TERMINAL_STATES,
    Listing,
    ListQuery,
    SchedulerStore,
    new_id,
    search_condition,
)
from services.scheduler.tracker_client import TrackerWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_NAME = 200
MAX_DESCRIPTION = 10_000
MAX_REQUEST_ID = 128
MAX_FEATURES = 64
SAMPLE_PERCENTS = (5, 10, 25, 50, 100)
BATCH_SIZES = (256, 512, 1024, 2048, 4096, 8192)
MAX_EPOCHS = {"QUICK_TEST": 50, "FULL_TRAINING": 500}
DEFAULT_EPOCHS = {"QUICK_TEST": 3, "FULL_TRAINING": 30}
DEFAULT_SAMPLE = {"QUICK_TEST": 10, "FULL_TRAINING": 100}
DEFAULT_BATCH_SIZE = 4096
DEFAULT_SEED = 42
DEFAULT_LAYERS = [64, 32]
DEFAULT_EXPERIMENT = {"QUICK_TEST": "quick-tests", "FULL_TRAINING": "full-training"}
# Rows (after sampling) up to which each tier is recommended when the user does not pick.
TIER_BY_ROWS = ((2_000_000, "SMALL"), (20_000_000, "MEDIUM"))
RUN_STATUS_OF = {
    "SUCCEEDED": run_pb2.RUN_STATUS_FINISHED,
    "FAILED": run_pb2.RUN_STATUS_FAILED,
    "CANCELLED": run_pb2.RUN_STATUS_KILLED,
}
# Below the gateway's default idle timeout of streams (30 s).
WATCH_KEEPALIVE_SECONDS = 10.0
# Ids the server made (16 hex digits) or a client chose (_ID_PATTERN); nothing else names one.
_RESOURCE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")


def _text(value: str, field: str, limit: int, *, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required", field=field, reason="MISSING_FIELD")
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is longer than {limit} characters", field=field, reason="TOO_LONG"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{field} has a NUL character", field=field, reason="INVALID_TEXT")
    return value


def _known(enum_type: Any, value: int, field: str) -> int:
    """An enum field's value, refused when this release does not know it (proto3 lets a
    client send any number)."""
    if value not in enum_type.values():
        raise InvalidArgument(
            f"{field} has no value {value}; known: "
            + ", ".join(v.name for v in enum_type.DESCRIPTOR.values if v.number),
            field=field,
            reason="UNKNOWN_ENUM_VALUE",
        )
    return value


def _resource_id(name: str, collection: str, field: str) -> str:
    prefix = f"{collection}/"
    resource_id = name[len(prefix) :]
    if not name.startswith(prefix) or not _RESOURCE_ID_PATTERN.fullmatch(resource_id):
        raise InvalidArgument(
            f"{field} must look like {collection}/{{id}}, got {name[:100]!r}",
            field=field,
            reason="INVALID_NAME",
        )
    return name[len(prefix) :]


def _chosen_id(value: str, field: str) -> str:
    if not value:
        return new_id()
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 3-63 lowercase letters, digits and hyphens, starting with a "
            "letter or digit",
            field=field,
            reason="INVALID_ID",
        )
    return value


def fingerprint(message: Any) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str


class SchedulerService:
    def __init__(
        self,
        store: SchedulerStore,
        tracker: TrackerWriter,
        runner: BlockingRunner,
        page_tokens: PageTokenCodec,
        work_root: Path,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.runner = runner
        self.page_tokens = page_tokens
        self.work_root = work_root
        # Set whenever a job changes in this process, so watchers wake without polling lag.
        self._changed = asyncio.Event()
        self._wake_reconciler: Callable[[], None] = lambda: None

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.runner.run(fn, *args, **kwargs)

    def notify(self) -> None:
        """A job changed: wake the watchers (they re-read it) and the reconcile loop."""
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake_reconciler()

    def on_change(self, wake: Callable[[], None]) -> None:
        self._wake_reconciler = wake

    # ------------------------------------------------------------------ datasets

    async def create_dataset(
        self, dataset: dataset_pb2.Dataset, dataset_id: str, request_id: str
    ) -> dataset_pb2.Dataset:
        name = _text(dataset.display_name, "dataset.display_name", MAX_NAME, required=True)
        _text(dataset.description, "dataset.description", MAX_DESCRIPTION)
        _text(dataset.uri, "dataset.uri", 4096, required=True)
        _text(request_id, "request_id", MAX_REQUEST_ID)
        for field in ("user_column", "item_column"):
            _text(getattr(dataset, field), f"dataset.{field}", MAX_NAME, required=True)
        chosen = _chosen_id(dataset_id, "dataset_id")
        format_name = (
            dataset_pb2.DataFormat.Name(
                _known(dataset_pb2.DataFormat, dataset.format, "dataset.format")
            ).removeprefix("DATA_FORMAT_")
            if dataset.format
            else ""
        )
        if format_name and format_name not in FORMATS:
            raise InvalidArgument("unknown dataset.format", field="dataset.format")
        facts = await self._run(inspect_dataset, dataset.uri, format_name)
        names = {c["name"] for c in facts.columns}
        for field in ("user_column", "item_column", "timestamp_column"):
            column = getattr(dataset, field)
            if column and column not in names:
                raise InvalidArgument(
                    f"dataset.{field} {column!r} is not a column of the file; its columns: "
                    + ", ".join(sorted(names)),
                    field=f"dataset.{field}",
                    reason="UNKNOWN_COLUMN",
                )
        row = DatasetRow(
            dataset_id=chosen,
            display_name=name,
            description=dataset.description,
            uri=str(facts.path),
            format=facts.format,
            user_column=dataset.user_column,
            item_column=dataset.item_column,
            timestamp_column=dataset.timestamp_column,
            columns_json=json.dumps(facts.columns),
            row_count=facts.row_count,
            size_bytes=facts.size_bytes,
            create_time=now_ms(),
            request_id=request_id or None,
            request_fingerprint=fingerprint(dataset) if request_id else None,
        )
        created = await self._run(self.store.create, row, "dataset", f"named {name!r} or id")
        return convert.dataset_to_proto(created)

    async def get_dataset(self, name: str) -> dataset_pb2.Dataset:
        row = await self._dataset_row(name, "name")
        return convert.dataset_to_proto(row)

    async def _dataset_row(self, name: str, field: str) -> DatasetRow:
        dataset_id = _resource_id(name, "datasets", field)
        return await self._run(self.store.get, DatasetRow, dataset_id, "dataset")

    async def delete_dataset(self, name: str) -> None:
        dataset_id = _resource_id(name, "datasets", "name")
        await self._run(
            self.store.delete, DatasetRow, dataset_id, "dataset", "feature configs or jobs"
        )

    # ------------------------------------------------------------------ feature configs

    async def create_feature_config(
        self, config: feature_config_pb2.FeatureConfig, config_id: str, request_id: str
    ) -> feature_config_pb2.FeatureConfig:
        prefix = "feature_config"
        name = _text(config.display_name, f"{prefix}.display_name", MAX_NAME, required=True)
        _text(config.description, f"{prefix}.description", MAX_DESCRIPTION)
        _text(request_id, "request_id", MAX_REQUEST_ID)
        chosen = _chosen_id(config_id, "feature_config_id")
        dataset = await self._dataset_row(config.dataset, f"{prefix}.dataset")
        columns = {c["name"]: c["type"] for c in json.loads(dataset.columns_json)}
        dims = {}
        for tower in ("query", "candidate"):
            features = list(getattr(config, f"{tower}_features"))
            field = f"{prefix}.{tower}_features"
            if not features:
                raise InvalidArgument(
                    f"{field} needs at least one feature", field=field, reason="MISSING_FIELD"
                )
            if len(features) > MAX_FEATURES:
                raise InvalidArgument(f"{field} has more than {MAX_FEATURES} features", field=field)
            seen: set[str] = set()
            dim = 0
            for index, feature in enumerate(features):
                where = f"{field}[{index}]"
                if feature.column not in columns:
                    raise InvalidArgument(
                        f"{where}.column {feature.column!r} is not a column of dataset "
                        f"{dataset.display_name!r}; its columns: " + ", ".join(sorted(columns)),
                        field=f"{where}.column",
                        reason="UNKNOWN_COLUMN",
                    )
                if feature.column in seen:
                    raise InvalidArgument(
                        f"{where}.column {feature.column!r} is listed twice", field=where
                    )
                seen.add(feature.column)
                _known(feature_config_pb2.FeatureKind, feature.kind, f"{where}.kind")
                if not feature.kind:
                    feature.kind = feature_config_pb2.FEATURE_KIND_CATEGORICAL
                if feature.kind == feature_config_pb2.FEATURE_KIND_NUMERIC:
                    if columns[feature.column] == "STRING":
                        raise InvalidArgument(
                            f"{where}: column {feature.column!r} holds text, so it cannot be "
                            "NUMERIC; make it CATEGORICAL",
                            field=f"{where}.kind",
                            reason="INVALID_FEATURE_KIND",
                        )
                    feature.embedding_dim = 0
                    dim += 1
                else:
                    if feature.embedding_dim == 0:
                        feature.embedding_dim = 32
                    if not 1 <= feature.embedding_dim <= 1024:
                        raise InvalidArgument(
                            f"{where}.embedding_dim must be 1-1024",
                            field=f"{where}.embedding_dim",
                            reason="OUT_OF_RANGE",
                        )
                    dim += feature.embedding_dim
            dims[tower] = dim
        if config.target_column:
            if config.target_column not in columns:
                raise InvalidArgument(
                    f"{prefix}.target_column {config.target_column!r} is not a column of the "
                    "dataset",
                    field=f"{prefix}.target_column",
                    reason="UNKNOWN_COLUMN",
                )
            if columns[config.target_column] == "STRING":
                raise InvalidArgument(
                    f"{prefix}.target_column {config.target_column!r} holds text; a ranking "
                    "target must be numeric",
                    field=f"{prefix}.target_column",
                    reason="INVALID_TARGET",
                )
        row = FeatureConfigRow(
            feature_config_id=chosen,
            display_name=name,
            description=config.description,
            dataset_id=dataset.dataset_id,
            query_features_json=convert.features_to_json(config.query_features),
            candidate_features_json=convert.features_to_json(config.candidate_features),
            target_column=config.target_column,
            query_tensor_dim=dims["query"],
            candidate_tensor_dim=dims["candidate"],
            create_time=now_ms(),
            request_id=request_id or None,
            request_fingerprint=fingerprint(config) if request_id else None,
        )
        created = await self._run(self.store.create, row, "feature config", f"named {name!r}")
        return convert.feature_config_to_proto(created)

    async def get_feature_config(self, name: str) -> feature_config_pb2.FeatureConfig:
        return convert.feature_config_to_proto(await self._feature_row(name, "name"))

    async def _feature_row(self, name: str, field: str) -> FeatureConfigRow:
        config_id = _resource_id(name, "featureConfigs", field)
        return await self._run(self.store.get, FeatureConfigRow, config_id, "feature config")

    async def delete_feature_config(self, name: str) -> None:
        config_id = _resource_id(name, "featureConfigs", "name")
        await self._run(self.store.delete, FeatureConfigRow, config_id, "feature config", "jobs")

    # ------------------------------------------------------------------ model configs

    async def create_model_config(
        self, config: model_config_pb2.ModelConfig, config_id: str, request_id: str
    ) -> model_config_pb2.ModelConfig:
        prefix = "model_config"
        name = _text(config.display_name, f"{prefix}.display_name", MAX_NAME, required=True)
        _text(config.description, f"{prefix}.description", MAX_DESCRIPTION)
        _text(request_id, "request_id", MAX_REQUEST_ID)
        chosen = _chosen_id(config_id, "model_config_id")
        _known(model_config_pb2.ModelType, config.model_type, f"{prefix}.model_type")
        _known(model_config_pb2.Optimizer, config.optimizer, f"{prefix}.optimizer")
        if config.model_type == model_config_pb2.MODEL_TYPE_UNSPECIFIED:
            raise InvalidArgument(
                f"{prefix}.model_type is required (RETRIEVAL, RANKING or MULTITASK)",
                field=f"{prefix}.model_type",
                reason="MISSING_FIELD",
            )
        layers: dict[str, list[int]] = {}
        for tower in ("query_layers", "candidate_layers", "rating_layers"):
            widths = list(getattr(config, tower)) or list(DEFAULT_LAYERS)
            if len(widths) > 16 or any(not 1 <= w <= 4096 for w in widths):
                raise InvalidArgument(
                    f"{prefix}.{tower}: up to 16 layers of 1-4096 units",
                    field=f"{prefix}.{tower}",
                    reason="OUT_OF_RANGE",
                )
            layers[tower] = widths
        if layers["query_layers"][-1] != layers["candidate_layers"][-1]:
            raise InvalidArgument(
                f"{prefix}: the towers' last layers must have the same width (the retrieval "
                f"score is their dot product), got {layers['query_layers'][-1]} and "
                f"{layers['candidate_layers'][-1]}",
                field=f"{prefix}.candidate_layers",
                reason="TOWER_MISMATCH",
            )
        learning_rate = config.learning_rate or 0.1
        if not 0 < learning_rate <= 1:
            raise InvalidArgument(
                f"{prefix}.learning_rate must be in (0, 1]",
                field=f"{prefix}.learning_rate",
                reason="OUT_OF_RANGE",
            )
        weights = {}
        for weight in ("retrieval_weight", "ranking_weight"):
            value = getattr(config, weight) if config.HasField(weight) else 1.0
            if not 0 <= value <= 100:
                raise InvalidArgument(
                    f"{prefix}.{weight} must be in [0, 100]",
                    field=f"{prefix}.{weight}",
                    reason="OUT_OF_RANGE",
                )
            weights[weight] = value
        if weights["retrieval_weight"] == weights["ranking_weight"] == 0:
            raise InvalidArgument(
                f"{prefix}: retrieval_weight and ranking_weight cannot both be 0",
                field=f"{prefix}.retrieval_weight",
                reason="OUT_OF_RANGE",
            )
        optimizer = config.optimizer or model_config_pb2.OPTIMIZER_ADAGRAD
        row = ModelConfigRow(
            model_config_id=chosen,
            display_name=name,
            description=config.description,
            model_type=model_config_pb2.ModelType.Name(config.model_type).removeprefix(
                "MODEL_TYPE_"
            ),
            optimizer=model_config_pb2.Optimizer.Name(optimizer).removeprefix("OPTIMIZER_"),
            learning_rate=learning_rate,
            architecture_json=json.dumps({**layers, **weights}),
            create_time=now_ms(),
            request_id=request_id or None,
            request_fingerprint=fingerprint(config) if request_id else None,
        )
        created = await self._run(self.store.create, row, "model config", f"named {name!r}")
        return convert.model_config_to_proto(created)

    async def get_model_config(self, name: str) -> model_config_pb2.ModelConfig:
        return convert.model_config_to_proto(await self._model_row(name, "name"))

    async def _model_row(self, name: str, field: str) -> ModelConfigRow:
        config_id = _resource_id(name, "modelConfigs", field)
        return await self._run(self.store.get, ModelConfigRow, config_id, "model config")

    async def delete_model_config(self, name: str) -> None:
        config_id = _resource_id(name, "modelConfigs", "name")
        await self._run(self.store.delete, ModelConfigRow, config_id, "model config", "jobs")

    # ------------------------------------------------------------------ listing

    async def list(
        self,
        listing: Listing,
        page_size: int,
        page_token: str,
        filter_text: str,
        order_by: str,
        search: str = "",
    ) -> Page:
        _text(search, "search", 1_000)
        order = parse_order_by(order_by or "create_time desc")
        query_id = self.page_tokens.fingerprint(listing.what, filter_text, order_by, search)
        query = ListQuery(
            filter=parse_filter(filter_text),
            order=order,
            page_size=coerce_page_size(page_size),
            after=self.page_tokens.decode(page_token, query_id) if page_token else None,
            where=search_condition(search) if search else None,
        )
        page = await self._run(self.store.list_page, listing, query)
        token = (
            self.page_tokens.encode(page.next_position, query_id)
            if page.next_position is not None
            else ""
        )
        if listing is JOBS:
            histories = await self._run(self.store.history, [r.job_id for r in page.items])
            items = [convert.job_to_proto(r, histories[r.job_id]) for r in page.items]
        else:
            to_proto: Any = {
                DATASETS.what: convert.dataset_to_proto,
                FEATURE_CONFIGS.what: convert.feature_config_to_proto,
                MODEL_CONFIGS.what: convert.model_config_to_proto,
            }[listing.what]
            items = [to_proto(r) for r in page.items]
        return Page(items, token)

    # ------------------------------------------------------------------ jobs

    async def create_job(self, job: job_pb2.Job, request_id: str) -> job_pb2.Job:
        _text(request_id, "request_id", MAX_REQUEST_ID)
        _text(job.display_name, "job.display_name", MAX_NAME)
        _text(job.description, "job.description", MAX_DESCRIPTION)
        _text(job.experiment, "job.experiment", MAX_NAME)
        features = await self._feature_row(job.feature_config, "job.feature_config")
        model = await self._model_row(job.model_config, "job.model_config")
        dataset = await self._run(self.store.get, DatasetRow, features.dataset_id, "dataset")
        _known(job_pb2.JobKind, job.kind, "job.kind")
        kind = job_pb2.JobKind.Name(job.kind or job_pb2.JOB_KIND_QUICK_TEST).removeprefix(
            "JOB_KIND_"
        )
        training = resolve_training(job.training, kind, model, dataset)
        if model.model_type in ("RANKING", "MULTITASK") and not features.target_column:
            raise InvalidArgument(
                f"a {model.model_type.lower()} model needs a target column: feature config "
                f"{features.display_name!r} has none",
                field="job.feature_config",
                reason="MISSING_TARGET",
            )
        if (
            training.split_strategy != job_pb2.SPLIT_STRATEGY_RANDOM
            and not dataset.timestamp_column
        ):
            raise FailedPrecondition(
                f"a time split needs timestamps, and dataset {dataset.display_name!r} has no "
                "timestamp_column",
                reason="NO_TIMESTAMP_COLUMN",
            )
        now = now_ms()
        display_name = job.display_name or (
            f"{model.model_type.lower()} {kind.lower().replace('_', ' ')} {features.display_name}"
        )
        row = JobRow(
            job_id=new_id(),
            display_name=display_name[:MAX_NAME],
            description=job.description,
            kind=kind,
            feature_config_id=features.feature_config_id,
            model_config_id=model.model_config_id,
            dataset_id=dataset.dataset_id,
            model_type=model.model_type,
            hardware_tier=job_pb2.HardwareTier.Name(training.hardware_tier).removeprefix(
                "HARDWARE_TIER_"
            ),
            training_json=convert.training_to_json(training),
            experiment=job.experiment or DEFAULT_EXPERIMENT[kind],
            state="QUEUED",
            rerun_of="",
            create_time=now,
            update_time=now,
            request_id=request_id or None,
            request_fingerprint=fingerprint(job) if request_id else None,
        )
        return await self._queue(row, "queued")

    async def _queue(self, row: JobRow, message: str) -> job_pb2.Job:
        created, is_new = await self._run(self.store.create_job, row, message)
        if is_new:
            try:
                await self.ensure_run(created)
            except Exception as error:  # the reconcile loop creates it before launching
                log.warning("job %s: tracker run not created yet: %s", created.job_id, error)
            self.notify()
        return await self.get_job(f"jobs/{created.job_id}")

    async def ensure_run(self, row: JobRow) -> str:
        """The job's tracker run, created (with params, lineage, tags) if it is missing. Safe
        to repeat: the run's request id is derived from the job id."""
        if row.run:
            return row.run
        features = await self._run(
            self.store.get, FeatureConfigRow, row.feature_config_id, "feature config"
        )
        model = await self._run(self.store.get, ModelConfigRow, row.model_config_id, "model config")
        dataset = await self._run(self.store.get, DatasetRow, row.dataset_id, "dataset")
        experiment = await self.tracker.ensure_experiment(row.experiment)
        lineage = lineage_pb2.Lineage(
            dataset_id=dataset.dataset_id,
            dataset_name=dataset.display_name,
            pipeline_id=f"tfx-{row.model_type.lower()}",
            node_id="Trainer",
            job_id=row.job_id,
            model_type=row.model_type.lower(),
        )
        run = await self.tracker.create_run(
            experiment,
            row.job_id,
            row.display_name,
            lineage,
            {
                "cairn.job": f"jobs/{row.job_id}",
                "cairn.job_kind": row.kind.lower(),
                "cairn.launcher": row.launcher or "",
            },
        )
        await self.tracker.log_params(run, run_params(row, features, model, dataset))
        await self._run(self.store.update_job, row.job_id, run=run)
        row.run = run
        return run

    async def get_job(self, name: str) -> job_pb2.Job:
        row = await self._job_row(name, "name")
        history = await self._run(self.store.history, [row.job_id])
        return convert.job_to_proto(row, history[row.job_id])

    async def _job_row(self, name: str, field: str) -> JobRow:
        job_id = _resource_id(name, "jobs", field)
        return await self._run(self.store.get, JobRow, job_id, "job")

    async def cancel_job(self, name: str) -> job_pb2.Job:
        row = await self._job_row(name, "name")
        if row.state in TERMINAL_STATES:
            raise FailedPrecondition(
                f"job {row.job_id} already ended ({row.state}); nothing to cancel",
                reason="JOB_FINISHED",
                metadata={"state": row.state},
            )
        if row.state == "QUEUED":
            moved = await self._run(
                self.store.transition, row.job_id, ["QUEUED"], "CANCELLED", "cancelled by the user"
            )
            if moved is not None:
                await self.finish_run(moved)
        if row.state != "CANCELLING":
            await self._run(
                self.store.transition,
                row.job_id,
                ["SUBMITTING", "RUNNING"],
                "CANCELLING",
                "cancel requested by the user",
            )
        self.notify()
        return await self.get_job(name)

    async def finish_run(self, row: JobRow) -> None:
        """Give a terminal job's run its final status; marks the job finalized on success
        (the reconcile loop retries otherwise)."""
        if row.run:
            try:
                await self.tracker.set_status(
                    row.run, RUN_STATUS_OF[row.state], end_ms=row.end_time or now_ms()
                )
            except BackendError as error:
                if error.code in RETRYABLE_CODES:
                    log.warning("job %s: run status not updated yet: %s", row.job_id, error)
                    return
                # Deleted, or already ended otherwise: nothing more to do for it.
                log.warning("job %s: run status not updated: %s", row.job_id, error)
        await self._run(self.store.update_job, row.job_id, finalized=1)

    async def rerun_job(self, name: str, request_id: str) -> job_pb2.Job:
        _text(request_id, "request_id", MAX_REQUEST_ID)
        source = await self._job_row(name, "name")
        if source.state not in TERMINAL_STATES:
            raise FailedPrecondition(
                f"job {source.job_id} is {source.state}: only finished jobs (SUCCEEDED, "
                "FAILED, CANCELLED) can be re-run",
                reason="JOB_NOT_FINISHED",
                metadata={"state": source.state},
            )
        now = now_ms()
        row = JobRow(
            job_id=new_id(),
            display_name=source.display_name,
            description=source.description,
            kind=source.kind,
            feature_config_id=source.feature_config_id,
            model_config_id=source.model_config_id,
            dataset_id=source.dataset_id,
            model_type=source.model_type,
            hardware_tier=source.hardware_tier,
            training_json=source.training_json,
            experiment=source.experiment,
            state="QUEUED",
            rerun_of=source.job_id,
            create_time=now,
            update_time=now,
            request_id=request_id or None,
            request_fingerprint=hashlib.sha256(f"rerun:{source.job_id}".encode()).hexdigest()
            if request_id
            else None,
        )
        return await self._queue(row, f"re-run of jobs/{source.job_id}")

    async def delete_job(self, name: str) -> None:
        job_id = _resource_id(name, "jobs", "name")
        row = await self._run(self.store.get, JobRow, job_id, "job")
        if row.state not in TERMINAL_STATES:
            raise FailedPrecondition(
                f"job {job_id} is {row.state}: cancel it first",
                reason="JOB_NOT_FINISHED",
                metadata={"state": row.state},
            )
        if row.run:
            await self.tracker.delete_run(row.run)
        await self._run(self.store.delete_job, job_id)
        await self._run(shutil.rmtree, self.work_root / job_id, True)
        self.notify()

    async def watch_job(self, name: str) -> AsyncIterator[job_pb2.Job]:
        """The job now, then each change until it ends; while nothing changes, the job again
        every WATCH_KEEPALIVE_SECONDS, so proxies with idle timeouts (the gateway's) keep
        the stream open through a long stage."""
        last: job_pb2.Job | None = None
        sent_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            changed = self._changed
            job = await self.get_job(name)
            if last is None or job != last or loop.time() - sent_at >= WATCH_KEEPALIVE_SECONDS:
                yield job
                last = job
                sent_at = loop.time()
            if job.state in (
                job_pb2.JOB_STATE_SUCCEEDED,
                job_pb2.JOB_STATE_FAILED,
                job_pb2.JOB_STATE_CANCELLED,
            ):
                return
            # Another replica's changes show up by polling; this one's wake us at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=1.0)


def resolve_training(
    requested: job_pb2.TrainingParameters,
    kind: str,
    model: ModelConfigRow,
    dataset: DatasetRow,
) -> job_pb2.TrainingParameters:
    """The job's training parameters with every default filled in, validated."""
    training = job_pb2.TrainingParameters()
    training.CopyFrom(requested)
    if not training.sample_percent:
        training.sample_percent = DEFAULT_SAMPLE[kind]
    if training.sample_percent not in SAMPLE_PERCENTS:
        raise InvalidArgument(
            "job.training.sample_percent must be one of " + ", ".join(map(str, SAMPLE_PERCENTS)),
            field="job.training.sample_percent",
            reason="OUT_OF_RANGE",
        )
    if not training.epochs:
        training.epochs = DEFAULT_EPOCHS[kind]
    if not 1 <= training.epochs <= MAX_EPOCHS[kind]:
        raise InvalidArgument(
            f"job.training.epochs must be 1-{MAX_EPOCHS[kind]} for a "
            f"{kind.lower().replace('_', ' ')}",
            field="job.training.epochs",
            reason="OUT_OF_RANGE",
        )
    if not training.batch_size:
        training.batch_size = DEFAULT_BATCH_SIZE
    if training.batch_size not in BATCH_SIZES:
        raise InvalidArgument(
            "job.training.batch_size must be one of " + ", ".join(map(str, BATCH_SIZES)),
            field="job.training.batch_size",
            reason="OUT_OF_RANGE",
        )
    if not training.HasField("learning_rate"):
        training.learning_rate = model.learning_rate
    if not 0 < training.learning_rate <= 1:
        raise InvalidArgument(
            "job.training.learning_rate must be in (0, 1]",
            field="job.training.learning_rate",
            reason="OUT_OF_RANGE",
        )
    _known(job_pb2.HardwareTier, training.hardware_tier, "job.training.hardware_tier")
    _known(job_pb2.SplitStrategy, training.split_strategy, "job.training.split_strategy")
    if not training.hardware_tier:
        training.hardware_tier = recommended_tier(  # type: ignore[assignment]
            dataset.row_count * training.sample_percent // 100
        )
    if not training.split_strategy:
        training.split_strategy = job_pb2.SPLIT_STRATEGY_RANDOM
    if not training.HasField("seed"):
        training.seed = DEFAULT_SEED
    return training


def recommended_tier(rows: int) -> int:
    for limit, tier in TIER_BY_ROWS:
        if rows <= limit:
            return job_pb2.HardwareTier.Value(f"HARDWARE_TIER_{tier}")
    return job_pb2.HARDWARE_TIER_LARGE


def _features_text(features_json: str) -> str:
    parts = []
    for f in json.loads(features_json):
        suffix = f":{f['embedding_dim']}" if f["kind"] == "CATEGORICAL" else ""
        parts.append(f"{f['column']}:{f['kind'].lower()}{suffix}")
    return ",".join(parts)


def run_params(
    row: JobRow, features: FeatureConfigRow, model: ModelConfigRow, dataset: DatasetRow
) -> dict[str, str]:
    """The full resolved configuration, as the run's (immutable) params."""
    training = convert.training_from_json(row.training_json)
    architecture = json.loads(model.architecture_json)
    machine = MACHINE_TYPES[row.hardware_tier]
    params = {
        "job_kind": row.kind.lower(),
        "model_type": row.model_type.lower(),
        "dataset": dataset.display_name,
        "dataset_id": dataset.dataset_id,
        "dataset_rows": str(dataset.row_count),
        "feature_config": features.display_name,
        "model_config": model.display_name,
        "query_features": _features_text(features.query_features_json),
        "candidate_features": _features_text(features.candidate_features_json),
        "query_tensor_dim": str(features.query_tensor_dim),
        "candidate_tensor_dim": str(features.candidate_tensor_dim),
        "query_layers": ",".join(map(str, architecture["query_layers"])),
        "candidate_layers": ",".join(map(str, architecture["candidate_layers"])),
        "optimizer": model.optimizer.lower(),
        "sample_percent": str(training.sample_percent),
        "epochs": str(training.epochs),
        "batch_size": str(training.batch_size),
        "learning_rate": repr(training.learning_rate),
        "split_strategy": job_pb2.SplitStrategy.Name(training.split_strategy)
        .removeprefix("SPLIT_STRATEGY_")
        .lower(),
        "seed": str(training.seed),
        "hardware_tier": row.hardware_tier.lower(),
        "machine_type": machine.machine_type,
    }
    if row.model_type in ("RANKING", "MULTITASK"):
        params["target_column"] = features.target_column
        params["rating_layers"] = ",".join(map(str, architecture["rating_layers"]))
    if row.model_type == "MULTITASK":
        params["retrieval_weight"] = repr(architecture["retrieval_weight"])
        params["ranking_weight"] = repr(architecture["ranking_weight"])
    return params


def trainer_spec(
    row: JobRow,
    features: FeatureConfigRow,
    model: ModelConfigRow,
    dataset: DatasetRow,
    work_dir: Path,
    reporting: dict[str, Any],
) -> dict[str, Any]:
    """The cairn_trainer spec.json of a job."""
    training = convert.training_from_json(row.training_json)
    architecture = json.loads(model.architecture_json)

    def tower(features_json: str) -> list[dict[str, Any]]:
        return [
            {"column": f["column"], "kind": f["kind"].lower(), "embedding_dim": f["embedding_dim"]}
            for f in json.loads(features_json)
        ]

    return {
        "job_id": row.job_id,
        "model_type": row.model_type.lower(),
        "work_dir": str(work_dir),
        "dataset": {
            "uri": dataset.uri,
            "format": dataset.format.lower(),
            "user_column": dataset.user_column,
            "item_column": dataset.item_column,
            "timestamp_column": dataset.timestamp_column,
            "columns": [
                {"name": c["name"], "type": c["type"].lower()}
                for c in json.loads(dataset.columns_json)
            ],
        },
        "split": {
            "strategy": job_pb2.SplitStrategy.Name(training.split_strategy)
            .removeprefix("SPLIT_STRATEGY_")
            .lower(),
            "test_fraction": 0.2,
            "seed": training.seed,
        },
        "sample_percent": training.sample_percent,
        "features": {
            "query": tower(features.query_features_json),
            "candidate": tower(features.candidate_features_json),
            "target_column": features.target_column,
        },
        "model": {
            "query_layers": architecture["query_layers"],
            "candidate_layers": architecture["candidate_layers"],
            "rating_layers": architecture["rating_layers"],
            "optimizer": model.optimizer.lower(),
            "learning_rate": model.learning_rate,
            "retrieval_weight": architecture["retrieval_weight"],
            "ranking_weight": architecture["ranking_weight"],
        },
        "training": {
            "epochs": training.epochs,
            "batch_size": training.batch_size,
            "learning_rate": training.learning_rate,
        },
        "hardware_tier": row.hardware_tier.lower(),
        "machine_type": MACHINE_TYPES[row.hardware_tier].machine_type,
        "reporting": reporting,
    }
