"""Resource names of the tracker: experiments/{e} and experiments/{e}/runs/{r}."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument

WILDCARD = "-"
_ID = r"[A-Za-z0-9_\-]{1,64}"
_EXPERIMENT = re.compile(rf"experiments/({_ID})")
_RUN = re.compile(rf"experiments/({_ID})/runs/({_ID})")


@dataclass(frozen=True)
class RunName:
    experiment_id: str | None  # None for the "-" wildcard
    run_id: str


def _display(name: str, limit: int = 120) -> str:
    """A name for an error message: never the whole of a huge one (gRPC metadata is small)."""
    shown = repr(name[:limit])
    return shown if len(name) <= limit else f"{shown}... ({len(name)} characters)"


def parse_experiment_name(name: str, field: str = "name") -> str:
    match = _EXPERIMENT.fullmatch(name or "")
    if match is None or match.group(1) == WILDCARD:
        raise InvalidArgument(
            f"{field} must look like experiments/{{experiment_id}}, got {_display(name)}",
            field=field,
        )
    return match.group(1)


def parse_experiment_parent(parent: str, field: str = "parent") -> str | None:
    """experiments/{id} -> id; experiments/- -> None (every experiment)."""
    match = _EXPERIMENT.fullmatch(parent or "")
    if match is None:
        raise InvalidArgument(
            f"{field} must look like experiments/{{experiment_id}} or experiments/-, "
            f"got {_display(parent)}",
            field=field,
        )
    return None if match.group(1) == WILDCARD else match.group(1)


def parse_run_name(name: str, field: str = "name") -> RunName:
    match = _RUN.fullmatch(name or "")
    if match is None or match.group(2) == WILDCARD:
        raise InvalidArgument(
            f"{field} must look like experiments/{{experiment_id}}/runs/{{run_id}} "
            f"(experiments/-/runs/{{run_id}} also works), got {_display(name)}",
            field=field,
        )
    experiment_id = match.group(1)
    return RunName(None if experiment_id == WILDCARD else experiment_id, match.group(2))


def experiment_resource(experiment_id: str) -> str:
    return f"experiments/{experiment_id}"


def run_resource(experiment_id: str, run_id: str) -> str:
    return f"experiments/{experiment_id}/runs/{run_id}"
