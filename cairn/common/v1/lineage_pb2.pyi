from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Lineage(_message.Message):
    __slots__ = ("dataset_id", "dataset_name", "pipeline_id", "node_id", "job_id", "model_type")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    dataset_name: str
    pipeline_id: str
    node_id: str
    job_id: str
    model_type: str
    def __init__(self, dataset_id: _Optional[str] = ..., dataset_name: _Optional[str] = ..., pipeline_id: _Optional[str] = ..., node_id: _Optional[str] = ..., job_id: _Optional[str] = ..., model_type: _Optional[str] = ...) -> None: ...
