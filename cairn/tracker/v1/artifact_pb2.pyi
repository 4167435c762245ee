import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_TYPE_UNSPECIFIED: _ClassVar[ArtifactType]
    ARTIFACT_TYPE_MODEL: _ClassVar[ArtifactType]
    ARTIFACT_TYPE_PLOT: _ClassVar[ArtifactType]
    ARTIFACT_TYPE_DATA: _ClassVar[ArtifactType]
    ARTIFACT_TYPE_REPORT: _ClassVar[ArtifactType]
    ARTIFACT_TYPE_CHECKPOINT: _ClassVar[ArtifactType]
    ARTIFACT_TYPE_OTHER: _ClassVar[ArtifactType]
ARTIFACT_TYPE_UNSPECIFIED: ArtifactType
ARTIFACT_TYPE_MODEL: ArtifactType
ARTIFACT_TYPE_PLOT: ArtifactType
ARTIFACT_TYPE_DATA: ArtifactType
ARTIFACT_TYPE_REPORT: ArtifactType
ARTIFACT_TYPE_CHECKPOINT: ArtifactType
ARTIFACT_TYPE_OTHER: ArtifactType

class Artifact(_message.Message):
    __slots__ = ("run", "path", "artifact_type", "size_bytes", "sha256", "create_time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    run: str
    path: str
    artifact_type: ArtifactType
    size_bytes: int
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, run: _Optional[str] = ..., path: _Optional[str] = ..., artifact_type: _Optional[_Union[ArtifactType, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
