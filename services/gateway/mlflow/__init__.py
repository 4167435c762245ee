"""MLflow REST compatibility: an unmodified MLflow client pointed at the gateway
(``mlflow.set_tracking_uri("http://<gateway>")``) logs into Cairn's tracker.

Served under /api/2.0/mlflow and /ajax-api/2.0/mlflow (the UI's prefix):

* experiments: create, get, get-by-name, search (filter, order_by, view_type, max_results up
  to 50,000, page_token), update (rename), delete, restore, set-experiment-tag,
  delete-experiment-tag;
* runs: create, get, update, delete, restore, search (MLflow's filter and order_by syntax,
  translated by translate.py), log-batch, log-metric, log-parameter, set-tag, delete-tag,
  log-inputs, outputs; metrics/get-history and metrics/get-history-bulk-interval;
  artifacts/list;
* MLflow 3 logged models (logged_models.py): create, get, finalize, delete, search, set and
  delete tags, log params; stored in their source run;
* the artifact proxy under /api/2.0/mlflow-artifacts (and /ajax-api/2.0/mlflow-artifacts):
  upload, download, list (artifacts.py); and /api/3.0/mlflow/server-info, which tells the
  client that multipart and presigned transfers are off.

Everything else under these prefixes (traces, datasets, scorers, prompts, gateway endpoints,
the model registry, MLflow 2's log-model, ...) answers ENDPOINT_NOT_FOUND (404); artifact
deletion and multipart/presigned transfers answer NOT_IMPLEMENTED (501).

Mapping decisions:

* MLflow's experiment "0" is the Cairn experiment named "Default" (created on first use).
  MLflow clients always see it as "0": experiment payloads, runs' experiment_id and artifact
  URIs. It cannot be renamed through MLflow (the name is how the alias finds it).
* A run's name, user and note are Cairn attributes; MLflow's tags mlflow.runName,
  mlflow.user and mlflow.note.content are written to and read from them (setting
  mlflow.runName renames the run; mlflow.user is fixed at creation). An experiment's
  description is its mlflow.note.content tag. Status SCHEDULED is Cairn's QUEUED.
* Params are immutable in both; a different value is INVALID_PARAMETER_VALUE with MLflow's
  message. Cairn's terminal statuses are final, so reopening a finished run is refused.
* Metric writes carry a batch id derived from the points (run, key, value, timestamp,
  step): a retried log-metric or log-batch is stored once; points sent with a model_id that
  the run's history already holds (mlflow.<flavor>.log_model logs the step's metrics again
  for the model) are not stored twice. Creates are not deduplicated by
  content (two legitimate identical create-run calls in one millisecond would merge); a
  client may send an Idempotency-Key header to make run creation retry-safe.
* Experiment tags are written one key per call (SetExperimentTags / DeleteExperimentTag), so
  concurrent writers never lose each other's tags; values are limited to Cairn's 8,000
  characters (MLflow allows 20,000) and longer ones are INVALID_PARAMETER_VALUE.
* Times are MLflow's epoch milliseconds; 0 is the epoch (a run's start_time 0 is stored as
  0), except a metric point's timestamp 0, which the tracker reads as "now".
* Client input is read by the gateway's shared limits (services/gateway/limits.py): bodies
  over 8 MiB are 413, and malformed JSON, nesting beyond the parser, numbers out of their
  field's range (int64, double, Timestamp), wrong types and lone surrogates are all
  INVALID_PARAMETER_VALUE, never a 5xx (the MLflow client retries those). Error messages
  quote client values cut to 200 characters.
* Errors are ``{"error_code", "message"}`` with MLflow's HTTP status per code; tracker
  codes map INVALID_ARGUMENT/FAILED_PRECONDITION -> INVALID_PARAMETER_VALUE (400),
  NOT_FOUND -> RESOURCE_DOES_NOT_EXIST (404), ALREADY_EXISTS -> RESOURCE_ALREADY_EXISTS
  (400), UNAVAILABLE -> TEMPORARILY_UNAVAILABLE (503); anything unexpected is
  INTERNAL_ERROR (500) without a traceback.
* Every tracker call carries the caller's Authorization header and an x-request-id (the
  client's X-Request-Id when usable, services/common/request_ids.py). Unary calls have the
  gateway's deadline; artifact streams have none but must keep moving: each chunk of the
  client and each message of the tracker within the gateway timeout (limits.py). A client
  that disconnects mid-request is logged at INFO and counted as 499.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from services.common.settings import Settings
from services.gateway.backends import Backends
from services.gateway.mlflow.artifacts import ArtifactsApi
from services.gateway.mlflow.context import Call, DefaultExperiment, Endpoints, Handler
from services.gateway.mlflow.handlers import TrackingApi
from services.gateway.mlflow.logged_models import LoggedModelsApi
from services.gateway.mlflow.protocol import ENDPOINT_NOT_FOUND, MlflowError

TRACKING_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACT_PREFIXES = ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts")
# Prefixes whose unknown paths answer ENDPOINT_NOT_FOUND in MLflow's format.
CLAIMED_PREFIXES = (
    *TRACKING_PREFIXES,
    *ARTIFACT_PREFIXES,
    "/api/3.0/mlflow",
    "/ajax-api/3.0/mlflow",
    "/api/2.0/preview/mlflow",
)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def server_info(request: Request, call: Call) -> dict[str, Any]:
    """mlflow.utils.server_info: what the artifact client may use."""
    return {
        "store_type": None,
        "workspaces_enabled": False,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": False,
        "multipart_downloads_enabled": False,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
        "features_enabled": {"gateway": False},
    }


async def not_found(request: Request, call: Call) -> dict[str, Any]:
    raise MlflowError(
        ENDPOINT_NOT_FOUND,
        f"Cairn's MLflow compatibility does not implement {request.method} {request.url.path}",
    )


def routes(backends: Backends, settings: Settings) -> list[BaseRoute]:
    default = DefaultExperiment()
    endpoint = Endpoints(backends, default)
    tracking = TrackingApi(default)
    artifacts = ArtifactsApi(default)
    models = LoggedModelsApi(default)

    tracking_routes: list[tuple[str, list[str], Handler]] = [
        ("/experiments/create", ["POST"], tracking.create_experiment),
        ("/experiments/get", ["GET"], tracking.get_experiment),
        ("/experiments/get-by-name", ["GET"], tracking.get_experiment_by_name),
        ("/experiments/search", ["GET", "POST"], tracking.search_experiments),
        ("/experiments/update", ["POST"], tracking.update_experiment),
        ("/experiments/delete", ["POST"], tracking.delete_experiment),
        ("/experiments/restore", ["POST"], tracking.restore_experiment),
        ("/experiments/set-experiment-tag", ["POST"], tracking.set_experiment_tag),
        ("/experiments/delete-experiment-tag", ["POST"], tracking.delete_experiment_tag),
        ("/runs/create", ["POST"], tracking.create_run),
        ("/runs/get", ["GET"], tracking.get_run),
        ("/runs/update", ["POST"], tracking.update_run),
        ("/runs/delete", ["POST"], tracking.delete_run),
        ("/runs/restore", ["POST"], tracking.restore_run),
        ("/runs/search", ["POST"], tracking.search_runs),
        ("/runs/log-batch", ["POST"], tracking.log_batch),
        ("/runs/log-metric", ["POST"], tracking.log_metric),
        ("/runs/log-parameter", ["POST"], tracking.log_param),
        ("/runs/set-tag", ["POST"], tracking.set_tag),
        ("/runs/delete-tag", ["POST"], tracking.delete_tag),
        ("/metrics/get-history", ["GET"], tracking.get_metric_history),
        (
            "/metrics/get-history-bulk-interval",
            ["GET"],
            tracking.get_metric_history_bulk_interval,
        ),
        ("/artifacts/list", ["GET"], tracking.list_artifacts),
        ("/runs/outputs", ["POST"], models.log_outputs),
        ("/runs/log-inputs", ["POST"], models.log_inputs),
        ("/logged-models", ["POST"], models.create),
        ("/logged-models/search", ["POST"], models.search),
        ("/logged-models/{model_id}", ["GET"], models.get),
        ("/logged-models/{model_id}", ["PATCH"], models.finalize),
        ("/logged-models/{model_id}", ["DELETE"], models.delete),
        ("/logged-models/{model_id}/tags", ["PATCH"], models.set_tags),
        ("/logged-models/{model_id}/tags/{tag_key:path}", ["DELETE"], models.delete_tag),
        ("/logged-models/{model_id}/params", ["POST"], models.log_params),
    ]
    artifact_routes: list[tuple[str, list[str], Handler]] = [
        ("/artifacts", ["GET"], artifacts.list),
        ("/artifacts/{location:path}", ["PUT"], artifacts.upload),
        ("/artifacts/{location:path}", ["GET"], artifacts.download),
        ("/artifacts/{location:path}", ["DELETE"], artifacts.delete),
        ("/mpu/{rest:path}", ["POST"], artifacts.multipart),
        ("/presigned/{rest:path}", ["GET"], artifacts.presigned),
    ]

    result: list[BaseRoute] = []
    for prefix in TRACKING_PREFIXES:
        for path, methods, handler in tracking_routes:
            result.append(Route(prefix + path, endpoint(handler), methods=methods))
    for prefix in ARTIFACT_PREFIXES:
        for path, methods, handler in artifact_routes:
            result.append(Route(prefix + path, endpoint(handler), methods=methods))
    for prefix in ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow"):
        result.append(Route(prefix + "/server-info", endpoint(server_info), methods=["GET"]))
    for prefix in CLAIMED_PREFIXES:
        result.append(Route(prefix + "/{rest:path}", endpoint(not_found), methods=ALL_METHODS))
    return result


__all__ = ["routes"]
