"""The MLflow tracking REST API (the /api/2.0/mlflow/... endpoints of mlflow.server.handlers)
served from Cairn's tracker.

Semantics that differ from MLflow's own server are deliberate and listed in the package
docstring (services/gateway/mlflow/__init__.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from starlette.requests import Request

from cairn.tracker.v1 import experiment_pb2, metric_pb2, run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.gateway.mlflow import entities, translate
from services.gateway.mlflow.artifacts import check_path, list_directory
from services.gateway.mlflow.context import (
    DEFAULT_EXPERIMENT_ALIAS,
    DEFAULT_EXPERIMENT_NAME,
    ID_PATTERN,
    Call,
    DefaultExperiment,
    unwrap_token,
    wrap_token,
)
from services.gateway.mlflow.protocol import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    Fields,
    MlflowError,
    does_not_exist,
    invalid_parameter,
    json_body,
    query_fields,
    shown,
)
from services.gateway.mlflow.translate import NOTE_TAG, RUN_NAME_TAG, USER_TAG

T = TypeVar("T")

CAIRN_PAGE = 1000  # Cairn's largest page of runs or experiments
HISTORY_PAGE = 100_000  # Cairn's largest page of metric history
# GetMetricHistory without max_results returns the whole history in MLflow; here at most
# this many points, then a next_page_token (MlflowClient follows it).
HISTORY_RESPONSE_LIMIT = 100_000
# get-history-bulk-interval (mlflow/server/handlers.py).
MAX_BULK_RUNS = 100
MAX_RESULTS_PER_RUN = 2500


def _fields_of(request: Request, repeated: frozenset[str] = frozenset()) -> Fields:
    return Fields(query_fields(request, repeated))


async def _body(request: Request) -> Fields:
    if request.method == "GET":
        return _fields_of(request, frozenset({"order_by", "experiment_ids"}))
    return Fields(await json_body(request))


def _run_name(run_id: str) -> str:
    if not ID_PATTERN.fullmatch(run_id):
        raise does_not_exist(f"Run with id={run_id[:100]} not found")
    return f"experiments/-/runs/{run_id}"


def _max_results(fields: Fields, name: str, default: int, limit: int) -> int:
    value = fields.integer(name)
    if value is None:
        return default
    if value < 1 or value > limit:
        raise invalid_parameter(
            f"Invalid value {value} for parameter '{name}' supplied: it must be between 1 "
            f"and {limit}."
        )
    return value


async def _collect(
    fetch: Callable[[int, str], Awaitable[tuple[list[T], str]]], limit: int, token: str
) -> tuple[list[T], str]:
    """Up to `limit` items from Cairn pages of at most CAIRN_PAGE, and the token after them."""
    items: list[T] = []
    while True:
        page, token = await fetch(min(limit - len(items), CAIRN_PAGE), token)
        items.extend(page)
        if not token or len(items) >= limit:
            return items, token


def batch_id(run_id: str, points: Sequence[metric_pb2.Metric]) -> str:
    """A deterministic batch id for metric points: a retried identical log-metric or
    log-batch (same keys, values, timestamps and steps) is stored once."""
    canonical = json.dumps(
        [run_id]
        + [[p.key, repr(p.value), p.timestamp.seconds, p.timestamp.nanos, p.step] for p in points],
        separators=(",", ":"),
    )
    return "mlflow-" + hashlib.sha256(canonical.encode()).hexdigest()


class TrackingApi:
    def __init__(self, default: DefaultExperiment) -> None:
        self.default = default

    # ------------------------------------------------------------------ experiments

    async def _experiment_json(
        self, call: Call, experiment: experiment_pb2.Experiment
    ) -> dict[str, Any]:
        self.default.observe(experiment)
        known = await self.default.known(call)
        return entities.experiment_json(
            experiment, self.default.alias(experiment.experiment_id, known)
        )

    async def create_experiment(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        name = fields.string("name", required=True)
        if fields.string("artifact_location"):
            raise invalid_parameter(
                "artifact_location is not supported: Cairn keeps every run's artifacts in its "
                "own artifact store (served at mlflow-artifacts:/<experiment_id>/<run_id>)"
            )
        description = ""
        tags: dict[str, str] = {}
        for index, tag in enumerate(fields.objects("tags")):
            key, value = entities.check_experiment_tag(
                tag.get("key"), tag.get("value"), f"tags[{index}]"
            )
            if key == NOTE_TAG:
                description = value
            else:
                tags[key] = value
        experiment = experiment_pb2.Experiment(
            display_name=name, description=description, tags=tags
        )
        try:
            created = await call.unary(
                "CreateExperiment", pb.CreateExperimentRequest(experiment=experiment)
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_ALREADY_EXISTS:
                raise MlflowError(
                    RESOURCE_ALREADY_EXISTS, f"Experiment(name={shown(name)}) already exists."
                ) from None
            raise
        body = await self._experiment_json(call, created)
        return {"experiment_id": body["experiment_id"]}

    async def _get_experiment(self, call: Call, experiment_id: str) -> experiment_pb2.Experiment:
        cairn_id = await self.default.cairn_id(call, experiment_id)
        try:
            experiment: experiment_pb2.Experiment = await call.unary(
                "GetExperiment", pb.GetExperimentRequest(name=f"experiments/{cairn_id}")
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(f"No Experiment with id={experiment_id} exists") from None
            raise
        return experiment

    async def get_experiment(self, request: Request, call: Call) -> dict[str, Any]:
        fields = _fields_of(request)
        experiment = await self._get_experiment(call, fields.string("experiment_id", required=True))
        return {"experiment": await self._experiment_json(call, experiment)}

    async def get_experiment_by_name(self, request: Request, call: Call) -> dict[str, Any]:
        name = _fields_of(request).string("experiment_name", required=True)
        try:
            experiment = await call.unary(
                "GetExperimentByName", pb.GetExperimentByNameRequest(display_name=name)
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(
                    f"Could not find experiment with name '{shown(name)}'"
                ) from None
            raise
        return {"experiment": await self._experiment_json(call, experiment)}

    async def search_experiments(self, request: Request, call: Call) -> dict[str, Any]:
        fields = await _body(request)
        limit = _max_results(
            fields, "max_results", entities.DEFAULT_SEARCH_RESULTS, entities.MAX_SEARCH_RESULTS
        )
        filter_text = fields.string("filter")
        default_id = ""
        if "experiment_id" in filter_text:
            default_id = await self.default.ensure(call)
        cairn_filter = translate.experiment_filter(
            filter_text, lambda value: default_id if value == DEFAULT_EXPERIMENT_ALIAS else value
        )
        order_by = translate.experiment_order_by(fields.strings("order_by"))
        lifecycle = entities.view_type(fields.raw("view_type"), "view_type")

        async def fetch(size: int, token: str) -> tuple[list[experiment_pb2.Experiment], str]:
            response = await call.unary(
                "ListExperiments",
                pb.ListExperimentsRequest(
                    page_size=size,
                    page_token=token,
                    filter=cairn_filter,
                    order_by=order_by,
                    lifecycle_filter=lifecycle,
                ),
            )
            return list(response.experiments), str(response.next_page_token)

        experiments, token = await _collect(fetch, limit, unwrap_token(fields.string("page_token")))
        for experiment in experiments:
            self.default.observe(experiment)
        known = await self.default.known(call)
        body: dict[str, Any] = {
            "experiments": [
                entities.experiment_json(e, self.default.alias(e.experiment_id, known))
                for e in experiments
            ]
        }
        if token:
            body["next_page_token"] = wrap_token(token)
        return body

    async def _update_experiment(
        self, call: Call, experiment_id: str, experiment: experiment_pb2.Experiment, field: str
    ) -> None:
        cairn_id = await self.default.cairn_id(call, experiment_id)
        experiment.name = f"experiments/{cairn_id}"
        try:
            await call.unary(
                "UpdateExperiment",
                pb.UpdateExperimentRequest(
                    experiment=experiment, update_mask=FieldMask(paths=[field])
                ),
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(f"No Experiment with id={experiment_id} exists") from None
            raise

    async def update_experiment(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        experiment_id = fields.string("experiment_id", required=True)
        new_name = fields.string("new_name", required=True)
        cairn_id = await self.default.cairn_id(call, experiment_id)
        if cairn_id == await self.default.known(call) and new_name != DEFAULT_EXPERIMENT_NAME:
            raise invalid_parameter(
                f"The default experiment ({DEFAULT_EXPERIMENT_ALIAS}) cannot be renamed: "
                f"MLflow clients find it as the Cairn experiment named "
                f"{DEFAULT_EXPERIMENT_NAME!r}"
            )
        try:
            await self._update_experiment(
                call,
                experiment_id,
                experiment_pb2.Experiment(display_name=new_name),
                "display_name",
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_ALREADY_EXISTS:
                raise MlflowError(
                    RESOURCE_ALREADY_EXISTS, f"Experiment(name={shown(new_name)}) already exists."
                ) from None
            raise
        return {}

    async def delete_experiment(self, request: Request, call: Call) -> dict[str, Any]:
        experiment_id = Fields(await json_body(request)).string("experiment_id", required=True)
        cairn_id = await self.default.cairn_id(call, experiment_id)
        await self._not_found_as(
            call.unary(
                "DeleteExperiment", pb.DeleteExperimentRequest(name=f"experiments/{cairn_id}")
            ),
            f"No Experiment with id={experiment_id} exists",
        )
        return {}

    async def restore_experiment(self, request: Request, call: Call) -> dict[str, Any]:
        experiment_id = Fields(await json_body(request)).string("experiment_id", required=True)
        cairn_id = await self.default.cairn_id(call, experiment_id)
        await self._not_found_as(
            call.unary(
                "RestoreExperiment", pb.RestoreExperimentRequest(name=f"experiments/{cairn_id}")
            ),
            f"No Experiment with id={experiment_id} exists",
        )
        return {}

    async def set_experiment_tag(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        experiment_id = fields.string("experiment_id", required=True)
        key, value = entities.check_experiment_tag(
            fields.string("key", required=True), fields.raw("value")
        )
        if key == NOTE_TAG:
            await self._update_experiment(
                call, experiment_id, experiment_pb2.Experiment(description=value), "description"
            )
            return {}
        cairn_id = await self.default.cairn_id(call, experiment_id)
        # One key per write: concurrent writers of different keys never lose each other's.
        await self._not_found_as(
            call.unary(
                "SetExperimentTags",
                pb.SetExperimentTagsRequest(
                    experiment=f"experiments/{cairn_id}", tags={key: value}
                ),
            ),
            f"No Experiment with id={experiment_id} exists",
        )
        return {}

    async def delete_experiment_tag(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        experiment_id = fields.string("experiment_id", required=True)
        key = fields.string("key", required=True)
        missing = f"No tag with name: {shown(key)} in experiment with id {shown(experiment_id)}"
        if key == NOTE_TAG:
            experiment = await self._get_experiment(call, experiment_id)
            if not experiment.description:
                raise does_not_exist(missing)
            await self._update_experiment(
                call, experiment_id, experiment_pb2.Experiment(description=""), "description"
            )
            return {}
        cairn_id = await self.default.cairn_id(call, experiment_id)
        try:
            await call.unary(
                "DeleteExperimentTag",
                pb.DeleteExperimentTagRequest(experiment=f"experiments/{cairn_id}", key=key),
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                if error.reason == "TAG_NOT_FOUND":
                    raise does_not_exist(missing) from None
                raise does_not_exist(
                    f"No Experiment with id={shown(experiment_id)} exists"
                ) from None
            raise
        return {}

    @staticmethod
    async def _not_found_as(pending: Awaitable[Any], message: str) -> Any:
        try:
            return await pending
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(message) from None
            raise

    # ------------------------------------------------------------------ runs

    async def _run_json(self, call: Call, run: run_pb2.Run) -> dict[str, Any]:
        known = await self.default.known(call)
        return entities.run_json(run, self.default.alias(run.experiment_id, known))

    async def _get_run(self, call: Call, run_id: str, view: run_pb2.RunView) -> run_pb2.Run:
        run: run_pb2.Run = await self._not_found_as(
            call.unary("GetRun", pb.GetRunRequest(name=_run_name(run_id), view=view)),
            f"Run with id={run_id} not found",
        )
        return run

    async def create_run(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        experiment_id = fields.string("experiment_id")
        tags: dict[str, str] = {}
        for index, tag in enumerate(fields.objects("tags")):
            key, value = entities.check_tag(tag.get("key"), tag.get("value"), f"tags[{index}]")
            tags[key] = value
        run_name = fields.string("run_name")
        tagged_name = tags.pop(RUN_NAME_TAG, "")
        if run_name and tagged_name and run_name != tagged_name:
            raise invalid_parameter(
                "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
                f"different values (run_name='{shown(run_name)}', "
                f"mlflow.runName='{shown(tagged_name)}')."
            )
        run = run_pb2.Run(
            run_name=run_name or tagged_name,
            user=tags.pop(USER_TAG, "") or fields.string("user_id"),
            note=tags.pop(NOTE_TAG, ""),
            tags=tags,
        )
        start_time = fields.integer("start_time")
        if start_time is not None:  # 0 is the epoch: set explicitly, it is not "now"
            run.start_time.CopyFrom(entities.timestamp(start_time, "start_time"))
        cairn_id = await self.default.cairn_id(call, experiment_id)
        created = await self._not_found_as(
            call.unary(
                "CreateRun",
                pb.CreateRunRequest(
                    parent=f"experiments/{cairn_id}",
                    run=run,
                    request_id=_idempotency_key(request),
                ),
            ),
            f"No Experiment with id={experiment_id or DEFAULT_EXPERIMENT_ALIAS} exists",
        )
        return {"run": await self._run_json(call, created)}

    async def get_run(self, request: Request, call: Call) -> dict[str, Any]:
        run_id = _fields_of(request).run_id()
        run = await self._get_run(call, run_id, run_pb2.RUN_VIEW_STANDARD)
        return {"run": await self._run_json(call, run)}

    async def update_run(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        run = run_pb2.Run(name=_run_name(run_id))
        paths = []
        if fields.has("status"):
            run.status = entities.run_status(fields.raw("status"))
            paths.append("status")
        end_time = fields.integer("end_time")
        if end_time is not None:
            run.end_time.CopyFrom(entities.timestamp(end_time, "end_time"))
            paths.append("end_time")
        if fields.string("run_name"):
            run.run_name = fields.string("run_name")
            paths.append("run_name")
        if not paths:
            updated = await self._get_run(call, run_id, run_pb2.RUN_VIEW_BASIC)
        else:
            updated = await self._not_found_as(
                call.unary(
                    "UpdateRun", pb.UpdateRunRequest(run=run, update_mask=FieldMask(paths=paths))
                ),
                f"Run with id={run_id} not found",
            )
        known = await self.default.known(call)
        return {
            "run_info": entities.run_info_json(
                updated, self.default.alias(updated.experiment_id, known)
            )
        }

    async def delete_run(self, request: Request, call: Call) -> dict[str, Any]:
        run_id = Fields(await json_body(request)).run_id()
        await self._not_found_as(
            call.unary("DeleteRun", pb.DeleteRunRequest(name=_run_name(run_id))),
            f"Run with id={run_id} not found",
        )
        return {}

    async def restore_run(self, request: Request, call: Call) -> dict[str, Any]:
        run_id = Fields(await json_body(request)).run_id()
        await self._not_found_as(
            call.unary("RestoreRun", pb.RestoreRunRequest(name=_run_name(run_id))),
            f"Run with id={run_id} not found",
        )
        return {}

    async def search_runs(self, request: Request, call: Call) -> dict[str, Any]:
        fields = await _body(request)
        experiment_ids = fields.strings("experiment_ids")
        limit = _max_results(
            fields, "max_results", entities.DEFAULT_SEARCH_RESULTS, entities.MAX_SEARCH_RESULTS
        )
        cairn_filter = translate.run_filter(fields.string("filter"))
        order_by = translate.run_order_by(fields.strings("order_by"))
        lifecycle = entities.view_type(fields.raw("run_view_type"), "run_view_type")
        token = unwrap_token(fields.string("page_token"))
        if not experiment_ids:
            # MLflow searches the listed experiments only; Cairn reads "none" as "all".
            return {"runs": []}
        cairn_ids = sorted(
            {await self.default.cairn_id(call, experiment_id) for experiment_id in experiment_ids}
        )

        async def fetch(size: int, page_token: str) -> tuple[list[run_pb2.Run], str]:
            response = await call.unary(
                "SearchRuns",
                pb.SearchRunsRequest(
                    experiment_ids=cairn_ids,
                    filter=cairn_filter,
                    order_by=order_by,
                    page_size=size,
                    page_token=page_token,
                    lifecycle_filter=lifecycle,
                    view=run_pb2.RUN_VIEW_STANDARD,
                ),
            )
            return list(response.runs), str(response.next_page_token)

        runs, next_token = await _collect(fetch, limit, token)
        known = await self.default.known(call)
        body: dict[str, Any] = {
            "runs": [
                entities.run_json(run, self.default.alias(run.experiment_id, known)) for run in runs
            ]
        }
        if next_token:
            body["next_page_token"] = wrap_token(next_token)
        return body

    # ------------------------------------------------------------------ params, tags, metrics

    async def _log_params(self, call: Call, run_id: str, params: dict[str, str]) -> None:
        try:
            await self._not_found_as(
                call.unary("LogParams", pb.LogParamsRequest(run=_run_name(run_id), params=params)),
                f"Run with id={run_id} not found",
            )
        except MlflowError as error:
            if error.reason != "PARAM_IMMUTABLE":
                raise
            key = error.metadata.get("key", "")
            raise invalid_parameter(
                "Changing param values is not allowed. Param with key='{}' was already logged "
                "with value='{}' for run ID='{}'. Attempted logging new value '{}'.".format(
                    shown(key),
                    shown(error.metadata.get("old_value", "")),
                    run_id,
                    shown(error.metadata.get("new_value", params.get(key, ""))),
                )
            ) from None

    async def _set_tags(self, call: Call, run_id: str, tags: dict[str, str]) -> None:
        """Sets run tags; mlflow.runName renames the run, mlflow.note.content sets its note
        and mlflow.user must match the run's user (fixed when Cairn created the run)."""
        reserved = sorted(k for k in tags if k.startswith(entities.HIDDEN_TAG_PREFIX))
        if reserved:
            raise invalid_parameter(
                f"Tags starting with '{entities.HIDDEN_TAG_PREFIX}' are reserved: Cairn records "
                f"MLflow logged models, inputs and outputs in them (got {shown(reserved[0])})"
            )
        tags = dict(tags)
        new_name = tags.pop(RUN_NAME_TAG, None)
        note = tags.pop(NOTE_TAG, None)
        user = tags.pop(USER_TAG, None)
        if user is not None:
            run = await self._get_run(call, run_id, run_pb2.RUN_VIEW_BASIC)
            if user != run.user:
                raise invalid_parameter(
                    f"The tag '{USER_TAG}' is the run's user, which Cairn fixes when the run "
                    f"is created: it is '{run.user}' and cannot become '{shown(user)}'"
                )
        run = run_pb2.Run(name=_run_name(run_id))
        paths = []
        if new_name is not None:
            if not new_name.strip():
                raise invalid_parameter(f"The tag '{RUN_NAME_TAG}' (the run name) cannot be empty")
            run.run_name = new_name
            paths.append("run_name")
        if note is not None:
            run.note = note
            paths.append("note")
        if paths:
            await self._not_found_as(
                call.unary(
                    "UpdateRun", pb.UpdateRunRequest(run=run, update_mask=FieldMask(paths=paths))
                ),
                f"Run with id={run_id} not found",
            )
        if tags:
            await self._not_found_as(
                call.unary("SetRunTags", pb.SetRunTagsRequest(run=_run_name(run_id), tags=tags)),
                f"Run with id={run_id} not found",
            )

    async def _log_metrics(
        self, call: Call, run_id: str, points: Sequence[metric_pb2.Metric]
    ) -> None:
        await self._not_found_as(
            call.unary(
                "LogMetrics",
                pb.LogMetricsRequest(
                    run=_run_name(run_id), batch_id=batch_id(run_id, points), metrics=points
                ),
            ),
            f"Run with id={run_id} not found",
        )

    async def log_param(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        key, value = entities.check_param(fields.string("key", required=True), fields.raw("value"))
        await self._log_params(call, run_id, {key: value})
        return {}

    async def set_tag(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        key, value = entities.check_tag(fields.string("key", required=True), fields.raw("value"))
        await self._set_tags(call, run_id, {key: value})
        return {}

    async def delete_tag(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        key = fields.string("key", required=True)
        if key in (RUN_NAME_TAG, USER_TAG):
            raise invalid_parameter(
                f"The tag '{key}' is the run's {'name' if key == RUN_NAME_TAG else 'user'} in "
                "Cairn and cannot be deleted"
            )
        if key == NOTE_TAG:
            run = await self._get_run(call, run_id, run_pb2.RUN_VIEW_BASIC)
            if not run.note:
                raise does_not_exist(f"No tag with name: {shown(key)} in run with id {run_id}")
            await self._set_tags(call, run_id, {NOTE_TAG: ""})
            return {}
        name = _run_name(run_id)
        try:
            await call.unary("DeleteRunTag", pb.DeleteRunTagRequest(run=name, key=key))
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                if error.reason == "RUN_NOT_FOUND":
                    raise does_not_exist(f"Run with id={run_id} not found") from None
                raise does_not_exist(
                    f"No tag with name: {shown(key)} in run with id {run_id}"
                ) from None
            raise
        return {}

    async def log_metric(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        point = entities.check_metric(fields.data)
        await self._log_metrics(call, run_id, [point])
        return {}

    async def log_batch(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        metrics = fields.objects("metrics")
        params = fields.objects("params")
        tags = fields.objects("tags")
        entities.check_batch_limits(len(metrics), len(params), len(tags))
        points = [entities.check_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics)]
        checked_params = entities.unique_params(
            entities.check_param(p.get("key"), p.get("value"), f"params[{i}]")
            for i, p in enumerate(params)
        )
        checked_tags = dict(
            entities.check_tag(t.get("key"), t.get("value"), f"tags[{i}]")
            for i, t in enumerate(tags)
        )
        if any(isinstance(m, dict) and m.get("model_id") for m in metrics):
            points = await self._not_yet_stored(call, run_id, points)
        if not (points or checked_params or checked_tags):
            await self._get_run(call, run_id, run_pb2.RUN_VIEW_BASIC)  # the run must exist
            return {}
        # Params first: a changed param refuses the batch before anything is written.
        if checked_params:
            await self._log_params(call, run_id, checked_params)
        if checked_tags:
            await self._set_tags(call, run_id, checked_tags)
        if points:
            await self._log_metrics(call, run_id, points)
        return {}

    async def _not_yet_stored(
        self, call: Call, run_id: str, points: list[metric_pb2.Metric]
    ) -> list[metric_pb2.Metric]:
        """The points not in the run's history yet. mlflow.<flavor>.log_model logs the
        run's metrics at the model's step again, with the model's id (MLflow keeps one copy
        of a point); Cairn keys points by batch, so the copies are dropped here."""
        stored: dict[tuple[str, int], set[tuple[str, int, int]]] = {}
        for key, step in sorted({(p.key, p.step) for p in points}):
            response = await self._not_found_as(
                call.unary(
                    "ListMetricHistory",
                    pb.ListMetricHistoryRequest(
                        run=_run_name(run_id),
                        metric_key=key,
                        page_size=HISTORY_PAGE,
                        # Cairn reads 0..0 as "everything"
                        start_step=step - 1 if step == 0 else step,
                        end_step=step,
                    ),
                ),
                f"Run with id={run_id} not found",
            )
            stored[(key, step)] = {
                (repr(p.value), p.timestamp.seconds, p.timestamp.nanos // 1_000_000)
                for p in response.points
                if p.step == step
            }
        return [
            p
            for p in points
            if (repr(p.value), p.timestamp.seconds, p.timestamp.nanos // 1_000_000)
            not in stored[(p.key, p.step)]
        ]

    async def get_metric_history(self, request: Request, call: Call) -> dict[str, Any]:
        fields = _fields_of(request)
        run_id = fields.run_id()
        key = fields.string("metric_key", required=True)
        max_results = fields.integer("max_results")
        if max_results is not None and max_results <= 0:
            raise invalid_parameter(
                f"Invalid value {max_results} for parameter 'max_results' supplied. It must "
                "be a positive integer."
            )
        limit = min(max_results or HISTORY_RESPONSE_LIMIT, HISTORY_RESPONSE_LIMIT)
        token = unwrap_token(fields.string("page_token"))
        points: list[Any] = []
        while True:
            response = await self._not_found_as(
                call.unary(
                    "ListMetricHistory",
                    pb.ListMetricHistoryRequest(
                        run=_run_name(run_id),
                        metric_key=key,
                        page_size=min(limit - len(points), HISTORY_PAGE),
                        page_token=token,
                    ),
                ),
                f"Run with id={run_id} not found",
            )
            points.extend(response.points)
            token = response.next_page_token
            if not token or len(points) >= limit:
                break
        body: dict[str, Any] = {
            "metrics": [entities.metric_json(key, p.value, p.step, p.timestamp) for p in points]
        }
        if token:
            body["next_page_token"] = wrap_token(token)
        return body

    async def get_metric_history_bulk_interval(
        self, request: Request, call: Call
    ) -> dict[str, Any]:
        fields = _fields_of(request, frozenset({"run_ids"}))
        run_ids = fields.strings("run_ids")
        if not run_ids:
            raise invalid_parameter("Missing value for required parameter 'run_ids'.")
        if len(run_ids) > MAX_BULK_RUNS:
            raise invalid_parameter(
                f"GetMetricHistoryBulkInterval request must specify at most {MAX_BULK_RUNS} "
                f"run_ids. Received {len(run_ids)} run_ids."
            )
        key = fields.string("metric_key", required=True)
        max_results = fields.integer("max_results")
        if max_results is None:
            max_results = MAX_RESULTS_PER_RUN
        if not 1 <= max_results <= MAX_RESULTS_PER_RUN:
            raise invalid_parameter(f"max_results must be between 1 and {MAX_RESULTS_PER_RUN}.")
        start, end = fields.integer("start_step"), fields.integer("end_step")
        if (start is None) != (end is None):
            raise invalid_parameter(
                "If either start step or end step are specified, both must be specified."
            )
        if start is not None and end is not None and start > end:
            raise invalid_parameter(
                "end_step must be greater than start_step. "
                f"Found start_step={start} and end_step={end}."
            )
        # Cairn reads the step range 0..0 as "the whole history": ask for -1..0 and keep 0.
        only_zero = start == 0 and end == 0
        metrics: list[dict[str, Any]] = []
        for run_id in sorted(set(run_ids)):
            response = await self._not_found_as(
                call.unary(
                    "ListMetricHistory",
                    pb.ListMetricHistoryRequest(
                        run=_run_name(run_id),
                        metric_key=key,
                        max_points=max_results,
                        start_step=-1 if only_zero else start or 0,
                        end_step=end or 0,
                    ),
                ),
                f"Run with id={run_id} not found",
            )
            points = [p for p in response.points if p.step == 0 or not only_zero]
            for point in points[:max_results]:
                entry = entities.metric_json(key, point.value, point.step, point.timestamp)
                entry["run_id"] = run_id
                metrics.append(entry)
        return {"metrics": metrics}

    async def list_artifacts(self, request: Request, call: Call) -> dict[str, Any]:
        """The tracking API's artifacts/list (the UI's; clients use mlflow-artifacts)."""
        fields = _fields_of(request)
        run_id = fields.run_id()
        path = check_path(fields.string("path"), allow_empty=True)
        run = await self._get_run(call, run_id, run_pb2.RUN_VIEW_BASIC)
        known = await self.default.known(call)
        experiment_id = self.default.alias(run.experiment_id, known)
        files = await list_directory(call, run.name, path)
        for entry in files:
            entry["path"] = f"{path}/{entry['path']}" if path else entry["path"]
        return {"root_uri": entities.artifact_uri(experiment_id, run.run_id), "files": files}


def _idempotency_key(request: Request) -> str:
    """A client's Idempotency-Key header as Cairn's request_id: MLflow clients send no key,
    and a key derived from a CreateRun's content would merge distinct runs created in the
    same millisecond, so creates are idempotent only when the caller says so."""
    key = request.headers.get("idempotency-key", "")
    if not key:
        return ""
    return "mlflow-" + hashlib.sha256(key.encode()).hexdigest()


__all__ = ["TrackingApi", "batch_id"]
