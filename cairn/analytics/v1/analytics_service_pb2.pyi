import datetime

from cairn.tracker.v1 import run_pb2 as _run_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_MINIMIZE: _ClassVar[Direction]
    DIRECTION_MAXIMIZE: _ClassVar[Direction]

class GroupBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_BY_UNSPECIFIED: _ClassVar[GroupBy]
    GROUP_BY_MODEL_TYPE: _ClassVar[GroupBy]
    GROUP_BY_DATASET: _ClassVar[GroupBy]

class ImportanceMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORTANCE_METHOD_UNSPECIFIED: _ClassVar[ImportanceMethod]
    IMPORTANCE_METHOD_PED_ANOVA: _ClassVar[ImportanceMethod]
    IMPORTANCE_METHOD_FANOVA: _ClassVar[ImportanceMethod]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_MINIMIZE: Direction
DIRECTION_MAXIMIZE: Direction
GROUP_BY_UNSPECIFIED: GroupBy
GROUP_BY_MODEL_TYPE: GroupBy
GROUP_BY_DATASET: GroupBy
IMPORTANCE_METHOD_UNSPECIFIED: ImportanceMethod
IMPORTANCE_METHOD_PED_ANOVA: ImportanceMethod
IMPORTANCE_METHOD_FANOVA: ImportanceMethod

class RunSummary(_message.Message):
    __slots__ = ("run_id", "experiment_id", "run_name", "status", "model_type", "dataset_id", "dataset_name", "version", "start_time", "end_time")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    experiment_id: str
    run_name: str
    status: _run_pb2.RunStatus
    model_type: str
    dataset_id: str
    dataset_name: str
    version: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., run_name: _Optional[str] = ..., status: _Optional[_Union[_run_pb2.RunStatus, str]] = ..., model_type: _Optional[str] = ..., dataset_id: _Optional[str] = ..., dataset_name: _Optional[str] = ..., version: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompareRunsRequest(_message.Message):
    __slots__ = ("runs", "metric_keys", "max_points", "directions")
    class DirectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Direction
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Direction, str]] = ...) -> None: ...
    RUNS_FIELD_NUMBER: _ClassVar[int]
    METRIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedScalarFieldContainer[str]
    metric_keys: _containers.RepeatedScalarFieldContainer[str]
    max_points: int
    directions: _containers.ScalarMap[str, Direction]
    def __init__(self, runs: _Optional[_Iterable[str]] = ..., metric_keys: _Optional[_Iterable[str]] = ..., max_points: _Optional[int] = ..., directions: _Optional[_Mapping[str, Direction]] = ...) -> None: ...

class ComparedParam(_message.Message):
    __slots__ = ("key", "values", "present", "differs")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    DIFFERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    present: _containers.RepeatedScalarFieldContainer[bool]
    differs: bool
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., present: _Optional[_Iterable[bool]] = ..., differs: _Optional[bool] = ...) -> None: ...

class ComparedMetric(_message.Message):
    __slots__ = ("key", "values", "present", "direction", "direction_inferred", "best_run_id", "best_value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_INFERRED_FIELD_NUMBER: _ClassVar[int]
    BEST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[float]
    present: _containers.RepeatedScalarFieldContainer[bool]
    direction: Direction
    direction_inferred: bool
    best_run_id: str
    best_value: float
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., present: _Optional[_Iterable[bool]] = ..., direction: _Optional[_Union[Direction, str]] = ..., direction_inferred: _Optional[bool] = ..., best_run_id: _Optional[str] = ..., best_value: _Optional[float] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class AlignedHistory(_message.Message):
    __slots__ = ("metric_key", "steps", "series", "downsampled")
    METRIC_KEY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLED_FIELD_NUMBER: _ClassVar[int]
    metric_key: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    series: _containers.RepeatedCompositeFieldContainer[Series]
    downsampled: bool
    def __init__(self, metric_key: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., downsampled: _Optional[bool] = ...) -> None: ...

class RunComparison(_message.Message):
    __slots__ = ("runs", "params", "metrics", "histories")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    HISTORIES_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    params: _containers.RepeatedCompositeFieldContainer[ComparedParam]
    metrics: _containers.RepeatedCompositeFieldContainer[ComparedMetric]
    histories: _containers.RepeatedCompositeFieldContainer[AlignedHistory]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ..., params: _Optional[_Iterable[_Union[ComparedParam, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[ComparedMetric, _Mapping]]] = ..., histories: _Optional[_Iterable[_Union[AlignedHistory, _Mapping]]] = ...) -> None: ...

class GetLeaderboardRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "model_type", "metric", "direction", "top_k", "group_by", "param_keys", "include_unfinished")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    PARAM_KEYS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    model_type: str
    metric: str
    direction: Direction
    top_k: int
    group_by: GroupBy
    param_keys: _containers.RepeatedScalarFieldContainer[str]
    include_unfinished: bool
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., model_type: _Optional[str] = ..., metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., top_k: _Optional[int] = ..., group_by: _Optional[_Union[GroupBy, str]] = ..., param_keys: _Optional[_Iterable[str]] = ..., include_unfinished: _Optional[bool] = ...) -> None: ...

class LeaderboardEntry(_message.Message):
    __slots__ = ("rank", "run", "value", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    run: RunSummary
    value: float
    params: _containers.ScalarMap[str, str]
    def __init__(self, rank: _Optional[int] = ..., run: _Optional[_Union[RunSummary, _Mapping]] = ..., value: _Optional[float] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LeaderboardGroup(_message.Message):
    __slots__ = ("group", "run_count", "entries")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    group: str
    run_count: int
    entries: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    def __init__(self, group: _Optional[str] = ..., run_count: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ...) -> None: ...

class Leaderboard(_message.Message):
    __slots__ = ("metric", "direction", "direction_inferred", "groups")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_INFERRED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: Direction
    direction_inferred: bool
    groups: _containers.RepeatedCompositeFieldContainer[LeaderboardGroup]
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., direction_inferred: _Optional[bool] = ..., groups: _Optional[_Iterable[_Union[LeaderboardGroup, _Mapping]]] = ...) -> None: ...

class GetDashboardRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "model_type", "metric", "direction", "top_k", "epoch_metric", "heatmap_metrics")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EPOCH_METRIC_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_METRICS_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    model_type: str
    metric: str
    direction: Direction
    top_k: int
    epoch_metric: str
    heatmap_metrics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., model_type: _Optional[str] = ..., metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., top_k: _Optional[int] = ..., epoch_metric: _Optional[str] = ..., heatmap_metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class Kpis(_message.Message):
    __slots__ = ("model_type", "run_count", "finished_run_count", "measured_run_count", "best_value", "average_value", "best_run_id")
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEASURED_RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BEST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    model_type: str
    run_count: int
    finished_run_count: int
    measured_run_count: int
    best_value: float
    average_value: float
    best_run_id: str
    def __init__(self, model_type: _Optional[str] = ..., run_count: _Optional[int] = ..., finished_run_count: _Optional[int] = ..., measured_run_count: _Optional[int] = ..., best_value: _Optional[float] = ..., average_value: _Optional[float] = ..., best_run_id: _Optional[str] = ...) -> None: ...

class TrendPoint(_message.Message):
    __slots__ = ("time", "run_id", "value", "best_so_far")
    TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BEST_SO_FAR_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    run_id: str
    value: float
    best_so_far: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_id: _Optional[str] = ..., value: _Optional[float] = ..., best_so_far: _Optional[float] = ...) -> None: ...

class Trend(_message.Message):
    __slots__ = ("points", "run_count")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[TrendPoint]
    run_count: int
    def __init__(self, points: _Optional[_Iterable[_Union[TrendPoint, _Mapping]]] = ..., run_count: _Optional[int] = ...) -> None: ...

class TopConfiguration(_message.Message):
    __slots__ = ("rank", "run", "value", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    run: RunSummary
    value: float
    params: _containers.ScalarMap[str, str]
    def __init__(self, rank: _Optional[int] = ..., run: _Optional[_Union[RunSummary, _Mapping]] = ..., value: _Optional[float] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("title", "row_ids", "row_labels", "column_labels", "values")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    ROW_LABELS_FIELD_NUMBER: _ClassVar[int]
    COLUMN_LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    title: str
    row_ids: _containers.RepeatedScalarFieldContainer[str]
    row_labels: _containers.RepeatedScalarFieldContainer[str]
    column_labels: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, title: _Optional[str] = ..., row_ids: _Optional[_Iterable[str]] = ..., row_labels: _Optional[_Iterable[str]] = ..., column_labels: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class DatasetPerformance(_message.Message):
    __slots__ = ("dataset_id", "run_count", "measured_run_count", "best_value", "average_value", "stddev")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEASURED_RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    run_count: int
    measured_run_count: int
    best_value: float
    average_value: float
    stddev: float
    def __init__(self, dataset_id: _Optional[str] = ..., run_count: _Optional[int] = ..., measured_run_count: _Optional[int] = ..., best_value: _Optional[float] = ..., average_value: _Optional[float] = ..., stddev: _Optional[float] = ...) -> None: ...

class StateCounts(_message.Message):
    __slots__ = ("queued", "running", "finished", "failed", "killed", "total")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    KILLED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    queued: int
    running: int
    finished: int
    failed: int
    killed: int
    total: int
    def __init__(self, queued: _Optional[int] = ..., running: _Optional[int] = ..., finished: _Optional[int] = ..., failed: _Optional[int] = ..., killed: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class Dashboard(_message.Message):
    __slots__ = ("metric", "direction", "direction_inferred", "kpis", "trend", "top_configurations", "epoch_heatmap", "final_metrics_heatmap", "datasets", "states")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_INFERRED_FIELD_NUMBER: _ClassVar[int]
    KPIS_FIELD_NUMBER: _ClassVar[int]
    TREND_FIELD_NUMBER: _ClassVar[int]
    TOP_CONFIGURATIONS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: Direction
    direction_inferred: bool
    kpis: _containers.RepeatedCompositeFieldContainer[Kpis]
    trend: Trend
    top_configurations: _containers.RepeatedCompositeFieldContainer[TopConfiguration]
    epoch_heatmap: Matrix
    final_metrics_heatmap: Matrix
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetPerformance]
    states: StateCounts
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., direction_inferred: _Optional[bool] = ..., kpis: _Optional[_Iterable[_Union[Kpis, _Mapping]]] = ..., trend: _Optional[_Union[Trend, _Mapping]] = ..., top_configurations: _Optional[_Iterable[_Union[TopConfiguration, _Mapping]]] = ..., epoch_heatmap: _Optional[_Union[Matrix, _Mapping]] = ..., final_metrics_heatmap: _Optional[_Union[Matrix, _Mapping]] = ..., datasets: _Optional[_Iterable[_Union[DatasetPerformance, _Mapping]]] = ..., states: _Optional[_Union[StateCounts, _Mapping]] = ...) -> None: ...

class GetHyperparameterInsightsRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "model_type", "metric", "direction", "param_keys", "top_fraction", "importance_method")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PARAM_KEYS_FIELD_NUMBER: _ClassVar[int]
    TOP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_METHOD_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    model_type: str
    metric: str
    direction: Direction
    param_keys: _containers.RepeatedScalarFieldContainer[str]
    top_fraction: float
    importance_method: ImportanceMethod
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., model_type: _Optional[str] = ..., metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., param_keys: _Optional[_Iterable[str]] = ..., top_fraction: _Optional[float] = ..., importance_method: _Optional[_Union[ImportanceMethod, str]] = ...) -> None: ...

class ValueDensity(_message.Message):
    __slots__ = ("label", "low", "high", "good_count", "rest_count", "good_density", "rest_density", "mean_value")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    GOOD_COUNT_FIELD_NUMBER: _ClassVar[int]
    REST_COUNT_FIELD_NUMBER: _ClassVar[int]
    GOOD_DENSITY_FIELD_NUMBER: _ClassVar[int]
    REST_DENSITY_FIELD_NUMBER: _ClassVar[int]
    MEAN_VALUE_FIELD_NUMBER: _ClassVar[int]
    label: str
    low: float
    high: float
    good_count: int
    rest_count: int
    good_density: float
    rest_density: float
    mean_value: float
    def __init__(self, label: _Optional[str] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., good_count: _Optional[int] = ..., rest_count: _Optional[int] = ..., good_density: _Optional[float] = ..., rest_density: _Optional[float] = ..., mean_value: _Optional[float] = ...) -> None: ...

class ParamInsight(_message.Message):
    __slots__ = ("key", "importance", "numeric", "densities", "best_label", "rank_correlation")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    DENSITIES_FIELD_NUMBER: _ClassVar[int]
    BEST_LABEL_FIELD_NUMBER: _ClassVar[int]
    RANK_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    key: str
    importance: float
    numeric: bool
    densities: _containers.RepeatedCompositeFieldContainer[ValueDensity]
    best_label: str
    rank_correlation: float
    def __init__(self, key: _Optional[str] = ..., importance: _Optional[float] = ..., numeric: _Optional[bool] = ..., densities: _Optional[_Iterable[_Union[ValueDensity, _Mapping]]] = ..., best_label: _Optional[str] = ..., rank_correlation: _Optional[float] = ...) -> None: ...

class HyperparameterInsights(_message.Message):
    __slots__ = ("metric", "direction", "direction_inferred", "run_count", "good_run_count", "threshold", "importance_method", "params", "message")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_INFERRED_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    GOOD_RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: Direction
    direction_inferred: bool
    run_count: int
    good_run_count: int
    threshold: float
    importance_method: ImportanceMethod
    params: _containers.RepeatedCompositeFieldContainer[ParamInsight]
    message: str
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., direction_inferred: _Optional[bool] = ..., run_count: _Optional[int] = ..., good_run_count: _Optional[int] = ..., threshold: _Optional[float] = ..., importance_method: _Optional[_Union[ImportanceMethod, str]] = ..., params: _Optional[_Iterable[_Union[ParamInsight, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class SuggestExperimentsRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "model_type", "metric", "direction", "count", "param_keys", "seed")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAM_KEYS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    model_type: str
    metric: str
    direction: Direction
    count: int
    param_keys: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., model_type: _Optional[str] = ..., metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., count: _Optional[int] = ..., param_keys: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class Suggestion(_message.Message):
    __slots__ = ("params", "changed_params", "base_run_id", "model_type", "dataset_id", "reason")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ChangedParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BASE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    params: _containers.ScalarMap[str, str]
    changed_params: _containers.ScalarMap[str, str]
    base_run_id: str
    model_type: str
    dataset_id: str
    reason: str
    def __init__(self, params: _Optional[_Mapping[str, str]] = ..., changed_params: _Optional[_Mapping[str, str]] = ..., base_run_id: _Optional[str] = ..., model_type: _Optional[str] = ..., dataset_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SuggestExperimentsResponse(_message.Message):
    __slots__ = ("metric", "direction", "direction_inferred", "run_count", "suggestions", "message")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_INFERRED_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: Direction
    direction_inferred: bool
    run_count: int
    suggestions: _containers.RepeatedCompositeFieldContainer[Suggestion]
    message: str
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., direction_inferred: _Optional[bool] = ..., run_count: _Optional[int] = ..., suggestions: _Optional[_Iterable[_Union[Suggestion, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...
