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

class FeatureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_KIND_UNSPECIFIED: _ClassVar[FeatureKind]
    FEATURE_KIND_CATEGORICAL: _ClassVar[FeatureKind]
    FEATURE_KIND_NUMERIC: _ClassVar[FeatureKind]
FEATURE_KIND_UNSPECIFIED: FeatureKind
FEATURE_KIND_CATEGORICAL: FeatureKind
FEATURE_KIND_NUMERIC: FeatureKind

class Feature(_message.Message):
    __slots__ = ("column", "kind", "embedding_dim")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    column: str
    kind: FeatureKind
    embedding_dim: int
    def __init__(self, column: _Optional[str] = ..., kind: _Optional[_Union[FeatureKind, str]] = ..., embedding_dim: _Optional[int] = ...) -> None: ...

class FeatureConfig(_message.Message):
    __slots__ = ("name", "feature_config_id", "display_name", "description", "dataset", "query_features", "candidate_features", "target_column", "query_tensor_dim", "candidate_tensor_dim", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CONFIG_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    QUERY_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    QUERY_TENSOR_DIM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TENSOR_DIM_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    feature_config_id: str
    display_name: str
    description: str
    dataset: str
    query_features: _containers.RepeatedCompositeFieldContainer[Feature]
    candidate_features: _containers.RepeatedCompositeFieldContainer[Feature]
    target_column: str
    query_tensor_dim: int
    candidate_tensor_dim: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., feature_config_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., dataset: _Optional[str] = ..., query_features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., candidate_features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., target_column: _Optional[str] = ..., query_tensor_dim: _Optional[int] = ..., candidate_tensor_dim: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
