"""Cairn: track ML experiments — params, metrics, artifacts, lineage — and find, filter and
compare runs. `cairn.Tracker` is the client; `@cairn.log_run` tracks a function's runs."""

from cairn.client import Tracker
from cairn.decorators import log_run
from cairn.errors import (
    AlreadyExistsError,
    CairnError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from cairn.types import Artifact, Environment, Experiment, MetricHistory, MetricPoint, Run

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "Artifact",
    "CairnError",
    "Environment",
    "Experiment",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "MetricHistory",
    "MetricPoint",
    "NotFoundError",
    "Run",
    "Tracker",
    "UnauthenticatedError",
    "UnavailableError",
    "log_run",
]
