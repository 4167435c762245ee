"""A client of Cairn's scheduler: datasets, feature configs, model configs and training jobs
(quick tests and full training of TensorFlow Recommenders models).

    from cairn.scheduling import FeatureSpec, Scheduler
    with Scheduler() as scheduler:                    # CAIRN_SCHEDULER_URI, 127.0.0.1:50052
        data = scheduler.create_dataset(
            "movielens", "ratings.csv", user_column="user_id", item_column="movie_id"
        )
        features = scheduler.create_feature_config(
            "ids-only", data.name,
            query_features=[FeatureSpec("user_id")],
            candidate_features=[FeatureSpec("movie_id", embedding_dim=16)],
        )
        model = scheduler.create_model_config("two-tower", "retrieval", query_layers=[64, 32])
        job = scheduler.submit_quick_test(features.name, model.name, epochs=2)
        for update in scheduler.watch_job(job.name):
            print(update.progress_percent)

Every resource argument takes a resource name ("jobs/abc") or a bare id ("abc"); the
resolve_* methods also find datasets and configs by display name. Methods return the
service's messages (cairn.scheduler.v1); failures raise the same CairnError subclasses as
the tracker client.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf import empty_pb2

from cairn.errors import (
    CairnError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    from_rpc_error,
)
from cairn.logproxy.v1 import log_entry_pb2, logproxy_service_pb2, logproxy_service_pb2_grpc
from cairn.scheduler.v1 import (
    dataset_pb2,
    feature_config_pb2,
    job_pb2,
    model_config_pb2,
    scheduler_service_pb2_grpc,
)
from cairn.scheduler.v1 import scheduler_service_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50052"
DEFAULT_LOGPROXY_TARGET = "127.0.0.1:50054"
T = TypeVar("T")

Dataset = dataset_pb2.Dataset
FeatureConfig = feature_config_pb2.FeatureConfig
ModelConfig = model_config_pb2.ModelConfig
Job = job_pb2.Job

ModelTypeName = Literal["retrieval", "ranking", "multitask"]
OptimizerName = Literal["adagrad", "adam", "sgd"]
FeatureKindName = Literal["categorical", "numeric"]
HardwareName = Literal["small", "medium", "large"]
SplitName = Literal["random", "time-holdout", "strict-time"]
FormatName = Literal["csv", "parquet"]

MODEL_TYPES: dict[str, model_config_pb2.ModelType] = {
    "retrieval": model_config_pb2.MODEL_TYPE_RETRIEVAL,
    "ranking": model_config_pb2.MODEL_TYPE_RANKING,
    "multitask": model_config_pb2.MODEL_TYPE_MULTITASK,
}
OPTIMIZERS: dict[str, model_config_pb2.Optimizer] = {
    "adagrad": model_config_pb2.OPTIMIZER_ADAGRAD,
    "adam": model_config_pb2.OPTIMIZER_ADAM,
    "sgd": model_config_pb2.OPTIMIZER_SGD,
}
FEATURE_KINDS: dict[str, feature_config_pb2.FeatureKind] = {
    "categorical": feature_config_pb2.FEATURE_KIND_CATEGORICAL,
    "numeric": feature_config_pb2.FEATURE_KIND_NUMERIC,
}
HARDWARE_TIERS: dict[str, job_pb2.HardwareTier] = {
    "small": job_pb2.HARDWARE_TIER_SMALL,
    "medium": job_pb2.HARDWARE_TIER_MEDIUM,
    "large": job_pb2.HARDWARE_TIER_LARGE,
}
SPLIT_STRATEGIES: dict[str, job_pb2.SplitStrategy] = {
    "random": job_pb2.SPLIT_STRATEGY_RANDOM,
    "time-holdout": job_pb2.SPLIT_STRATEGY_TIME_HOLDOUT,
    "strict-time": job_pb2.SPLIT_STRATEGY_STRICT_TIME,
}
FORMATS: dict[str, dataset_pb2.DataFormat] = {
    "csv": dataset_pb2.DATA_FORMAT_CSV,
    "parquet": dataset_pb2.DATA_FORMAT_PARQUET,
}
TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)

# Retry UNAVAILABLE transparently in the channel: creates carry a request_id, so a retried
# create returns the first result instead of a duplicate.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "cairn.scheduler.v1.SchedulerService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
_WATCH_RECONNECTS = 5


@dataclass(frozen=True)
class FeatureSpec:
    """One column of a tower's input: a categorical (vocabulary + embedding of embedding_dim)
    or a numeric (z-score normalized, one dimension)."""

    column: str
    kind: FeatureKindName = "categorical"
    embedding_dim: int = 32

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        """ "COLUMN[:KIND[:DIM]]", e.g. "user_id", "user_id:categorical:32", "age:numeric"."""
        parts = [p.strip() for p in text.split(":")]
        if not parts[0] or len(parts) > 3:
            raise InvalidArgumentError(
                f"feature {text!r}: use COLUMN[:KIND[:EMBEDDING_DIM]], e.g. "
                "user_id:categorical:32 or age:numeric"
            )
        kind = parts[1].lower() if len(parts) > 1 and parts[1] else "categorical"
        if kind not in FEATURE_KINDS:
            raise InvalidArgumentError(
                f"feature {text!r}: kind {parts[1]!r} is not one of {', '.join(FEATURE_KINDS)}"
            )
        dim = 32
        if len(parts) == 3:
            try:
                dim = int(parts[2])
            except ValueError:
                raise InvalidArgumentError(
                    f"feature {text!r}: embedding dim {parts[2]!r} is not a whole number"
                ) from None
        return cls(parts[0], kind, dim)  # type: ignore[arg-type]  # checked above

    def to_proto(self) -> feature_config_pb2.Feature:
        try:
            kind = FEATURE_KINDS[self.kind]
        except KeyError:
            raise InvalidArgumentError(
                f"feature {self.column!r}: kind {self.kind!r} is not one of "
                f"{', '.join(FEATURE_KINDS)}"
            ) from None
        return feature_config_pb2.Feature(
            column=self.column, kind=kind, embedding_dim=self.embedding_dim
        )


FeatureLike = FeatureSpec | Mapping[str, Any] | str | feature_config_pb2.Feature


def _feature(value: FeatureLike) -> feature_config_pb2.Feature:
    """A feature from a FeatureSpec, a dict ({"column": ..., "kind": ..., "embedding_dim": ...}),
    a "COLUMN[:KIND[:DIM]]" string or a Feature message."""
    if isinstance(value, feature_config_pb2.Feature):
        return value
    if isinstance(value, FeatureSpec):
        return value.to_proto()
    if isinstance(value, str):
        return FeatureSpec.parse(value).to_proto()
    unknown = set(value) - {"column", "kind", "embedding_dim"}
    if unknown or "column" not in value:
        raise InvalidArgumentError(
            f"feature {dict(value)!r}: give column (and optionally kind, embedding_dim)"
        )
    return FeatureSpec(
        column=str(value["column"]),
        kind=value.get("kind", "categorical"),
        embedding_dim=int(value.get("embedding_dim", 32)),
    ).to_proto()


def _choice(table: Mapping[str, T], value: str | None, what: str) -> T | None:
    if value is None:
        return None
    try:
        return table[value.lower().replace("_", "-")]
    except KeyError:
        raise InvalidArgumentError(
            f"{what} {value!r} is not one of {', '.join(table)}", reason="INVALID_ARGUMENT"
        ) from None


def resource_name(collection: str, ref: str) -> str:
    """ "jobs/abc" stays as it is; a bare id "abc" becomes "jobs/abc"."""
    ref = ref.strip()
    if not ref:
        raise InvalidArgumentError(f"an empty {collection} name or id")
    if ref.startswith(f"{collection}/"):
        return ref
    if "/" in ref:
        raise InvalidArgumentError(
            f"{ref!r} is not a {collection} id or a resource name {collection}/{{id}}"
        )
    return f"{collection}/{ref}"


def quote(value: str) -> str:
    """A string literal of the filter grammar that reads back as exactly `value`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def all_of(*conditions: str) -> str:
    """Filter text that holds when every non-empty condition holds."""
    parts = [c.strip() for c in conditions if c and c.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " AND ".join(f"({p})" for p in parts)


def _local_uri(uri: str) -> str:
    """A relative local path as an absolute one: the scheduler may run in another directory."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return os.path.abspath(uri)


def is_finished(job: job_pb2.Job) -> bool:
    return job.state in TERMINAL_STATES


class Scheduler:
    """A client of the Cairn scheduler. Thread-safe."""

    def __init__(
        self, target: str | None = None, *, token: str | None = None, timeout: float = 60.0
    ) -> None:
        target = target or os.environ.get("CAIRN_SCHEDULER_URI") or DEFAULT_TARGET
        for prefix in ("grpc://", "cairn://"):
            if target.startswith(prefix):
                target = target[len(prefix) :].rstrip("/")
        self.target = target
        token = token if token is not None else os.environ.get("CAIRN_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout = timeout
        self._channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.service_config", _SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.stub = scheduler_service_pb2_grpc.SchedulerServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._logs_channel: grpc.Channel | None = None
        self._logs_stub: logproxy_service_pb2_grpc.LogProxyServiceStub | None = None

    # ------------------------------------------------------------------ plumbing

    def _error(self, error: grpc.RpcError) -> CairnError:
        converted = from_rpc_error(error)
        if isinstance(converted, UnavailableError) and not converted.reason:
            details = error.details() if hasattr(error, "details") else str(error)
            return UnavailableError(
                f"the Cairn scheduler at {self.target} did not answer ({details}): is it "
                "running (`cairn up`) and does CAIRN_SCHEDULER_URI point at it?",
                code=converted.code,
            )
        return converted

    def _call(self, method: Callable[..., Any], request: Any, response: type[T]) -> T:
        try:
            result = method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._error(error) from None
        assert isinstance(result, response)
        return result

    def _pages(
        self,
        method: Callable[..., Any],
        request: Any,
        response: type[Any],
        field: str,
        limit: int | None,
    ) -> list[Any]:
        """Every item of a List RPC (or the first `limit`), following page tokens."""
        items: list[Any] = []
        page_size = request.page_size
        while limit is None or len(items) < limit:
            if limit is not None:
                want = limit - len(items)
                request.page_size = min(page_size, want) if page_size else min(want, 1000)
            page = self._call(method, request, response)
            items.extend(getattr(page, field))
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return items

    # ------------------------------------------------------------------ datasets

    def create_dataset(
        self,
        display_name: str,
        uri: str,
        user_column: str,
        item_column: str,
        timestamp_column: str = "",
        description: str = "",
        format: FormatName | None = None,
        request_id: str | None = None,
        *,
        dataset_id: str = "",
    ) -> dataset_pb2.Dataset:
        """Register a CSV or Parquet file of interactions (a relative local path is made
        absolute); the scheduler reads its columns and row count now."""
        dataset = dataset_pb2.Dataset(
            display_name=display_name,
            description=description,
            uri=_local_uri(uri),
            format=_choice(FORMATS, format, "format"),
            user_column=user_column,
            item_column=item_column,
            timestamp_column=timestamp_column,
        )
        return self._call(
            self.stub.CreateDataset,
            pb.CreateDatasetRequest(
                dataset=dataset,
                dataset_id=dataset_id,
                request_id=request_id or uuid.uuid4().hex,
            ),
            dataset_pb2.Dataset,
        )

    def get_dataset(self, name: str) -> dataset_pb2.Dataset:
        return self._call(
            self.stub.GetDataset,
            pb.GetDatasetRequest(name=resource_name("datasets", name)),
            dataset_pb2.Dataset,
        )

    def list_datasets(
        self, filter: str = "", order_by: str = "", page_size: int = 0, limit: int | None = None
    ) -> list[dataset_pb2.Dataset]:
        """Every dataset matching `filter` (or the first `limit`), all pages."""
        request = pb.ListDatasetsRequest(filter=filter, order_by=order_by, page_size=page_size)
        return self._pages(
            self.stub.ListDatasets, request, pb.ListDatasetsResponse, "datasets", limit
        )

    def list_datasets_page(
        self, filter: str = "", order_by: str = "", page_size: int = 0, page_token: str = ""
    ) -> pb.ListDatasetsResponse:
        """One page; pass its next_page_token back for the next."""
        return self._call(
            self.stub.ListDatasets,
            pb.ListDatasetsRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
            ),
            pb.ListDatasetsResponse,
        )

    def delete_dataset(self, name: str) -> None:
        self._call(
            self.stub.DeleteDataset,
            pb.DeleteDatasetRequest(name=resource_name("datasets", name)),
            empty_pb2.Empty,
        )

    def resolve_dataset(self, ref: str) -> dataset_pb2.Dataset:
        """A dataset by display name, id or resource name."""
        return self._resolve(ref, "datasets", self.get_dataset, self.list_datasets, "dataset")

    # ------------------------------------------------------------------ feature configs

    def create_feature_config(
        self,
        display_name: str,
        dataset: str,
        query_features: Sequence[FeatureLike],
        candidate_features: Sequence[FeatureLike],
        target_column: str = "",
        description: str = "",
        request_id: str | None = None,
        *,
        feature_config_id: str = "",
    ) -> feature_config_pb2.FeatureConfig:
        """Which columns feed the query and candidate towers (each a FeatureSpec, a dict,
        "COLUMN[:KIND[:DIM]]" or a Feature), and the target a ranking head learns."""
        config = feature_config_pb2.FeatureConfig(
            display_name=display_name,
            description=description,
            dataset=resource_name("datasets", dataset),
            query_features=[_feature(f) for f in query_features],
            candidate_features=[_feature(f) for f in candidate_features],
            target_column=target_column,
        )
        return self._call(
            self.stub.CreateFeatureConfig,
            pb.CreateFeatureConfigRequest(
                feature_config=config,
                feature_config_id=feature_config_id,
                request_id=request_id or uuid.uuid4().hex,
            ),
            feature_config_pb2.FeatureConfig,
        )

    def get_feature_config(self, name: str) -> feature_config_pb2.FeatureConfig:
        return self._call(
            self.stub.GetFeatureConfig,
            pb.GetFeatureConfigRequest(name=resource_name("featureConfigs", name)),
            feature_config_pb2.FeatureConfig,
        )

    def list_feature_configs(
        self, filter: str = "", order_by: str = "", page_size: int = 0, limit: int | None = None
    ) -> list[feature_config_pb2.FeatureConfig]:
        request = pb.ListFeatureConfigsRequest(
            filter=filter, order_by=order_by, page_size=page_size
        )
        return self._pages(
            self.stub.ListFeatureConfigs,
            request,
            pb.ListFeatureConfigsResponse,
            "feature_configs",
            limit,
        )

    def list_feature_configs_page(
        self, filter: str = "", order_by: str = "", page_size: int = 0, page_token: str = ""
    ) -> pb.ListFeatureConfigsResponse:
        return self._call(
            self.stub.ListFeatureConfigs,
            pb.ListFeatureConfigsRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
            ),
            pb.ListFeatureConfigsResponse,
        )

    def delete_feature_config(self, name: str) -> None:
        self._call(
            self.stub.DeleteFeatureConfig,
            pb.DeleteFeatureConfigRequest(name=resource_name("featureConfigs", name)),
            empty_pb2.Empty,
        )

    def resolve_feature_config(self, ref: str) -> feature_config_pb2.FeatureConfig:
        """A feature config by display name, id or resource name."""
        return self._resolve(
            ref,
            "featureConfigs",
            self.get_feature_config,
            self.list_feature_configs,
            "feature config",
        )

    # ------------------------------------------------------------------ model configs

    def create_model_config(
        self,
        display_name: str,
        model_type: ModelTypeName,
        query_layers: Sequence[int] = (),
        candidate_layers: Sequence[int] = (),
        rating_layers: Sequence[int] = (),
        optimizer: OptimizerName | None = None,
        learning_rate: float | None = None,
        retrieval_weight: float | None = None,
        ranking_weight: float | None = None,
        description: str = "",
        request_id: str | None = None,
        *,
        model_config_id: str = "",
    ) -> model_config_pb2.ModelConfig:
        """A model architecture: tower layer widths (input to output), the rating head's
        (ranking, multitask), the optimizer and its default learning rate; unset values take
        the service's defaults."""
        config = model_config_pb2.ModelConfig(
            display_name=display_name,
            description=description,
            model_type=_choice(MODEL_TYPES, model_type, "model type"),
            query_layers=list(query_layers),
            candidate_layers=list(candidate_layers),
            rating_layers=list(rating_layers),
            optimizer=_choice(OPTIMIZERS, optimizer, "optimizer"),
            learning_rate=learning_rate,
            retrieval_weight=retrieval_weight,
            ranking_weight=ranking_weight,
        )
        return self._call(
            self.stub.CreateModelConfig,
            pb.CreateModelConfigRequest(
                model_config=config,
                model_config_id=model_config_id,
                request_id=request_id or uuid.uuid4().hex,
            ),
            model_config_pb2.ModelConfig,
        )

    def get_model_config(self, name: str) -> model_config_pb2.ModelConfig:
        return self._call(
            self.stub.GetModelConfig,
            pb.GetModelConfigRequest(name=resource_name("modelConfigs", name)),
            model_config_pb2.ModelConfig,
        )

    def list_model_configs(
        self, filter: str = "", order_by: str = "", page_size: int = 0, limit: int | None = None
    ) -> list[model_config_pb2.ModelConfig]:
        request = pb.ListModelConfigsRequest(filter=filter, order_by=order_by, page_size=page_size)
        return self._pages(
            self.stub.ListModelConfigs, request, pb.ListModelConfigsResponse, "model_configs", limit
        )

    def list_model_configs_page(
        self, filter: str = "", order_by: str = "", page_size: int = 0, page_token: str = ""
    ) -> pb.ListModelConfigsResponse:
        return self._call(
            self.stub.ListModelConfigs,
            pb.ListModelConfigsRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
            ),
            pb.ListModelConfigsResponse,
        )

    def delete_model_config(self, name: str) -> None:
        self._call(
            self.stub.DeleteModelConfig,
            pb.DeleteModelConfigRequest(name=resource_name("modelConfigs", name)),
            empty_pb2.Empty,
        )

    def resolve_model_config(self, ref: str) -> model_config_pb2.ModelConfig:
        """A model config by display name, id or resource name."""
        return self._resolve(
            ref, "modelConfigs", self.get_model_config, self.list_model_configs, "model config"
        )

    # ------------------------------------------------------------------ jobs

    def submit_quick_test(
        self,
        feature_config: str,
        model_config: str,
        *,
        sample_percent: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        hardware_tier: HardwareName | None = None,
        split_strategy: SplitName | None = None,
        seed: int | None = None,
        experiment: str = "",
        display_name: str = "",
        description: str = "",
        request_id: str | None = None,
    ) -> job_pb2.Job:
        """Queue a quick test: sampled data (default 10%) and few epochs (default 3)."""
        return self._submit(
            job_pb2.JOB_KIND_QUICK_TEST,
            feature_config,
            model_config,
            job_pb2.TrainingParameters(
                sample_percent=sample_percent,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                hardware_tier=_choice(HARDWARE_TIERS, hardware_tier, "hardware tier"),
                split_strategy=_choice(SPLIT_STRATEGIES, split_strategy, "split strategy"),
                seed=seed,
            ),
            experiment=experiment,
            display_name=display_name,
            description=description,
            request_id=request_id,
        )

    def submit_training(
        self,
        feature_config: str,
        model_config: str,
        *,
        sample_percent: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        hardware_tier: HardwareName | None = None,
        split_strategy: SplitName | None = None,
        seed: int | None = None,
        experiment: str = "",
        display_name: str = "",
        description: str = "",
        request_id: str | None = None,
    ) -> job_pb2.Job:
        """Queue a full training: all of the data (unless sample_percent) and the full epoch
        budget (default 30)."""
        return self._submit(
            job_pb2.JOB_KIND_FULL_TRAINING,
            feature_config,
            model_config,
            job_pb2.TrainingParameters(
                sample_percent=sample_percent,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                hardware_tier=_choice(HARDWARE_TIERS, hardware_tier, "hardware tier"),
                split_strategy=_choice(SPLIT_STRATEGIES, split_strategy, "split strategy"),
                seed=seed,
            ),
            experiment=experiment,
            display_name=display_name,
            description=description,
            request_id=request_id,
        )

    def _submit(
        self,
        kind: job_pb2.JobKind,
        feature_config: str,
        model_config: str,
        training: job_pb2.TrainingParameters,
        *,
        experiment: str,
        display_name: str,
        description: str,
        request_id: str | None,
    ) -> job_pb2.Job:
        job = job_pb2.Job(
            kind=kind,
            feature_config=resource_name("featureConfigs", feature_config),
            model_config=resource_name("modelConfigs", model_config),
            training=training,
            experiment=experiment,
            display_name=display_name,
            description=description,
        )
        return self._call(
            self.stub.CreateJob,
            pb.CreateJobRequest(job=job, request_id=request_id or uuid.uuid4().hex),
            job_pb2.Job,
        )

    def get_job(self, name: str) -> job_pb2.Job:
        return self._call(
            self.stub.GetJob, pb.GetJobRequest(name=resource_name("jobs", name)), job_pb2.Job
        )

    def list_jobs(
        self,
        filter: str = "",
        search: str = "",
        order_by: str = "",
        page_size: int = 0,
        limit: int | None = None,
    ) -> list[job_pb2.Job]:
        """Every job matching `filter` (e.g. "state = 'RUNNING' AND model_type = 'RANKING'")
        and the free-text `search` (or the first `limit`), newest first unless order_by."""
        request = pb.ListJobsRequest(
            filter=filter, search=search, order_by=order_by, page_size=page_size
        )
        return self._pages(self.stub.ListJobs, request, pb.ListJobsResponse, "jobs", limit)

    def list_jobs_page(
        self,
        filter: str = "",
        search: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListJobsResponse:
        return self._call(
            self.stub.ListJobs,
            pb.ListJobsRequest(
                filter=filter,
                search=search,
                order_by=order_by,
                page_size=page_size,
                page_token=page_token,
            ),
            pb.ListJobsResponse,
        )

    def cancel_job(self, name: str) -> job_pb2.Job:
        """A queued job ends CANCELLED at once; a running one goes CANCELLING."""
        return self._call(
            self.stub.CancelJob,
            pb.CancelJobRequest(name=resource_name("jobs", name)),
            job_pb2.Job,
        )

    def rerun_job(self, name: str, request_id: str | None = None) -> job_pb2.Job:
        """Queue a new job with the configuration of a finished one."""
        return self._call(
            self.stub.RerunJob,
            pb.RerunJobRequest(
                name=resource_name("jobs", name), request_id=request_id or uuid.uuid4().hex
            ),
            job_pb2.Job,
        )

    def delete_job(self, name: str) -> None:
        """Delete a finished job with its tracker run and artifacts."""
        self._call(
            self.stub.DeleteJob,
            pb.DeleteJobRequest(name=resource_name("jobs", name)),
            empty_pb2.Empty,
        )

    def watch_job(self, name: str) -> Iterator[job_pb2.Job]:
        """The job now, then every change until it is finished. A dropped stream is opened
        again (the job is then sent again as it is now), up to a few times in a row."""
        request = pb.WatchJobRequest(name=resource_name("jobs", name))
        attempts = 0
        while True:
            stream = self.stub.WatchJob(request, metadata=self._metadata)
            try:
                for job in stream:
                    attempts = 0
                    yield job
                    if is_finished(job):
                        return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempts >= _WATCH_RECONNECTS:
                    raise self._error(error) from None
            finally:
                stream.cancel()
            # The stream ended (or dropped) before the job finished: open it again.
            attempts += 1
            if attempts > _WATCH_RECONNECTS:
                return
            time.sleep(min(0.2 * 2**attempts, 3.0))

    # ------------------------------------------------------------------ logs

    def _logs(self) -> logproxy_service_pb2_grpc.LogProxyServiceStub:
        """The log proxy (CAIRN_LOGPROXY_URI, default 127.0.0.1:50054), opened on first use."""
        if self._logs_stub is None:
            target = os.environ.get("CAIRN_LOGPROXY_URI") or DEFAULT_LOGPROXY_TARGET
            self._logs_channel = grpc.insecure_channel(target)
            self._logs_stub = logproxy_service_pb2_grpc.LogProxyServiceStub(self._logs_channel)  # type: ignore[no-untyped-call]
        return self._logs_stub

    def job_logs(
        self,
        name: str,
        *,
        component: str = "",
        min_severity: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> logproxy_service_pb2.ListJobLogsResponse:
        """One page of the job's log entries, newest first."""
        return self._call(
            self._logs().ListJobLogs,
            logproxy_service_pb2.ListJobLogsRequest(
                job=resource_name("jobs", name),
                component=component,
                min_severity=_severity(min_severity),
                page_size=page_size,
                page_token=page_token,
            ),
            logproxy_service_pb2.ListJobLogsResponse,
        )

    def tail_job_logs(
        self,
        name: str,
        *,
        component: str = "",
        min_severity: str = "",
        limit: int = 0,
        follow: bool = False,
    ) -> Iterator[log_entry_pb2.LogEntry]:
        """The last `limit` entries (default 100), then with `follow` new ones as they are
        written, until the job ends."""
        request = logproxy_service_pb2.TailJobLogsRequest(
            job=resource_name("jobs", name),
            component=component,
            min_severity=_severity(min_severity),
            limit=limit,
            follow=follow,
        )
        stream = self._logs().TailJobLogs(request, metadata=self._metadata)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise self._error(error) from None
        finally:
            stream.cancel()

    def wait_job(self, name: str) -> job_pb2.Job:
        """Block until the job is finished; its final state."""
        last: job_pb2.Job | None = None
        for job in self.watch_job(name):
            last = job
        return last if last is not None else self.get_job(name)

    # ------------------------------------------------------------------ lookups

    def _resolve(
        self,
        ref: str,
        collection: str,
        get: Callable[[str], T],
        search: Callable[..., list[T]],
        noun: str,
    ) -> T:
        """By resource name, then display name, then id."""
        ref = ref.strip()
        if ref.startswith(f"{collection}/"):
            return get(ref)
        matches = search(filter=f"display_name = {quote(ref)}", limit=2)
        if len(matches) == 1:
            return matches[0]
        if "/" not in ref and ref:
            try:
                return get(ref)
            except (NotFoundError, InvalidArgumentError):
                pass
        raise NotFoundError(
            f"no {noun} named or with id {ref!r}",
            reason=f"{noun.replace(' ', '_').upper()}_NOT_FOUND",
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._channel.close()
        if self._logs_channel is not None:
            self._logs_channel.close()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _severity(name: str) -> Any:
    """ "warning" -> SEVERITY_WARNING ("" -> unspecified: every entry)."""
    if not name:
        return log_entry_pb2.SEVERITY_UNSPECIFIED
    try:
        return int(log_entry_pb2.Severity.Value(f"SEVERITY_{name.upper()}"))
    except ValueError:
        raise ValueError(
            f"unknown severity {name!r}; use debug, info, warning, error or critical"
        ) from None
