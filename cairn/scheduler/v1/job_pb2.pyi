import datetime

from cairn.scheduler.v1 import model_config_pb2 as _model_config_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_QUICK_TEST: _ClassVar[JobKind]
    JOB_KIND_FULL_TRAINING: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_SUBMITTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_CANCELLING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class PipelineStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIPELINE_STAGE_UNSPECIFIED: _ClassVar[PipelineStage]
    PIPELINE_STAGE_EXAMPLE_GEN: _ClassVar[PipelineStage]
    PIPELINE_STAGE_STATISTICS_GEN: _ClassVar[PipelineStage]
    PIPELINE_STAGE_SCHEMA_GEN: _ClassVar[PipelineStage]
    PIPELINE_STAGE_TRANSFORM: _ClassVar[PipelineStage]
    PIPELINE_STAGE_TRAINER: _ClassVar[PipelineStage]
    PIPELINE_STAGE_EVALUATION: _ClassVar[PipelineStage]

class SplitStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_STRATEGY_UNSPECIFIED: _ClassVar[SplitStrategy]
    SPLIT_STRATEGY_RANDOM: _ClassVar[SplitStrategy]
    SPLIT_STRATEGY_TIME_HOLDOUT: _ClassVar[SplitStrategy]
    SPLIT_STRATEGY_STRICT_TIME: _ClassVar[SplitStrategy]

class HardwareTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HARDWARE_TIER_UNSPECIFIED: _ClassVar[HardwareTier]
    HARDWARE_TIER_SMALL: _ClassVar[HardwareTier]
    HARDWARE_TIER_MEDIUM: _ClassVar[HardwareTier]
    HARDWARE_TIER_LARGE: _ClassVar[HardwareTier]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_QUICK_TEST: JobKind
JOB_KIND_FULL_TRAINING: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_SUBMITTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_CANCELLING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
PIPELINE_STAGE_UNSPECIFIED: PipelineStage
PIPELINE_STAGE_EXAMPLE_GEN: PipelineStage
PIPELINE_STAGE_STATISTICS_GEN: PipelineStage
PIPELINE_STAGE_SCHEMA_GEN: PipelineStage
PIPELINE_STAGE_TRANSFORM: PipelineStage
PIPELINE_STAGE_TRAINER: PipelineStage
PIPELINE_STAGE_EVALUATION: PipelineStage
SPLIT_STRATEGY_UNSPECIFIED: SplitStrategy
SPLIT_STRATEGY_RANDOM: SplitStrategy
SPLIT_STRATEGY_TIME_HOLDOUT: SplitStrategy
SPLIT_STRATEGY_STRICT_TIME: SplitStrategy
HARDWARE_TIER_UNSPECIFIED: HardwareTier
HARDWARE_TIER_SMALL: HardwareTier
HARDWARE_TIER_MEDIUM: HardwareTier
HARDWARE_TIER_LARGE: HardwareTier

class TrainingParameters(_message.Message):
    __slots__ = ("sample_percent", "epochs", "batch_size", "learning_rate", "hardware_tier", "split_strategy", "seed")
    SAMPLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TIER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    sample_percent: int
    epochs: int
    batch_size: int
    learning_rate: float
    hardware_tier: HardwareTier
    split_strategy: SplitStrategy
    seed: int
    def __init__(self, sample_percent: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., hardware_tier: _Optional[_Union[HardwareTier, str]] = ..., split_strategy: _Optional[_Union[SplitStrategy, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class JobStateTransition(_message.Message):
    __slots__ = ("state", "time", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    time: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("stage", "message", "details")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    stage: PipelineStage
    message: str
    details: str
    def __init__(self, stage: _Optional[_Union[PipelineStage, str]] = ..., message: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "job_id", "display_name", "description", "kind", "feature_config", "model_config", "dataset", "model_type", "training", "experiment", "state", "stage", "progress_percent", "current_epoch", "latest_loss", "state_history", "error", "run", "final_metrics", "rerun_of", "launcher", "workload", "create_time", "update_time", "start_time", "end_time", "log_source")
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LATEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    STATE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    RERUN_OF_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LOG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    display_name: str
    description: str
    kind: JobKind
    feature_config: str
    model_config: str
    dataset: str
    model_type: _model_config_pb2.ModelType
    training: TrainingParameters
    experiment: str
    state: JobState
    stage: PipelineStage
    progress_percent: float
    current_epoch: int
    latest_loss: float
    state_history: _containers.RepeatedCompositeFieldContainer[JobStateTransition]
    error: JobError
    run: str
    final_metrics: _containers.ScalarMap[str, float]
    rerun_of: str
    launcher: str
    workload: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    log_source: LogSource
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., feature_config: _Optional[str] = ..., model_config: _Optional[str] = ..., dataset: _Optional[str] = ..., model_type: _Optional[_Union[_model_config_pb2.ModelType, str]] = ..., training: _Optional[_Union[TrainingParameters, _Mapping]] = ..., experiment: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[_Union[PipelineStage, str]] = ..., progress_percent: _Optional[float] = ..., current_epoch: _Optional[int] = ..., latest_loss: _Optional[float] = ..., state_history: _Optional[_Iterable[_Union[JobStateTransition, _Mapping]]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., run: _Optional[str] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., rerun_of: _Optional[str] = ..., launcher: _Optional[str] = ..., workload: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., log_source: _Optional[_Union[LogSource, _Mapping]] = ...) -> None: ...

class LogSource(_message.Message):
    __slots__ = ("kind", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...
