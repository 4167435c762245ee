import datetime

from cairn.logproxy.v1 import log_entry_pb2 as _log_entry_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListJobLogsRequest(_message.Message):
    __slots__ = ("job", "component", "min_severity", "since", "page_size", "page_token")
    JOB_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job: str
    component: str
    min_severity: _log_entry_pb2.Severity
    since: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, job: _Optional[str] = ..., component: _Optional[str] = ..., min_severity: _Optional[_Union[_log_entry_pb2.Severity, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobLogsResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_log_entry_pb2.LogEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_log_entry_pb2.LogEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TailJobLogsRequest(_message.Message):
    __slots__ = ("job", "component", "min_severity", "since", "limit", "follow")
    JOB_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job: str
    component: str
    min_severity: _log_entry_pb2.Severity
    since: _timestamp_pb2.Timestamp
    limit: int
    follow: bool
    def __init__(self, job: _Optional[str] = ..., component: _Optional[str] = ..., min_severity: _Optional[_Union[_log_entry_pb2.Severity, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...
