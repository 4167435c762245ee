from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Environment(_message.Message):
    __slots__ = ("git_commit", "git_branch", "git_remote", "git_dirty", "git_diff", "command", "python_version", "pip_freeze", "hostname", "platform", "device_info", "user")
    GIT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    GIT_BRANCH_FIELD_NUMBER: _ClassVar[int]
    GIT_REMOTE_FIELD_NUMBER: _ClassVar[int]
    GIT_DIRTY_FIELD_NUMBER: _ClassVar[int]
    GIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    PIP_FREEZE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INFO_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    git_commit: str
    git_branch: str
    git_remote: str
    git_dirty: bool
    git_diff: str
    command: str
    python_version: str
    pip_freeze: str
    hostname: str
    platform: str
    device_info: str
    user: str
    def __init__(self, git_commit: _Optional[str] = ..., git_branch: _Optional[str] = ..., git_remote: _Optional[str] = ..., git_dirty: _Optional[bool] = ..., git_diff: _Optional[str] = ..., command: _Optional[str] = ..., python_version: _Optional[str] = ..., pip_freeze: _Optional[str] = ..., hostname: _Optional[str] = ..., platform: _Optional[str] = ..., device_info: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...
