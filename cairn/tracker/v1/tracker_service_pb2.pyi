import datetime

from cairn.tracker.v1 import artifact_pb2 as _artifact_pb2
from cairn.tracker.v1 import experiment_pb2 as _experiment_pb2
from cairn.tracker.v1 import lifecycle_pb2 as _lifecycle_pb2
from cairn.tracker.v1 import metric_pb2 as _metric_pb2
from cairn.tracker.v1 import run_pb2 as _run_pb2
from cairn.tracker.v1 import run_table_pb2 as _run_table_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateExperimentRequest(_message.Message):
    __slots__ = ("experiment", "request_id")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    experiment: _experiment_pb2.Experiment
    request_id: str
    def __init__(self, experiment: _Optional[_Union[_experiment_pb2.Experiment, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetExperimentByNameRequest(_message.Message):
    __slots__ = ("display_name",)
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    def __init__(self, display_name: _Optional[str] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter", "order_by", "lifecycle_filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    order_by: str
    lifecycle_filter: _lifecycle_pb2.LifecycleFilter
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ..., order_by: _Optional[str] = ..., lifecycle_filter: _Optional[_Union[_lifecycle_pb2.LifecycleFilter, str]] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "next_page_token")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[_experiment_pb2.Experiment]
    next_page_token: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[_experiment_pb2.Experiment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateExperimentRequest(_message.Message):
    __slots__ = ("experiment", "update_mask")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    experiment: _experiment_pb2.Experiment
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, experiment: _Optional[_Union[_experiment_pb2.Experiment, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RestoreExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetExperimentTagsRequest(_message.Message):
    __slots__ = ("experiment", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    tags: _containers.ScalarMap[str, str]
    def __init__(self, experiment: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetExperimentTagsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteExperimentTagRequest(_message.Message):
    __slots__ = ("experiment", "key")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    key: str
    def __init__(self, experiment: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class PurgeDeletedRequest(_message.Message):
    __slots__ = ("older_than", "experiment_ids", "dry_run")
    OLDER_THAN_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    older_than: _duration_pb2.Duration
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    def __init__(self, older_than: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., experiment_ids: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PurgeDeletedResponse(_message.Message):
    __slots__ = ("purged_experiment_count", "purged_run_count", "freed_bytes", "purged_run_ids")
    PURGED_EXPERIMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PURGED_RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PURGED_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    purged_experiment_count: int
    purged_run_count: int
    freed_bytes: int
    purged_run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, purged_experiment_count: _Optional[int] = ..., purged_run_count: _Optional[int] = ..., freed_bytes: _Optional[int] = ..., purged_run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("parent", "run", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    run: _run_pb2.Run
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("name", "view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    view: _run_pb2.RunView
    def __init__(self, name: _Optional[str] = ..., view: _Optional[_Union[_run_pb2.RunView, str]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "filter", "order_by", "lifecycle_filter", "view")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FILTER_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    filter: str
    order_by: str
    lifecycle_filter: _lifecycle_pb2.LifecycleFilter
    view: _run_pb2.RunView
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ..., order_by: _Optional[str] = ..., lifecycle_filter: _Optional[_Union[_lifecycle_pb2.LifecycleFilter, str]] = ..., view: _Optional[_Union[_run_pb2.RunView, str]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchRunsRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "order_by", "page_size", "page_token", "lifecycle_filter", "view")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FILTER_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    order_by: str
    page_size: int
    page_token: str
    lifecycle_filter: _lifecycle_pb2.LifecycleFilter
    view: _run_pb2.RunView
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., order_by: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., lifecycle_filter: _Optional[_Union[_lifecycle_pb2.LifecycleFilter, str]] = ..., view: _Optional[_Union[_run_pb2.RunView, str]] = ...) -> None: ...

class SearchRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class QueryRunTableRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "lifecycle_filter", "columns", "order_by", "limit")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FILTER_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    lifecycle_filter: _lifecycle_pb2.LifecycleFilter
    columns: _containers.RepeatedScalarFieldContainer[str]
    order_by: str
    limit: int
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., lifecycle_filter: _Optional[_Union[_lifecycle_pb2.LifecycleFilter, str]] = ..., columns: _Optional[_Iterable[str]] = ..., order_by: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AggregateRunsRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "lifecycle_filter", "group_by", "aggregates")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    lifecycle_filter: _lifecycle_pb2.LifecycleFilter
    group_by: _containers.RepeatedScalarFieldContainer[str]
    aggregates: _containers.RepeatedCompositeFieldContainer[_run_table_pb2.Aggregate]
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., lifecycle_filter: _Optional[_Union[_lifecycle_pb2.LifecycleFilter, str]] = ..., group_by: _Optional[_Iterable[str]] = ..., aggregates: _Optional[_Iterable[_Union[_run_table_pb2.Aggregate, _Mapping]]] = ...) -> None: ...

class AggregateRunsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_run_table_pb2.AggregateRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[_run_table_pb2.AggregateRow, _Mapping]]] = ...) -> None: ...

class ListRunKeysRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "lifecycle_filter")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FILTER_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    lifecycle_filter: _lifecycle_pb2.LifecycleFilter
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., lifecycle_filter: _Optional[_Union[_lifecycle_pb2.LifecycleFilter, str]] = ...) -> None: ...

class ListRunKeysResponse(_message.Message):
    __slots__ = ("param_keys", "metric_keys", "tag_keys", "run_count")
    PARAM_KEYS_FIELD_NUMBER: _ClassVar[int]
    METRIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    TAG_KEYS_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    param_keys: _containers.RepeatedCompositeFieldContainer[_run_table_pb2.RunKeyCount]
    metric_keys: _containers.RepeatedCompositeFieldContainer[_run_table_pb2.RunKeyCount]
    tag_keys: _containers.RepeatedCompositeFieldContainer[_run_table_pb2.RunKeyCount]
    run_count: int
    def __init__(self, param_keys: _Optional[_Iterable[_Union[_run_table_pb2.RunKeyCount, _Mapping]]] = ..., metric_keys: _Optional[_Iterable[_Union[_run_table_pb2.RunKeyCount, _Mapping]]] = ..., tag_keys: _Optional[_Iterable[_Union[_run_table_pb2.RunKeyCount, _Mapping]]] = ..., run_count: _Optional[int] = ...) -> None: ...

class UpdateRunRequest(_message.Message):
    __slots__ = ("run", "update_mask")
    RUN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RestoreRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LogParamsRequest(_message.Message):
    __slots__ = ("run", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    run: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, run: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LogParamsResponse(_message.Message):
    __slots__ = ("new_param_count",)
    NEW_PARAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    new_param_count: int
    def __init__(self, new_param_count: _Optional[int] = ...) -> None: ...

class LogMetricsRequest(_message.Message):
    __slots__ = ("run", "batch_id", "metrics", "columns")
    RUN_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    run: str
    batch_id: str
    metrics: _containers.RepeatedCompositeFieldContainer[_metric_pb2.Metric]
    columns: _metric_pb2.MetricPointColumns
    def __init__(self, run: _Optional[str] = ..., batch_id: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[_metric_pb2.Metric, _Mapping]]] = ..., columns: _Optional[_Union[_metric_pb2.MetricPointColumns, _Mapping]] = ...) -> None: ...

class LogMetricsResponse(_message.Message):
    __slots__ = ("stored_point_count", "duplicate")
    STORED_POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    stored_point_count: int
    duplicate: bool
    def __init__(self, stored_point_count: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class StreamMetricsRequest(_message.Message):
    __slots__ = ("run", "batch_id", "metrics", "columns")
    RUN_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    run: str
    batch_id: str
    metrics: _containers.RepeatedCompositeFieldContainer[_metric_pb2.Metric]
    columns: _metric_pb2.MetricPointColumns
    def __init__(self, run: _Optional[str] = ..., batch_id: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[_metric_pb2.Metric, _Mapping]]] = ..., columns: _Optional[_Union[_metric_pb2.MetricPointColumns, _Mapping]] = ...) -> None: ...

class StreamMetricsResponse(_message.Message):
    __slots__ = ("batch_count", "duplicate_batch_count", "stored_point_count")
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    STORED_POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    batch_count: int
    duplicate_batch_count: int
    stored_point_count: int
    def __init__(self, batch_count: _Optional[int] = ..., duplicate_batch_count: _Optional[int] = ..., stored_point_count: _Optional[int] = ...) -> None: ...

class ListMetricHistoryRequest(_message.Message):
    __slots__ = ("run", "metric_key", "page_size", "page_token", "max_points", "start_step", "end_step", "columnar")
    RUN_FIELD_NUMBER: _ClassVar[int]
    METRIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    END_STEP_FIELD_NUMBER: _ClassVar[int]
    COLUMNAR_FIELD_NUMBER: _ClassVar[int]
    run: str
    metric_key: str
    page_size: int
    page_token: str
    max_points: int
    start_step: int
    end_step: int
    columnar: bool
    def __init__(self, run: _Optional[str] = ..., metric_key: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., max_points: _Optional[int] = ..., start_step: _Optional[int] = ..., end_step: _Optional[int] = ..., columnar: _Optional[bool] = ...) -> None: ...

class ListMetricHistoryResponse(_message.Message):
    __slots__ = ("points", "columns", "next_page_token", "downsampled", "total_point_count")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_metric_pb2.MetricPoint]
    columns: _metric_pb2.MetricColumns
    next_page_token: str
    downsampled: bool
    total_point_count: int
    def __init__(self, points: _Optional[_Iterable[_Union[_metric_pb2.MetricPoint, _Mapping]]] = ..., columns: _Optional[_Union[_metric_pb2.MetricColumns, _Mapping]] = ..., next_page_token: _Optional[str] = ..., downsampled: _Optional[bool] = ..., total_point_count: _Optional[int] = ...) -> None: ...

class SetRunTagsRequest(_message.Message):
    __slots__ = ("run", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    run: str
    tags: _containers.ScalarMap[str, str]
    def __init__(self, run: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetRunTagsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRunTagRequest(_message.Message):
    __slots__ = ("run", "key")
    RUN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    run: str
    key: str
    def __init__(self, run: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class UploadArtifactMetadata(_message.Message):
    __slots__ = ("run", "path", "artifact_type", "overwrite", "expected_sha256")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    run: str
    path: str
    artifact_type: _artifact_pb2.ArtifactType
    overwrite: bool
    expected_sha256: str
    def __init__(self, run: _Optional[str] = ..., path: _Optional[str] = ..., artifact_type: _Optional[_Union[_artifact_pb2.ArtifactType, str]] = ..., overwrite: _Optional[bool] = ..., expected_sha256: _Optional[str] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadArtifactMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadArtifactMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("run", "path")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    run: str
    path: str
    def __init__(self, run: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class DownloadArtifactResponse(_message.Message):
    __slots__ = ("artifact", "chunk")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    artifact: _artifact_pb2.Artifact
    chunk: bytes
    def __init__(self, artifact: _Optional[_Union[_artifact_pb2.Artifact, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("parent", "path_prefix", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    path_prefix: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., path_prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_page_token")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[_artifact_pb2.Artifact]
    next_page_token: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[_artifact_pb2.Artifact, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
