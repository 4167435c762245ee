"""`@cairn.log_run`: track a training function without touching its body.

    @cairn.log_run(experiment_name="sweep")
    def train(model_name="logreg", learning_rate=0.1, n_epochs=5):
        ...
        return {"accuracy": 0.93, "val_loss": 0.21, "model": "ckpt/model.joblib"}

Arguments become params, numbers in the returned dict become metrics, returned paths of
existing files become artifacts, and the environment (git, command, packages, machine) is
captured with the run. The run ends FINISHED, or FAILED if the function raises.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

from cairn.client import Tracker

P = ParamSpec("P")
R = TypeVar("R")

_default_tracker: Tracker | None = None


def default_tracker() -> Tracker:
    global _default_tracker
    if _default_tracker is None:
        _default_tracker = Tracker()
    return _default_tracker


def _is_file(value: object) -> bool:
    return isinstance(value, str | os.PathLike) and Path(value).is_file()


def split_result(result: object) -> tuple[dict[str, float], list[Path]]:
    """Metrics and artifact paths from what a decorated function returned."""
    metrics: dict[str, float] = {}
    artifacts: list[Path] = []

    def take(key: str | None, value: object) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, numbers.Real) and key is not None:
            metrics[key] = float(value)
        elif _is_file(value):
            artifacts.append(Path(value))  # type: ignore[arg-type]
        elif isinstance(value, list | tuple):
            for item in value:
                if _is_file(item):
                    artifacts.append(Path(item))

    if isinstance(result, Mapping):
        for key, value in result.items():
            take(str(key), value)
    elif isinstance(result, tuple):
        for part in result:
            if isinstance(part, Mapping):
                for key, value in part.items():
                    take(str(key), value)
            else:
                take(None, part)
    else:
        take(None, result)
    return metrics, artifacts


def log_run(
    experiment_name: str = "Default",
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    tracker: Tracker | None = None,
    artifact_type: str = "other",
    **lineage: str,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: one tracked run per call (see the module docstring)."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            client = tracker or default_tracker()
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = {
                name: value
                for name, value in bound.arguments.items()
                if signature.parameters[name].kind
                not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            }
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    params.update(bound.arguments.get(name, {}))
            with client.run(experiment_name, run_name or function.__name__, tags, **lineage) as run:
                client.log_params(params, run_id=run.run_id)
                result = function(*args, **kwargs)
                metrics, artifacts = split_result(result)
                if metrics:
                    client.log_metrics(metrics, run_id=run.run_id)
                for path in artifacts:
                    client.log_artifact(path, artifact_type, run_id=run.run_id)
            return result

        return wrapper

    return decorate
