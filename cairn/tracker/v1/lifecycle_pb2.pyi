from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class LifecycleState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIFECYCLE_STATE_UNSPECIFIED: _ClassVar[LifecycleState]
    LIFECYCLE_STATE_ACTIVE: _ClassVar[LifecycleState]
    LIFECYCLE_STATE_DELETED: _ClassVar[LifecycleState]

class LifecycleFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIFECYCLE_FILTER_UNSPECIFIED: _ClassVar[LifecycleFilter]
    LIFECYCLE_FILTER_ACTIVE_ONLY: _ClassVar[LifecycleFilter]
    LIFECYCLE_FILTER_DELETED_ONLY: _ClassVar[LifecycleFilter]
    LIFECYCLE_FILTER_ALL: _ClassVar[LifecycleFilter]
LIFECYCLE_STATE_UNSPECIFIED: LifecycleState
LIFECYCLE_STATE_ACTIVE: LifecycleState
LIFECYCLE_STATE_DELETED: LifecycleState
LIFECYCLE_FILTER_UNSPECIFIED: LifecycleFilter
LIFECYCLE_FILTER_ACTIVE_ONLY: LifecycleFilter
LIFECYCLE_FILTER_DELETED_ONLY: LifecycleFilter
LIFECYCLE_FILTER_ALL: LifecycleFilter
