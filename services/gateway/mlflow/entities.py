"""Cairn's resources in MLflow's JSON shapes (what mlflow.entities.*.from_proto parses), and
MLflow's own validation of metrics, params and tags (mlflow/utils/validation.py).

A Cairn run's name, user and note are attributes; MLflow shows them as the tags
mlflow.runName, mlflow.user and mlflow.note.content, so they are rendered as those tags too.
An experiment's description is MLflow's experiment tag mlflow.note.content.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from cairn.tracker.v1 import experiment_pb2, lifecycle_pb2, metric_pb2, run_pb2
from services.gateway.mlflow.protocol import (
    Fields,
    double,
    invalid_parameter,
    json_double,
    shown,
    timestamp_ms,
)
from services.gateway.mlflow.translate import NOTE_TAG, RUN_NAME_TAG, USER_TAG

# mlflow/utils/validation.py
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_ENTITY_KEY_LENGTH = 250
# MLflow allows experiment tag values of 20,000 characters; Cairn stores at most 8,000.
CAIRN_EXPERIMENT_TAG_VAL_LENGTH = 8000
# mlflow/server/handlers.py: SearchRuns max_results; SearchExperiments' page limit.
MAX_SEARCH_RESULTS = 50_000
DEFAULT_SEARCH_RESULTS = 1000

_NAME = re.compile(r"^[/\w.\- :]*$")

# Run tags that record MLflow 3 logged models and a run's inputs and outputs
# (logged_models.py); MLflow clients never see tags under HIDDEN_TAG_PREFIX as tags.
HIDDEN_TAG_PREFIX = "cairn.mlflow."
MARKER_TAG = "cairn.mlflow.logged_models"
MODEL_TAG_PREFIX = "cairn.mlflow.model."
OUTPUT_TAG_PREFIX = "cairn.mlflow.output."
INPUT_TAG_PREFIX = "cairn.mlflow.input."
DATASET_TAG_PREFIX = "cairn.mlflow.dataset."

STATUS_TO_MLFLOW = {
    run_pb2.RUN_STATUS_QUEUED: "SCHEDULED",
    run_pb2.RUN_STATUS_RUNNING: "RUNNING",
    run_pb2.RUN_STATUS_FINISHED: "FINISHED",
    run_pb2.RUN_STATUS_FAILED: "FAILED",
    run_pb2.RUN_STATUS_KILLED: "KILLED",
}
STATUS_FROM_MLFLOW: dict[str, run_pb2.RunStatus] = {
    name: value for value, name in STATUS_TO_MLFLOW.items()
}
# mlflow.protos.service_pb2.RunStatus numbers.
_STATUS_NUMBERS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
# mlflow.protos.service_pb2.ViewType -> Cairn's LifecycleFilter.
VIEW_TYPES = {
    "ACTIVE_ONLY": lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY,
    "DELETED_ONLY": lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY,
    "ALL": lifecycle_pb2.LIFECYCLE_FILTER_ALL,
}
_VIEW_NUMBERS = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}


def ms(timestamp: Timestamp) -> int:
    return int(timestamp.seconds * 1000 + timestamp.nanos // 1_000_000)


def timestamp(milliseconds: int, name: str) -> Timestamp:
    """A Timestamp for MLflow's epoch milliseconds (0 is the epoch, not "unset"); times
    Cairn cannot store (before year 1, after 9999) are INVALID_PARAMETER_VALUE."""
    value = Timestamp()
    value.FromMilliseconds(timestamp_ms(milliseconds, name))
    return value


def run_status(value: Any) -> run_pb2.RunStatus:
    """Cairn's RunStatus for MLflow's status (its name or number)."""
    name = value
    if isinstance(value, int) and not isinstance(value, bool):
        name = _STATUS_NUMBERS.get(value)
    if isinstance(name, str) and name.upper() in STATUS_FROM_MLFLOW:
        return STATUS_FROM_MLFLOW[name.upper()]
    raise invalid_parameter(
        f"Invalid value {shown(value)} for parameter 'status' supplied; valid statuses are "
        f"{list(STATUS_FROM_MLFLOW)}"
    )


def view_type(value: Any, name: str) -> lifecycle_pb2.LifecycleFilter:
    """Cairn's LifecycleFilter for MLflow's ViewType (its name or number; ACTIVE_ONLY when
    absent)."""
    if value is None or value == "":
        return lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY
    key = value
    if isinstance(value, str) and value.strip() in ("1", "2", "3"):
        key = _VIEW_NUMBERS[int(value)]
    elif isinstance(value, int) and not isinstance(value, bool):
        key = _VIEW_NUMBERS.get(value)
    if isinstance(key, str) and key.upper() in VIEW_TYPES:
        return VIEW_TYPES[key.upper()]
    raise invalid_parameter(
        f"Invalid value {shown(value)} for parameter '{name}' supplied; valid values are "
        "ACTIVE_ONLY, DELETED_ONLY and ALL"
    )


# ---------------------------------------------------------------------- Cairn -> MLflow


def artifact_uri(experiment_id: str, run_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


def experiment_json(experiment: experiment_pb2.Experiment, experiment_id: str) -> dict[str, Any]:
    """An mlflow.Experiment; `experiment_id` is the id MLflow clients see (the alias "0"
    for the default experiment)."""
    tags = [{"key": k, "value": v} for k, v in sorted(experiment.tags.items()) if k != NOTE_TAG]
    if experiment.description:
        tags.append({"key": NOTE_TAG, "value": experiment.description})
    deleted = experiment.lifecycle_state == lifecycle_pb2.LIFECYCLE_STATE_DELETED
    body: dict[str, Any] = {
        "experiment_id": experiment_id,
        "name": experiment.display_name,
        "artifact_location": f"mlflow-artifacts:/{experiment_id}",
        "lifecycle_stage": "deleted" if deleted else "active",
        "tags": tags,
    }
    if experiment.HasField("create_time"):
        body["creation_time"] = ms(experiment.create_time)
    if experiment.HasField("update_time"):
        body["last_update_time"] = ms(experiment.update_time)
    return body


def run_info_json(run: run_pb2.Run, experiment_id: str) -> dict[str, Any]:
    deleted = run.lifecycle_state == lifecycle_pb2.LIFECYCLE_STATE_DELETED
    info: dict[str, Any] = {
        "run_id": run.run_id,
        "run_uuid": run.run_id,
        "run_name": run.run_name,
        "experiment_id": experiment_id,
        "user_id": run.user,
        "status": STATUS_TO_MLFLOW.get(run.status, "RUNNING"),
        "artifact_uri": artifact_uri(experiment_id, run.run_id),
        "lifecycle_stage": "deleted" if deleted else "active",
    }
    if run.HasField("start_time"):
        info["start_time"] = ms(run.start_time)
    if run.HasField("end_time"):
        info["end_time"] = ms(run.end_time)
    return info


def metric_json(key: str, value: float, step: int, when: Timestamp) -> dict[str, Any]:
    return {"key": key, "value": json_double(value), "timestamp": ms(when), "step": step}


def run_tags(run: run_pb2.Run) -> dict[str, str]:
    """The run's tags as MLflow shows them, with the name, user and note as tags."""
    tags = {k: v for k, v in run.tags.items() if not k.startswith(HIDDEN_TAG_PREFIX)}
    for key in (RUN_NAME_TAG, USER_TAG, NOTE_TAG):
        tags.pop(key, None)
    if run.run_name:
        tags[RUN_NAME_TAG] = run.run_name
    if run.user:
        tags[USER_TAG] = run.user
    if run.note:
        tags[NOTE_TAG] = run.note
    return tags


def run_inputs_outputs(tags: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's MLflow ``inputs`` and ``outputs`` from its hidden tags."""
    datasets: list[Any] = []
    models_in: list[dict[str, Any]] = []
    models_out: list[dict[str, Any]] = []
    for key in sorted(tags):
        if not key.startswith(HIDDEN_TAG_PREFIX):
            continue
        if key.startswith(OUTPUT_TAG_PREFIX):
            step = tags[key]
            models_out.append(
                {
                    "model_id": key[len(OUTPUT_TAG_PREFIX) :],
                    "step": int(step) if step.lstrip("-").isdigit() else 0,
                }
            )
        elif key.startswith(INPUT_TAG_PREFIX):
            models_in.append({"model_id": key[len(INPUT_TAG_PREFIX) :]})
        elif key.startswith(DATASET_TAG_PREFIX):
            try:
                datasets.append(json.loads(tags[key]))
            except ValueError:
                continue
    inputs: dict[str, Any] = {}
    if datasets:
        inputs["dataset_inputs"] = datasets
    if models_in:
        inputs["model_inputs"] = models_in
    return inputs, ({"model_outputs": models_out} if models_out else {})


def run_json(run: run_pb2.Run, experiment_id: str) -> dict[str, Any]:
    metrics = [metric_json(m.key, m.value, m.step, m.timestamp) for m in run.metrics]
    inputs, outputs = run_inputs_outputs(run.tags)
    return {
        "info": run_info_json(run, experiment_id),
        "data": {
            "metrics": sorted(metrics, key=lambda m: str(m["key"])),
            "params": [{"key": k, "value": v} for k, v in sorted(run.params.items())],
            "tags": [{"key": k, "value": v} for k, v in sorted(run_tags(run).items())],
        },
        "inputs": inputs,
        "outputs": outputs,
    }


# ---------------------------------------------------------------------- MLflow validation


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def _check_name(name: Any, path: str, what: str) -> str:
    if not isinstance(name, str) or name == "":
        raise invalid_parameter(
            f"Invalid value {shown(name)} for parameter '{path}' supplied: "
            f"{what} name cannot be empty. A key name must be provided."
        )
    if len(name) > MAX_ENTITY_KEY_LENGTH:
        raise invalid_parameter(
            f"'{path}' exceeds the maximum length of {MAX_ENTITY_KEY_LENGTH} characters"
        )
    if not _NAME.match(name):
        raise invalid_parameter(
            f"Invalid value {name!r} for parameter '{path}' supplied: Names may only contain "
            "alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colon(:) "
            "and slashes (/)."
        )
    if _path_not_unique(name):
        raise invalid_parameter(
            f"Invalid value {name!r} for parameter '{path}' supplied: Names may be treated as "
            "files in certain cases, and must not resolve to other names when treated as such. "
            f"This name would resolve to {posixpath.normpath(name)!r}"
        )
    return name


def _check_length(value: str, path: str, limit: int) -> None:
    if len(value) > limit:
        raise invalid_parameter(f"'{path}' exceeds the maximum length of {limit} characters")


def check_param(key: Any, value: Any, path: str = "") -> tuple[str, str]:
    prefix = f"{path}." if path else ""
    key = _check_name(key, f"{prefix}key", "Param")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid_parameter(
            f"Invalid value {shown(value)} for parameter '{prefix}value' supplied: "
            "expected a string"
        )
    _check_length(value, f"{prefix}value" if path else "Param value", MAX_PARAM_VAL_LENGTH)
    return key, value


def check_tag(key: Any, value: Any, path: str = "") -> tuple[str, str]:
    prefix = f"{path}." if path else ""
    key = _check_name(key, f"{prefix}key", "Tag")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid_parameter(
            f"Invalid value {shown(value)} for parameter '{prefix}value' supplied: "
            "expected a string"
        )
    _check_length(value, f"{prefix}value", MAX_TAG_VAL_LENGTH)
    return key, value


def check_experiment_tag(key: Any, value: Any, path: str = "") -> tuple[str, str]:
    """An experiment tag. MLflow allows values of 20,000 characters; Cairn's limit is 8,000
    and longer values are refused, naming it."""
    prefix = f"{path}." if path else ""
    key = _check_name(key, f"{prefix}key", "Tag")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid_parameter(
            f"Invalid value {shown(value)} for parameter '{prefix}value' supplied: "
            "expected a string"
        )
    if len(value) > CAIRN_EXPERIMENT_TAG_VAL_LENGTH:
        raise invalid_parameter(
            f"'{prefix}value' has {len(value):,} characters: Cairn stores experiment tag "
            f"values of at most {CAIRN_EXPERIMENT_TAG_VAL_LENGTH:,} characters (MLflow's own "
            "limit is 20,000)"
        )
    return key, value


def check_metric(entry: Mapping[str, Any], path: str = "") -> metric_pb2.Metric:
    """A Cairn metric point from an MLflow Metric (key, value, timestamp, step)."""
    prefix = f"{path}." if path else ""
    fields = Fields(entry)
    key = _check_name(fields.raw("key"), f"{prefix}key", "Metric")
    if fields.raw("value") is None:
        raise invalid_parameter(f"Missing value for required parameter '{prefix}value'.")
    value = double(fields.raw("value"), f"{prefix}value")
    when = fields.integer("timestamp")
    if when is None:
        raise invalid_parameter(f"Missing value for required parameter '{prefix}timestamp'.")
    if when < 0:
        raise invalid_parameter(
            f"Invalid value {when} for parameter '{prefix}timestamp' supplied: metric "
            f"'{key}' (value={value}). Timestamp must be a nonnegative long (64-bit integer)"
        )
    step = fields.integer("step") or 0
    # The tracker reads a zero timestamp as "now" (its SDK's unset value), so a point logged
    # at the epoch (timestamp 0) is stored with the server's time.
    return metric_pb2.Metric(
        key=key, value=value, step=step, timestamp=timestamp(when, f"{prefix}timestamp")
    )


def check_batch_limits(metrics: int, params: int, tags: int) -> None:
    for name, limit, count in (
        ("metrics", MAX_METRICS_PER_BATCH, metrics),
        ("params", MAX_PARAMS_TAGS_PER_BATCH, params),
        ("tags", MAX_PARAMS_TAGS_PER_BATCH, tags),
        ("metrics, params, and tags", MAX_ENTITIES_PER_BATCH, metrics + params + tags),
    ):
        if count > limit:
            raise invalid_parameter(
                f"A batch logging request can contain at most {limit} {name}. Got {count} "
                f"{name}. Please split up {name} across multiple requests and try again."
            )


def unique_params(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    for key, value in params:
        if key in seen:
            duplicates.append(key)
        seen[key] = value
    if duplicates:
        raise invalid_parameter(
            f"Duplicate parameter keys have been submitted: {duplicates}. Please ensure the "
            "request contains only one param value per param key."
        )
    return seen
