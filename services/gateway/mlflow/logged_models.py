"""MLflow 3 logged models, and the run inputs and outputs that point at them, stored in
Cairn's runs.

``mlflow.<flavor>.log_model`` (inside ``mlflow.start_run()``) creates a logged model
(POST /logged-models), records it as an output of the run (POST /runs/outputs), uploads its
files to the model's artifact_location and finalizes it (PATCH /logged-models/<id>).
``mlflow.pyfunc.load_model("models:/<id>")`` reads it back (GET /logged-models/<id>) and
downloads its files; ``runs:/<run_id>/<name>`` URIs find it by searching the experiment's
logged models by name (POST /logged-models/search).

Cairn has no logged-model entity, so a logged model lives in its source run:

* Its id is ``m-<run_id>-<8 hex digits>``: the id alone finds the run.
* Its files are the run's artifacts under ``models/<model_id>/`` (artifact type MODEL): the
  artifact_location is ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts/models/<id>``.
* Its record (name, status, params, tags, model type, times) is the JSON artifact
  ``models/<model_id>.json`` of the run, rewritten (overwrite) by finalize, tag and param
  writes. Those writes are serialized per model within a gateway process; two gateway
  replicas changing the same model at the same moment may lose one change (MLflow clients
  change a model from one process, one call after the other).
* The run carries the tag ``cairn.mlflow.model.<model_id>`` (value: the model's name and
  creation time as JSON) and the marker ``cairn.mlflow.logged_models``: a search lists the
  experiment's runs with the marker and picks the models from these tags. A search by name
  alone (what ``runs:/`` URIs do) in MLflow's default order reads only the records of the
  page it answers; other filters and orders read the records of every model whose name
  matches.
* Outputs (``cairn.mlflow.output.<model_id>`` = step), model inputs
  (``cairn.mlflow.input.<model_id>``) and dataset inputs (``cairn.mlflow.dataset.<digest>`` =
  the dataset as JSON; its schema and profile are dropped when the tag would pass Cairn's
  8,000-character limit) are run tags too; MLflow clients read them back in the run's
  ``inputs`` and ``outputs``, and every ``cairn.mlflow.*`` tag is hidden from the run's
  MLflow tags.

A logged model needs a source run: one created outside a run is INVALID_PARAMETER_VALUE.
Deleting a model marks its record deleted and drops its run tag; its files stay with the
run. Model metrics (points logged with a model_id) are stored as the run's metrics and are
not listed in the model's ``metrics``; params and tags are.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeGuard

from starlette.requests import Request

from cairn.tracker.v1 import run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.gateway.mlflow import translate
from services.gateway.mlflow.artifacts import MODELS_DIRECTORY, download_bytes, upload_bytes
from services.gateway.mlflow.context import (
    ID_PATTERN,
    TOKEN_PREFIX,
    Call,
    DefaultExperiment,
)
from services.gateway.mlflow.entities import (
    DATASET_TAG_PREFIX,
    INPUT_TAG_PREFIX,
    MARKER_TAG,
    MAX_TAG_VAL_LENGTH,
    MODEL_TAG_PREFIX,
    OUTPUT_TAG_PREFIX,
    check_param,
    check_tag,
)
from services.gateway.mlflow.protocol import (
    RESOURCE_DOES_NOT_EXIST,
    Fields,
    MlflowError,
    does_not_exist,
    invalid_parameter,
    json_body,
    shown,
)

STATUSES = {
    0: "LOGGED_MODEL_STATUS_UNSPECIFIED",
    1: "LOGGED_MODEL_PENDING",
    2: "LOGGED_MODEL_READY",
    3: "LOGGED_MODEL_UPLOAD_FAILED",
}
# MLflow's names for the statuses in search filters.
_FILTER_STATUSES = {"PENDING": 1, "READY": 2, "FAILED": 3, "UPLOAD_FAILED": 3}
MODEL_ID = re.compile(r"m-(?P<run_id>[A-Za-z0-9_\-]{1,64})-(?P<suffix>[0-9a-f]{8})")
MAX_RECORD_BYTES = 8 << 20
DEFAULT_SEARCH_RESULTS = 100  # mlflow.store.tracking.SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT
MAX_SEARCH_RESULTS = 1000
_RUN_PAGE = 1000
_PARALLEL_READS = 16


def model_run_id(model_id: str) -> str:
    match = MODEL_ID.fullmatch(model_id)
    if match is None:
        raise does_not_exist(f"Logged model with ID '{shown(model_id)}' not found.")
    return match.group("run_id")


def record_path(model_id: str) -> str:
    return f"{MODELS_DIRECTORY}/{model_id}.json"


@dataclass(frozen=True)
class _Listed:
    """A logged model as its run's tag lists it: the value is {"name", "created"} JSON."""

    model_id: str
    name: str
    created: int

    @staticmethod
    def tag_value(record: Mapping[str, Any]) -> str:
        return json.dumps({"name": record["name"], "created": record["creation_timestamp_ms"]})

    @classmethod
    def parse(cls, model_id: str, value: str) -> _Listed:
        try:
            data = json.loads(value)
            return cls(model_id, str(data["name"]), int(data["created"]))
        except (ValueError, TypeError, KeyError):
            return cls(model_id, value, 0)  # a tag written by hand: its value is the name


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _is_record(record: Any, model_id: str) -> TypeGuard[dict[str, Any]]:
    """Whether a stored record has the shape this module writes (it is a run artifact,
    which a client could overwrite)."""
    if not isinstance(record, dict) or record.get("model_id") != model_id:
        return False
    texts = ("name", "experiment_id", "source_run_id")
    numbers = ("status", "creation_timestamp_ms", "last_updated_timestamp_ms")
    return (
        all(isinstance(record.get(k), str) for k in texts)
        and all(isinstance(record.get(k), int) for k in numbers)
        and all(
            isinstance(record.get(k), dict) and all(isinstance(v, str) for v in record[k].values())
            for k in ("tags", "params")
        )
    )


def _status_number(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in STATUSES:
        return value
    if isinstance(value, str):
        for number, name in STATUSES.items():
            if value.upper() in (name, name.removeprefix("LOGGED_MODEL_")):
                return number
    raise invalid_parameter(
        f"Invalid value {shown(value)} for parameter 'status' supplied; valid statuses are "
        f"{[name for number, name in STATUSES.items() if number]}"
    )


def _entries(fields: Fields, name: str, check: Callable[..., tuple[str, str]]) -> dict[str, str]:
    entries: dict[str, str] = {}
    for index, entry in enumerate(fields.objects(name)):
        key, value = check(entry.get("key"), entry.get("value"), f"{name}[{index}]")
        entries[key] = value
    return entries


class LoggedModelsApi:
    def __init__(self, default: DefaultExperiment) -> None:
        self.default = default
        self._locks = _KeyedLocks()

    # ------------------------------------------------------------------ records

    async def _run(self, call: Call, run_id: str) -> run_pb2.Run:
        if not ID_PATTERN.fullmatch(run_id):
            raise does_not_exist(f"Run with id={shown(run_id)} not found")
        try:
            run: run_pb2.Run = await call.unary(
                "GetRun",
                pb.GetRunRequest(name=f"experiments/-/runs/{run_id}", view=run_pb2.RUN_VIEW_BASIC),
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(f"Run with id={run_id} not found") from None
            raise
        return run

    async def _read(
        self, call: Call, model_id: str, *, allow_deleted: bool = False
    ) -> dict[str, Any]:
        run_id = model_run_id(model_id)
        try:
            raw = await download_bytes(
                call, f"experiments/-/runs/{run_id}", record_path(model_id), MAX_RECORD_BYTES
            )
            record: Any = json.loads(raw)
        except ValueError:
            record = None
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(f"Logged model with ID '{model_id}' not found.") from None
            raise
        if not _is_record(record, model_id):
            raise does_not_exist(
                f"Logged model with ID '{model_id}' not found: its record "
                f"{record_path(model_id)} is not a logged model record"
            )
        if record.get("deleted") and not allow_deleted:
            raise does_not_exist(f"Logged model with ID '{model_id}' not found.")
        return record

    async def _write(self, call: Call, record: dict[str, Any]) -> None:
        record["last_updated_timestamp_ms"] = int(time.time() * 1000)
        content = json.dumps(record, sort_keys=True, indent=1).encode()
        if len(content) > MAX_RECORD_BYTES:
            raise invalid_parameter(
                f"The logged model {record['model_id']} would have more than "
                f"{MAX_RECORD_BYTES >> 20} MiB of params and tags"
            )
        run = f"experiments/-/runs/{record['source_run_id']}"
        await upload_bytes(call, run, record_path(record["model_id"]), content)

    async def _update(
        self, call: Call, model_id: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        async with self._locks.hold(model_id):
            record = await self._read(call, model_id)
            change(record)
            await self._write(call, record)
        return record

    async def _json(self, call: Call, record: Mapping[str, Any]) -> dict[str, Any]:
        known = await self.default.known(call)
        experiment_id = self.default.alias(str(record["experiment_id"]), known)
        run_id = str(record["source_run_id"])
        info: dict[str, Any] = {
            "model_id": record["model_id"],
            "experiment_id": experiment_id,
            "name": record["name"],
            "creation_timestamp_ms": record["creation_timestamp_ms"],
            "last_updated_timestamp_ms": record["last_updated_timestamp_ms"],
            "artifact_uri": (
                f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts/"
                f"{MODELS_DIRECTORY}/{record['model_id']}"
            ),
            "status": STATUSES.get(int(record.get("status", 0)), STATUSES[0]),
            "source_run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in sorted(record["tags"].items())],
        }
        if record.get("model_type"):
            info["model_type"] = record["model_type"]
        if record.get("status_message"):
            info["status_message"] = record["status_message"]
        params = [{"key": k, "value": v} for k, v in sorted(record["params"].items())]
        return {"info": info, "data": {"params": params, "metrics": []}}

    # ------------------------------------------------------------------ endpoints

    async def create(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        experiment_id = fields.string("experiment_id", required=True)
        name = fields.string("name")
        model_type = fields.string("model_type")
        run_id = fields.string("source_run_id")
        params = _entries(fields, "params", check_param)
        tags = _entries(fields, "tags", check_tag)
        if not run_id:
            raise invalid_parameter(
                "Cairn stores a logged model with the run that produced it, and this one has "
                "no source run: log the model inside a run (with mlflow.start_run(): ...) or "
                "pass source_run_id"
            )
        cairn_experiment = await self.default.cairn_id(call, experiment_id)
        run = await self._run(call, run_id)
        if run.experiment_id != cairn_experiment:
            raise invalid_parameter(
                f"The source run {run_id} belongs to another experiment than "
                f"{shown(experiment_id)}: Cairn keeps a logged model in its run's experiment"
            )
        if name and (len(name) > 256 or not name.isprintable() or "/" in name or ":" in name):
            raise invalid_parameter(
                f"Invalid model name {shown(name)}: names are up to 256 printable characters "
                "without '/' or ':'"
            )
        model_id = f"m-{run_id}-{secrets.token_hex(4)}"
        now = int(time.time() * 1000)
        record: dict[str, Any] = {
            "model_id": model_id,
            "name": name or f"model-{secrets.token_hex(3)}",
            "experiment_id": cairn_experiment,
            "source_run_id": run_id,
            "model_type": model_type,
            "status": 1,
            "status_message": "",
            "creation_timestamp_ms": now,
            "last_updated_timestamp_ms": now,
            "tags": tags,
            "params": params,
        }
        await self._write(call, record)
        await call.unary(
            "SetRunTags",
            pb.SetRunTagsRequest(
                run=run.name,
                tags={MARKER_TAG: "true", MODEL_TAG_PREFIX + model_id: _Listed.tag_value(record)},
            ),
        )
        return {"model": await self._json(call, record)}

    async def get(self, request: Request, call: Call) -> dict[str, Any]:
        allow_deleted = request.query_params.get("allow_deleted", "").lower() == "true"
        record = await self._read(
            call, request.path_params["model_id"], allow_deleted=allow_deleted
        )
        return {"model": await self._json(call, record)}

    async def finalize(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        status = _status_number(fields.raw("status"))

        def change(record: dict[str, Any]) -> None:
            record["status"] = status

        record = await self._update(call, request.path_params["model_id"], change)
        return {"model": await self._json(call, record)}

    async def set_tags(self, request: Request, call: Call) -> dict[str, Any]:
        tags = _entries(Fields(await json_body(request)), "tags", check_tag)
        await self._update(
            call, request.path_params["model_id"], lambda record: record["tags"].update(tags)
        )
        return {}

    async def delete_tag(self, request: Request, call: Call) -> dict[str, Any]:
        model_id, key = request.path_params["model_id"], request.path_params["tag_key"]

        def change(record: dict[str, Any]) -> None:
            if key not in record["tags"]:
                raise does_not_exist(
                    f"No tag with key {shown(key)} found for logged model {model_id}"
                )
            del record["tags"][key]

        await self._update(call, model_id, change)
        return {}

    async def log_params(self, request: Request, call: Call) -> dict[str, Any]:
        params = _entries(Fields(await json_body(request)), "params", check_param)
        await self._update(
            call, request.path_params["model_id"], lambda record: record["params"].update(params)
        )
        return {}

    async def delete(self, request: Request, call: Call) -> dict[str, Any]:
        model_id = request.path_params["model_id"]

        def change(record: dict[str, Any]) -> None:
            record["deleted"] = True

        record = await self._update(call, model_id, change)
        try:
            await call.unary(
                "DeleteRunTag",
                pb.DeleteRunTagRequest(
                    run=f"experiments/-/runs/{record['source_run_id']}",
                    key=MODEL_TAG_PREFIX + model_id,
                ),
            )
        except MlflowError as error:
            if error.error_code != RESOURCE_DOES_NOT_EXIST:
                raise
        return {}

    async def search(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        experiment_ids = fields.strings("experiment_ids")
        if not experiment_ids:
            raise invalid_parameter("Missing value for required parameter 'experiment_ids'.")
        match = model_filter(fields.string("filter"))
        if fields.objects("datasets"):
            raise invalid_parameter(
                "Searching logged models by dataset is not supported: Cairn records no "
                "model metrics per dataset"
            )
        limit = fields.integer("max_results") or DEFAULT_SEARCH_RESULTS
        if not 1 <= limit <= MAX_SEARCH_RESULTS:
            raise invalid_parameter(
                f"Invalid value {limit} for parameter 'max_results' supplied: it must be "
                f"between 1 and {MAX_SEARCH_RESULTS}."
            )
        order_by = fields.objects("order_by")
        order = _order(order_by)
        offset = _offset(fields.string("page_token"))
        cairn_ids = sorted(
            {await self.default.cairn_id(call, experiment_id) for experiment_id in experiment_ids}
        )
        # The experiments' models from their runs' tags, the names filtered there already.
        candidates = [
            entry
            for entry in await self._listed(call, cairn_ids)
            if match.could_match_name(entry.name)
        ]
        if match.names_only and not order_by:
            # MLflow's default order (newest first) from the tags: read one page of records.
            candidates.sort(key=lambda entry: (-entry.created, entry.model_id))
            page = await self._records(call, candidates[offset : offset + limit])
            more = offset + limit < len(candidates)
        else:
            records = [r for r in await self._records(call, candidates) if match(r)]
            records.sort(key=order)
            page = records[offset : offset + limit]
            more = offset + limit < len(records)
        body: dict[str, Any] = {"models": [await self._json(call, r) for r in page]}
        if more:
            body["next_page_token"] = f"{TOKEN_PREFIX}lm.{offset + limit}"
        return body

    async def _listed(self, call: Call, experiment_ids: list[str]) -> list[_Listed]:
        """Every logged model of the experiments, from their runs' model tags."""
        listed: list[_Listed] = []
        token = ""
        while True:
            response = await call.unary(
                "SearchRuns",
                pb.SearchRunsRequest(
                    experiment_ids=experiment_ids,
                    filter=f"tags.`{MARKER_TAG}` IS NOT NULL",
                    page_size=_RUN_PAGE,
                    page_token=token,
                    view=run_pb2.RUN_VIEW_STANDARD,
                ),
            )
            for run in response.runs:
                for key, value in run.tags.items():
                    if key.startswith(MODEL_TAG_PREFIX):
                        listed.append(_Listed.parse(key[len(MODEL_TAG_PREFIX) :], value))
            token = response.next_page_token
            if not token:
                return listed

    async def _records(self, call: Call, entries: list[_Listed]) -> list[dict[str, Any]]:
        """The records of `entries` (a few at a time), without those deleted meanwhile."""
        limit = asyncio.Semaphore(_PARALLEL_READS)

        async def read(model_id: str) -> dict[str, Any] | None:
            async with limit:
                try:
                    return await self._read(call, model_id)
                except MlflowError as error:
                    if error.error_code == RESOURCE_DOES_NOT_EXIST:
                        return None
                    raise

        found = await asyncio.gather(*(read(entry.model_id) for entry in entries))
        return [record for record in found if record is not None]

    # ------------------------------------------------------------------ run inputs, outputs

    async def log_outputs(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        outputs = fields.objects("models")
        if not outputs:
            raise invalid_parameter("Missing value for required parameter 'models'.")
        tags: dict[str, str] = {}
        for entry in outputs:
            output = Fields(entry)
            model_id = output.string("model_id", required=True)
            model_run_id(model_id)  # a Cairn logged model id
            tags[OUTPUT_TAG_PREFIX + model_id] = str(output.integer("step") or 0)
        run = await self._run(call, run_id)
        await call.unary("SetRunTags", pb.SetRunTagsRequest(run=run.name, tags=tags))
        return {}

    async def log_inputs(self, request: Request, call: Call) -> dict[str, Any]:
        fields = Fields(await json_body(request))
        run_id = fields.run_id()
        tags: dict[str, str] = {}
        for entry in fields.objects("models"):
            model_id = Fields(entry).string("model_id", required=True)
            model_run_id(model_id)
            tags[INPUT_TAG_PREFIX + model_id] = ""
        for index, entry in enumerate(fields.objects("datasets")):
            key, value = _dataset_tag(entry, f"datasets[{index}]")
            tags[key] = value
        run = await self._run(call, run_id)
        if tags:
            await call.unary("SetRunTags", pb.SetRunTagsRequest(run=run.name, tags=tags))
        return {}


def _dataset_tag(entry: Mapping[str, Any], path: str) -> tuple[str, str]:
    """The run tag for one MLflow DatasetInput: key by name and digest, the input as JSON
    (schema, then profile dropped when it would not fit a tag)."""
    fields = Fields(entry)
    dataset = fields.raw("dataset")
    if not isinstance(dataset, dict):
        raise invalid_parameter(f"Missing value for required parameter '{path}.dataset'.")
    data = Fields(dataset)
    kept: dict[str, Any] = {}
    for name in ("name", "digest", "source_type", "source", "schema", "profile"):
        kept[name] = data.string(name, required=name in ("name", "digest"))
    tags = []
    for index, tag in enumerate(fields.objects("tags")):
        key, value = check_tag(tag.get("key"), tag.get("value"), f"{path}.tags[{index}]")
        tags.append({"key": key, "value": value})
    recorded = {"tags": tags, "dataset": kept}
    text = json.dumps(recorded, sort_keys=True)
    for dropped in ("schema", "profile", "source"):
        if len(text) <= MAX_TAG_VAL_LENGTH:
            break
        kept[dropped] = ""
        text = json.dumps(recorded, sort_keys=True)
    if len(text) > MAX_TAG_VAL_LENGTH:
        raise invalid_parameter(f"'{path}' is too large for Cairn to record")
    digest = hashlib.sha256(f"{kept['name']}\0{kept['digest']}".encode()).hexdigest()[:16]
    return DATASET_TAG_PREFIX + digest, text


def _offset(token: str) -> int:
    if not token:
        return 0
    prefix = f"{TOKEN_PREFIX}lm."
    number = token[len(prefix) :]
    if not token.startswith(prefix) or not number.isdigit() or len(number) > 9:
        raise invalid_parameter(f"Invalid page token {shown(token, 100)!r}")
    return int(number)


_ORDER_FIELDS = {
    "creation_timestamp": "creation_timestamp_ms",
    "creation_time": "creation_timestamp_ms",
    "creation_timestamp_ms": "creation_timestamp_ms",
    "last_updated_timestamp": "last_updated_timestamp_ms",
    "last_updated_timestamp_ms": "last_updated_timestamp_ms",
    "name": "name",
    "model_id": "model_id",
    "model_type": "model_type",
}


def _order(items: list[Mapping[str, Any]]) -> Callable[[dict[str, Any]], Any]:
    """MLflow's order: the given fields, then creation time (newest first) and model id."""
    keys: list[tuple[str, bool]] = []
    for index, item in enumerate(items):
        name = Fields(item).string("field_name", required=True)
        if name not in _ORDER_FIELDS:
            raise invalid_parameter(
                f"Invalid order by field name: {shown(name)} (order_by[{index}]); Cairn sorts "
                f"logged models by {sorted(set(_ORDER_FIELDS) - {'creation_time'})}"
            )
        ascending = item.get("ascending", True)
        keys.append((_ORDER_FIELDS[name], ascending is not False))
    keys += [("creation_timestamp_ms", False), ("model_id", True)]

    def key(record: dict[str, Any]) -> Any:
        out: list[Any] = []
        for name, ascending in keys:
            value = record.get(name) or ("" if name in ("name", "model_type") else 0)
            if isinstance(value, str):
                out.append(_Reversed(value) if not ascending else value)
            else:
                out.append(value if ascending else -value)
        return tuple(out)

    return key


class _Reversed:
    """A string that sorts in reverse."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


# ---------------------------------------------------------------------- filters


class ModelFilter:
    """An MLflow logged-model filter evaluated on records: attributes name, model_id,
    source_run_id, status, model_type, creation_timestamp and last_updated_timestamp;
    tags.<key> and params.<key>; with =, !=, <, <=, >, >=, LIKE, ILIKE, IN, IS [NOT] NULL,
    AND, OR, NOT and parentheses."""

    def __init__(self, node: translate.Node | None) -> None:
        self.node = node
        self._names = _required_names(node)
        # Whether the names decide alone (the filter is name = / IN, possibly ANDed).
        self.names_only = node is None or _names_only(node)

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return self.node is None or _evaluate(self.node, record)

    def could_match_name(self, name: str) -> bool:
        return self._names is None or name in self._names


_ATTRIBUTES = {
    "name": "name",
    "model_id": "model_id",
    "source_run_id": "source_run_id",
    "status": "status",
    "model_type": "model_type",
    "creation_timestamp": "creation_timestamp_ms",
    "creation_time": "creation_timestamp_ms",
    "creation_timestamp_ms": "creation_timestamp_ms",
    "last_updated_timestamp": "last_updated_timestamp_ms",
    "last_updated_timestamp_ms": "last_updated_timestamp_ms",
}


def model_filter(text: str) -> ModelFilter:
    node = translate.parse_filter(text)
    if node is not None:
        _check_fields(node)
    return ModelFilter(node)


def _check_fields(node: translate.Node) -> None:
    if isinstance(node, translate.Junction):
        for operand in node.operands:
            _check_fields(operand)
        return
    if isinstance(node, translate.Negation):
        _check_fields(node.operand)
        return
    field = node.field
    if field.entity in ("tags", "params"):
        return
    if field.entity == "attributes" and field.key in _ATTRIBUTES:
        return
    raise invalid_parameter(
        f"Invalid logged model filter field {shown(field.text)}: Cairn filters logged models "
        f"by {sorted(_ATTRIBUTES)}, tags.<key> and params.<key>"
    )


def _required_names(node: translate.Node | None) -> set[str] | None:
    """The names a matching model must have, when the filter says so (name = / IN at the
    top or under AND); None when any name may match."""
    if isinstance(node, translate.Comparison):
        if node.field.entity == "attributes" and node.field.key == "name" and node.op == "=":
            return {str(node.value)}
        return None
    if isinstance(node, translate.InList):
        if node.field.entity == "attributes" and node.field.key == "name" and not node.negated:
            return {str(value) for value in node.values}
        return None
    if isinstance(node, translate.Junction) and node.op == "AND":
        names: set[str] | None = None
        for operand in node.operands:
            required = _required_names(operand)
            if required is not None:
                names = required if names is None else names & required
        return names
    return None


def _names_only(node: translate.Node) -> bool:
    if isinstance(node, translate.Junction):
        return node.op == "AND" and all(_names_only(operand) for operand in node.operands)
    if isinstance(node, translate.Comparison):
        return node.field.entity == "attributes" and node.field.key == "name" and node.op == "="
    if isinstance(node, translate.InList):
        return node.field.entity == "attributes" and node.field.key == "name" and not node.negated
    return False


def _value_of(field: translate.Field, record: Mapping[str, Any]) -> Any:
    if field.entity == "tags":
        return record["tags"].get(field.key)
    if field.entity == "params":
        return record["params"].get(field.key)
    name = _ATTRIBUTES[field.key]
    value = record.get(name)
    if name == "status":
        return STATUSES.get(int(value or 0), "").removeprefix("LOGGED_MODEL_")
    if name == "model_type" and not value:
        return None
    return value


def _comparable(actual: Any, expected: translate.Value, field: translate.Field) -> Any:
    if field.entity == "attributes" and field.key == "status" and isinstance(expected, str):
        number = _FILTER_STATUSES.get(expected.upper())
        return STATUSES.get(number or -1, expected).removeprefix("LOGGED_MODEL_")
    if isinstance(actual, int | float) and isinstance(expected, str):
        raise invalid_parameter(f"Expected a number for {shown(field.text)}, got {expected!r}")
    return expected


def _like(value: str, pattern: str, insensitive: bool) -> bool:
    """SQL LIKE: % is any run of characters, _ any one character."""
    regex = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char) for char in pattern
    )
    flags = re.DOTALL | (re.IGNORECASE if insensitive else 0)
    return re.fullmatch(regex, value, flags) is not None


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if actual is None:
        return op == "!="
    if op in ("=", "!="):
        same = str(actual) == str(expected) if isinstance(expected, str) else actual == expected
        return same if op == "=" else not same
    if "LIKE" in op:
        matched = _like(str(actual), str(expected), op.endswith("ILIKE"))
        return not matched if op.startswith("NOT") else matched
    try:
        left = float(actual) if isinstance(expected, int | float) else str(actual)
        ordered: bool = {
            "<": left < expected,
            "<=": left <= expected,
            ">": left > expected,
            ">=": left >= expected,
        }[op]
    except (TypeError, ValueError):
        return False
    return ordered


def _evaluate(node: translate.Node, record: Mapping[str, Any]) -> bool:
    if isinstance(node, translate.Junction):
        results = (_evaluate(operand, record) for operand in node.operands)
        return all(results) if node.op == "AND" else any(results)
    if isinstance(node, translate.Negation):
        return not _evaluate(node.operand, record)
    actual = _value_of(node.field, record)
    if isinstance(node, translate.NullCheck):
        return (actual is None) == (not node.negated)
    if isinstance(node, translate.InList):
        found = any(
            _compare("=", actual, _comparable(actual, value, node.field)) for value in node.values
        )
        return found != node.negated
    return _compare(node.op, actual, _comparable(actual, node.value, node.field))


__all__ = ["LoggedModelsApi", "model_run_id"]
