import datetime

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

class ModelType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_TYPE_UNSPECIFIED: _ClassVar[ModelType]
    MODEL_TYPE_RETRIEVAL: _ClassVar[ModelType]
    MODEL_TYPE_RANKING: _ClassVar[ModelType]
    MODEL_TYPE_MULTITASK: _ClassVar[ModelType]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_ADAGRAD: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]
MODEL_TYPE_UNSPECIFIED: ModelType
MODEL_TYPE_RETRIEVAL: ModelType
MODEL_TYPE_RANKING: ModelType
MODEL_TYPE_MULTITASK: ModelType
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_ADAGRAD: Optimizer
OPTIMIZER_ADAM: Optimizer
OPTIMIZER_SGD: Optimizer

class ModelConfig(_message.Message):
    __slots__ = ("name", "model_config_id", "display_name", "description", "model_type", "query_layers", "candidate_layers", "rating_layers", "optimizer", "learning_rate", "retrieval_weight", "ranking_weight", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    QUERY_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    RATING_LAYERS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RANKING_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_config_id: str
    display_name: str
    description: str
    model_type: ModelType
    query_layers: _containers.RepeatedScalarFieldContainer[int]
    candidate_layers: _containers.RepeatedScalarFieldContainer[int]
    rating_layers: _containers.RepeatedScalarFieldContainer[int]
    optimizer: Optimizer
    learning_rate: float
    retrieval_weight: float
    ranking_weight: float
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., model_config_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., model_type: _Optional[_Union[ModelType, str]] = ..., query_layers: _Optional[_Iterable[int]] = ..., candidate_layers: _Optional[_Iterable[int]] = ..., rating_layers: _Optional[_Iterable[int]] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., retrieval_weight: _Optional[float] = ..., ranking_weight: _Optional[float] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
