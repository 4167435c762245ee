"""The OpenAPI document and /docs page: generated from the descriptors, valid, complete, and
true to what the live gateway serves."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from html.parser import HTMLParser
from typing import Any

import httpx
import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from services.gateway.bindings import Binding, all_bindings, registered_services
from services.gateway.docs import render_docs
from services.gateway.openapi import (
    OPENAPI_VERSION,
    build_openapi,
    expand_template,
    first_sentence,
    proto_comments,
    singular,
)
from services.gateway.templates import parse_template

FILTER_GRAMMAR = "Lists and searches share one filter grammar"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def bindings() -> list[Binding]:
    return all_bindings(registered_services())


@pytest.fixture(scope="module")
def document(bindings: list[Binding]) -> dict[str, Any]:
    return build_openapi(bindings)


def operation(document: dict[str, Any], operation_id: str) -> tuple[str, str, dict[str, Any]]:
    """(path, method, operation) of an operationId."""
    for path, item in document["paths"].items():
        for method, op in item.items():
            if op.get("operationId") == operation_id:
                return path, method, op
    raise AssertionError(f"no operation {operation_id}")


def schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    assert document["openapi"] == OPENAPI_VERSION == "3.1.0"
    plain = json.loads(json.dumps(document))  # plain JSON all the way down
    assert plain == document
    # The OpenAPI 3.1 meta-schema Schemathesis ships (a JSON Schema 2020-12 validator).
    errors = [f"{e.instance_path}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(plain)]
    assert errors == []
    broken = json.loads(json.dumps(document))
    broken["paths"]["/v1/experiments"]["get"]["parameters"][0]["in"] = "nowhere"
    assert not OPENAPI_31_VALIDATOR.is_valid(broken)  # the validator does look


def test_document_passes_openapi_spec_validator(document: dict[str, Any]) -> None:
    """A second, independent validator (also checks what JSON Schema cannot: path
    parameters declared for every template variable, unique operationIds...), when present:
    it is not a dependency of the project."""
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
    assert document["info"]["title"] == "Cairn API"
    assert document["info"]["version"] == "v1"


def test_every_binding_is_an_operation(document: dict[str, Any], bindings: list[Binding]) -> None:
    operations = [(path, method) for path, item in document["paths"].items() for method in item]
    assert len(operations) == len(bindings) == len(set(operations))
    for binding in bindings:
        path, _ = expand_template(binding)
        op = document["paths"][path][binding.http_method.lower()]
        assert op["x-grpc-method"] == binding.grpc_path
        assert op["tags"] == [binding.method.containing_service.name]
        assert op["operationId"].startswith(binding.method.name)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert all(set(item) <= HTTP_METHODS for item in document["paths"].values())


def test_search_runs_has_post_and_get(document: dict[str, Any]) -> None:
    item = document["paths"]["/v1/runs:search"]
    assert item["post"]["operationId"] == "SearchRuns"
    assert item["get"]["operationId"] == "SearchRuns2"
    assert item["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/cairn.tracker.v1.SearchRunsRequest"
    }
    assert "parameters" not in item["post"]  # body "*": everything is in the body
    query = {p["name"]: p for p in item["get"]["parameters"]}
    assert set(query) == {
        "experiment_ids",
        "filter",
        "order_by",
        "page_size",
        "page_token",
        "lifecycle_filter",
        "view",
    }
    assert query["experiment_ids"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert (query["experiment_ids"]["style"], query["experiment_ids"]["explode"]) == ("form", True)
    assert query["view"]["schema"] == {"$ref": "#/components/schemas/cairn.tracker.v1.RunView"}
    assert query["page_size"]["schema"] == {"type": "integer", "format": "int32"}
    assert all(p["in"] == "query" and not p["required"] for p in query.values())


def test_descriptions_carry_the_proto_comments(document: dict[str, Any]) -> None:
    comments = proto_comments()
    service_comment = comments["cairn.tracker.v1.TrackerService"]
    assert FILTER_GRAMMAR in service_comment
    assert service_comment in document["info"]["description"]
    assert (
        "params.model_type = 'xgboost' AND metrics.accuracy > 0.85"
        in (document["info"]["description"])
    )
    assert {tag["name"]: tag["description"] for tag in document["tags"]} == {
        "TrackerService": service_comment,
        "SchedulerService": comments["cairn.scheduler.v1.SchedulerService"],
        "AnalyticsService": comments["cairn.analytics.v1.AnalyticsService"],
        "LogProxyService": comments["cairn.logproxy.v1.LogProxyService"],
    }

    _, _, create = operation(document, "CreateExperiment")
    assert create["summary"] == "Creates an experiment."
    assert "ALREADY_EXISTS when the display name is taken" in create["description"]

    _, _, history = operation(document, "ListMetricHistory")
    max_points = next(p for p in history["parameters"] if p["name"] == "max_points")
    assert "spikes and the ends survive" in max_points["description"]

    run = schema(document, "cairn.tracker.v1.Run")
    assert run["description"].startswith("One execution of a training pipeline")
    assert "PUBLISH: best model" in run["properties"]["note"]["description"]
    status = schema(document, "cairn.tracker.v1.RunStatus")
    assert "QUEUED -> RUNNING | FAILED | KILLED" in status["description"]
    view = schema(document, "cairn.tracker.v1.RunView")
    assert "`RUN_VIEW_BASIC` (1): Attributes and lineage only." in view["description"]


def test_first_sentence() -> None:
    assert first_sentence('Gets a run; "experiments/-/runs/{id}" works.\nMore.') == (
        'Gets a run; "experiments/-/runs/{id}" works.'
    )
    assert first_sentence("No full stop\nacross lines") == "No full stop across lines"


def test_schemas_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    run = schema(document, "cairn.tracker.v1.Run")
    properties = run["properties"]
    assert {"runId", "experimentId", "runName", "startTime", "lifecycleState", "artifactUri"} <= (
        set(properties)
    )
    assert not [name for name in properties if "_" in name]
    assert run["additionalProperties"] is False
    assert "required" not in run  # proto3 JSON omits defaults: no response field is required
    assert properties["runId"]["readOnly"] is True
    assert "readOnly" not in properties["runName"]
    assert properties["version"] == {
        "type": "string",
        "format": "int64",
        "pattern": "^-?[0-9]{1,19}$",
        "readOnly": True,
        "description": properties["version"]["description"],
    }
    assert properties["startTime"]["type"] == "string"
    assert properties["startTime"]["format"] == "date-time"
    assert properties["status"]["$ref"] == "#/components/schemas/cairn.tracker.v1.RunStatus"
    assert properties["tags"]["additionalProperties"] == {"type": "string"}
    assert properties["metrics"]["items"] == {
        "$ref": "#/components/schemas/cairn.tracker.v1.Metric"
    }
    assert properties["lineage"]["$ref"] == "#/components/schemas/cairn.common.v1.Lineage"
    assert "Immutable" in properties["lineage"]["description"]

    value = schema(document, "cairn.tracker.v1.Metric")["properties"]["value"]
    assert value["oneOf"] == [
        {"type": "number", "format": "double"},
        {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
    ]
    status = schema(document, "cairn.tracker.v1.RunStatus")
    assert status["type"] == "string"
    assert status["enum"][0] == "RUN_STATUS_UNSPECIFIED" and "RUN_STATUS_KILLED" in status["enum"]

    purge = schema(document, "cairn.tracker.v1.PurgeDeletedRequest")["properties"]
    assert purge["olderThan"]["pattern"] == r"^-?[0-9]+(\.[0-9]+)?s$"
    upload = schema(document, "cairn.tracker.v1.TrackerService.UploadArtifactBody")
    assert upload["properties"]["chunk"]["format"] == "byte"
    assert "oneof `payload`" in upload["description"]
    # metadata.run comes from the path: left out of the body, the rest of metadata is there.
    metadata = upload["properties"]["metadata"]
    assert "run" not in metadata["properties"]
    assert metadata["properties"]["path"]["minLength"] == 1  # REQUIRED: "" is unset
    assert "required" not in metadata  # a stream's later messages carry only chunks
    assert schema(document, "google.protobuf.Empty")["additionalProperties"] is False
    status_schema = schema(document, "google.rpc.Status")
    assert set(status_schema["properties"]) == {"code", "message", "details"}
    assert status_schema["properties"]["details"]["items"]["required"] == ["@type"]

    _, _, update = operation(document, "UpdateExperiment")
    mask = next(p for p in update["parameters"] if p["name"] == "update_mask")
    assert mask["schema"]["type"] == "string"
    assert "Comma-separated field paths" in mask["description"]


def test_every_referenced_schema_exists(document: dict[str, Any]) -> None:
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    schemas = {f"#/components/schemas/{n}" for n in document["components"]["schemas"]}
    responses = {f"#/components/responses/{n}" for n in document["components"]["responses"]}
    assert refs <= schemas | responses
    # Every schema is used (no leftovers from a previous shape of the API).
    assert schemas <= refs


def test_operations_document_errors_and_streams(document: dict[str, Any]) -> None:
    for item in document["paths"].values():
        for op in item.values():
            for status in ("default", "400", "401", "404", "409", "503"):
                ref = op["responses"][status]["$ref"]
                shared = document["components"]["responses"][ref.rsplit("/", 1)[1]]
                assert shared["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/google.rpc.Status"
                }
    _, _, download = operation(document, "DownloadArtifact")
    assert set(download["responses"]["200"]["content"]) == {
        "application/x-ndjson",
        "text/event-stream",
        "application/octet-stream",
    }
    assert any(p["name"] == "alt" for p in download["parameters"])
    _, _, stream = operation(document, "StreamMetrics")
    body = stream["requestBody"]["content"]["application/json"]["schema"]
    item = {"$ref": "#/components/schemas/cairn.tracker.v1.TrackerService.StreamMetricsBody"}
    assert body == {"oneOf": [item, {"type": "array", "items": item}]}
    assert "application/octet-stream" not in stream["requestBody"]["content"]
    path, _, upload = operation(document, "UploadArtifact")
    assert path == "/v1/experiments/{experiment}/runs/{run}/artifacts:upload"
    assert set(upload["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    query = {p["name"] for p in upload["parameters"] if p["in"] == "query"}
    assert query == {
        "metadata.path",
        "metadata.artifact_type",
        "metadata.overwrite",
        "metadata.expected_sha256",
    }
    _, _, delete = operation(document, "DeleteRun")
    assert delete["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/google.protobuf.Empty"
    }


def test_request_bodies(document: dict[str, Any]) -> None:
    _, _, create = operation(document, "CreateExperiment")
    body = create["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/cairn.tracker.v1.Experiment"
    }
    # Fields bound neither by the path nor by the body are query parameters.
    assert [p["name"] for p in create["parameters"]] == ["request_id"]

    _, _, delete_tag = operation(document, "DeleteRunTag")
    tag_body = schema(document, "cairn.tracker.v1.TrackerService.DeleteRunTagBody")
    assert delete_tag["requestBody"]["required"] is True
    assert set(tag_body["properties"]) == {"key"} and tag_body["required"] == ["key"]
    restore = schema(document, "cairn.tracker.v1.TrackerService.RestoreRunBody")
    assert restore["properties"] == {}

    # body "run" with run.name in the path: the body schema is Run without name, and (an
    # update with a mask) requires nothing.
    _, _, update = operation(document, "UpdateRun")
    assert update["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/cairn.tracker.v1.TrackerService.UpdateRunBody"
    }
    update_body = schema(document, "cairn.tracker.v1.TrackerService.UpdateRunBody")
    assert "name" not in update_body["properties"] and "runName" in update_body["properties"]
    assert "required" not in update_body
    assert [p["name"] for p in update["parameters"]] == ["experiment", "run", "update_mask"]

    _, _, by_name = operation(document, "GetExperimentByName")
    (display_name,) = by_name["parameters"]
    assert display_name["required"] is True
    assert display_name["schema"] == {"type": "string", "minLength": 1}


def test_path_parameters_are_expanded(document: dict[str, Any]) -> None:
    path, method, restore = operation(document, "RestoreRun")
    assert (path, method) == ("/v1/experiments/{experiment}/runs/{run}:restore", "post")
    parameters = restore["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in parameters] == [
        ("experiment", "path", True),
        ("run", "path", True),
    ]
    assert all(p["x-proto-field"] == "name" for p in parameters)
    assert all(p["schema"] == {"type": "string", "pattern": "^[^/]+$"} for p in parameters)
    assert (
        "Path parameters `experiment`, `run` form the request field `name` = "
        "`experiments/{experiment}/runs/{run}`." in restore["description"]
    )
    path, _, update = operation(document, "UpdateExperiment")
    assert path == "/v1/experiments/{experiment}"
    assert update["parameters"][0]["x-proto-field"] == "experiment.name"
    assert operation(document, "ListRuns")[0] == "/v1/experiments/{experiment}/runs"
    assert (
        operation(document, "ListArtifacts")[0]
        == "/v1/experiments/{experiment}/runs/{run}/artifacts"
    )


def test_template_expansion_names(bindings: list[Binding]) -> None:
    base = bindings[0]

    def expand(template: str) -> tuple[str, list[str]]:
        binding = dataclasses.replace(base, template=parse_template(template))
        path, parameters = expand_template(binding)
        return path, [p.name for p in parameters]

    assert expand("/v1/{name=experiments/*/runs/*}:restore") == (
        "/v1/experiments/{experiment}/runs/{run}:restore",
        ["experiment", "run"],
    )
    # No literal before a wildcard: <field>_<n>; a plain {field}: the field's name.
    assert expand("/v1/{name=*/*}") == ("/v1/{name_1}/{name_2}", ["name_1", "name_2"])
    assert expand("/v1/items/{item_id}") == ("/v1/items/{item_id}", ["item_id"])
    assert expand("/v1/*/items/{item_id}:get") == (
        "/v1/{segment_1}/items/{item_id}:get",
        ["segment_1", "item_id"],
    )
    assert expand("/v1/{parent=entries/*}/{child=entries/*}") == (
        "/v1/entries/{entry}/entries/{entry_2}",
        ["entry", "entry_2"],
    )
    assert expand("/v1/{metadata.run=experiments/*/runs/*}/artifacts:upload")[1] == [
        "experiment",
        "run",
    ]
    assert [singular(w) for w in ("experiments", "runs", "entries", "statuses", "data")] == [
        "experiment",
        "run",
        "entry",
        "status",
        "data",
    ]


def test_docs_page_escapes_and_lists_everything(document: dict[str, Any]) -> None:
    page = render_docs(document)
    check_html(page, document)


class _StrictParser(HTMLParser):
    """Tracks open elements: every non-void element must be closed, in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.append(str(values["id"]))
        if values.get("href"):
            self.hrefs.append(str(values["href"]))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_html(page: str, document: dict[str, Any]) -> None:
    assert page.startswith("<!DOCTYPE html>")
    parser = _StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids"
    anchors = {f"#{i}" for i in parser.ids}
    internal = [h for h in parser.hrefs if h.startswith("#")]
    assert internal and set(internal) <= anchors, set(internal) - anchors
    assert not [h for h in parser.hrefs if h.startswith(("http:", "https:", "//"))]
    assert "<script" not in page
    text = "".join(parser.text)
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert f"op-{op['operationId']}" in parser.ids
            assert op["summary"] in text
            assert path in text and method.upper() in text
    for name in document["components"]["schemas"]:
        assert f"schema-{name}" in parser.ids
    # The filter grammar's "params.<key>" comes from a proto comment: escaped, shown as text.
    assert "params.&lt;key&gt;" in page and "params.<key>" not in page
    assert "`params.<key>`" not in text and "params.<key>" in text


def test_escaping_of_hostile_descriptions(document: dict[str, Any]) -> None:
    hostile = json.loads(json.dumps(document))
    hostile["info"]["description"] = "<script>alert(1)</script> & `<b>`"
    hostile["components"]["schemas"]["cairn.tracker.v1.Run"]["description"] = '"><img src=x>'
    page = render_docs(hostile)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in page
    assert "<code>&lt;b&gt;</code>" in page
    assert "<img src=x>" not in page
    check_html(page, hostile)


# ------------------------------------------------------------------------------ live gateway


def test_gateway_serves_the_document_and_docs(gateway_url: str, document: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        served = client.get("/openapi.json")
        assert served.status_code == 200
        assert served.headers["content-type"].startswith("application/json")
        assert served.json() == document
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")
        check_html(docs.text, document)


def fill(path: str, **values: str) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


def test_expanded_paths_reach_the_resources(gateway_url: str, document: dict[str, Any]) -> None:
    """Filling {experiment} and {run} in the documented paths gives URLs the gateway serves."""
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        create_path, _, _ = operation(document, "CreateExperiment")
        created = client.post(create_path, json={"displayName": f"oa-{uuid.uuid4().hex[:8]}"})
        assert created.status_code == 200, created.text
        experiment = created.json()
        experiment_id = experiment["experimentId"]
        assert experiment["name"] == f"experiments/{experiment_id}"

        get_path, _, _ = operation(document, "GetExperiment")
        fetched = client.get(fill(get_path, experiment=experiment_id))
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["name"] == experiment["name"]

        run_path, _, _ = operation(document, "CreateRun")
        made = client.post(fill(run_path, experiment=experiment_id), json={"runName": "r1"})
        assert made.status_code == 200, made.text
        run = made.json()
        assert run["name"] == f"experiments/{experiment_id}/runs/{run['runId']}"
        ids = {"experiment": experiment_id, "run": run["runId"]}

        get_run, _, _ = operation(document, "GetRun")
        got = client.get(fill(get_run, **ids), params={"view": "RUN_VIEW_BASIC"})
        assert got.status_code == 200 and got.json()["runId"] == run["runId"], got.text
        # The "-" wildcard of the run's name works through the same parameter.
        anywhere = client.get(fill(get_run, experiment="-", run=run["runId"]))
        assert anywhere.status_code == 200 and anywhere.json()["name"] == run["name"]

        log_path, _, _ = operation(document, "LogParams")
        logged = client.post(fill(log_path, **ids), json={"params": {"lr": "0.1"}})
        assert logged.status_code == 200 and logged.json() == {"newParamCount": 1}, logged.text

        delete_path, method, _ = operation(document, "DeleteRun")
        assert method == "delete"
        deleted = client.delete(fill(delete_path, **ids))
        assert deleted.status_code == 200 and deleted.json() == {}, deleted.text
        restore_path, _, _ = operation(document, "RestoreRun")
        assert restore_path.endswith(":restore")
        restored = client.post(fill(restore_path, **ids), json={})
        assert restored.status_code == 200, restored.text
        assert restored.json()["lifecycleState"] == "LIFECYCLE_STATE_ACTIVE"

        list_path, _, _ = operation(document, "ListArtifacts")
        listed = client.get(fill(list_path, **ids))
        assert listed.status_code == 200 and listed.json() == {}, listed.text
        search_path, _, _ = operation(document, "SearchRuns2")
        found = client.get(
            search_path, params={"experiment_ids": [experiment_id], "filter": "params.lr = '0.1'"}
        )
        assert found.status_code == 200, found.text
        assert [r["runId"] for r in found.json()["runs"]] == [run["runId"]]
        missing = client.get(fill(get_run, experiment=experiment_id, run="nope"))
        assert missing.status_code == 404
        assert missing.json()["code"] == 5


def item_validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema validator for one documented schema, its $refs resolved in the document."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def test_streamed_download_matches_the_document(gateway_url: str, document: dict[str, Any]) -> None:
    """Each NDJSON line and each server-sent event is one documented item; alt=media is the
    raw content."""
    path, _, download = operation(document, "DownloadArtifact")
    content = download["responses"]["200"]["content"]
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        experiment = client.post("/v1/experiments", json={"displayName": "streams"}).json()
        run = client.post(f"/v1/{experiment['name']}/runs", json={}).json()
        data = bytes(range(256)) * 8192  # 2 MiB: more than one chunk message
        uploaded = client.post(
            f"/v1/{run['name']}/artifacts:upload",
            params={"metadata.path": "blob.bin", "metadata.artifact_type": "ARTIFACT_TYPE_DATA"},
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        assert uploaded.status_code == 200, uploaded.text
        url = fill(path, experiment=experiment["experimentId"], run=run["runId"])

        ndjson = client.get(url, params={"path": "blob.bin"})
        assert ndjson.status_code == 200, ndjson.text
        assert ndjson.headers["content-type"].startswith("application/x-ndjson")
        line_schema = item_validator(document, content["application/x-ndjson"]["schema"])
        lines = [json.loads(line) for line in ndjson.text.splitlines() if line]
        for line in lines:
            line_schema.validate(line)
        assert lines[0]["artifact"]["sizeBytes"] == str(len(data))  # int64 as a string
        assert b"".join(base64.b64decode(line["chunk"]) for line in lines[1:]) == data

        sse = client.get(url, params={"path": "blob.bin"}, headers={"accept": "text/event-stream"})
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        event_schema = item_validator(document, content["text/event-stream"]["schema"])
        events = [
            {"event": "message", "data": block.removeprefix("data: ")}
            for block in sse.text.split("\n\n")
            if block
        ]
        for event in events:
            event_schema.validate(event)
            # contentSchema is an annotation in JSON Schema: check the data against it too.
            item_validator(document, content["application/x-ndjson"]["schema"]).validate(
                json.loads(event["data"])
            )
        assert len(events) == len(lines)

        media = client.get(url, params={"path": "blob.bin", "alt": "media"})
        assert media.status_code == 200
        assert media.headers["content-type"] == "application/octet-stream"
        assert media.content == data

        missing = client.get(url, params={"path": "nope.bin"})
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        item_validator(document, {"$ref": "#/components/schemas/google.rpc.Status"}).validate(
            missing.json()
        )


def example_value(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    """A valid value for a documented query parameter schema."""
    ref = schema.get("$ref")
    if ref:
        return example_value(document["components"]["schemas"][ref.rsplit("/", 1)[1]], document)
    if "enum" in schema:
        return schema["enum"][-1]
    if schema.get("type") == "array":
        return [example_value(schema["items"], document)]
    if "oneOf" in schema:
        return example_value(schema["oneOf"][0], document)
    return {
        "integer": "1",
        "number": "1.5",
        "boolean": "true",
    }.get(
        schema.get("type", ""),
        {"int64": "1", "uint64": "1", "date-time": "2024-01-01T00:00:00Z"}.get(
            schema.get("format", ""), "1s" if "pattern" in schema else "x"
        ),
    )


def test_every_documented_query_parameter_is_accepted(
    gateway_url: str, document: dict[str, Any]
) -> None:
    """The transcoder knows every query parameter the document lists (under the documented
    name), for every operation: none is refused as unknown."""
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        experiment = client.post("/v1/experiments", json={"displayName": "query"}).json()
        run = client.post(f"/v1/{experiment['name']}/runs", json={}).json()
        # A job id that names no job: the parameters are checked before the lookup.
        ids = {
            "experiment": experiment["experimentId"],
            "run": run["runId"],
            "job": "0123456789abcdef",
        }
        checked = 0
        for path, item in document["paths"].items():
            for method, op in item.items():
                query = [p for p in op.get("parameters", []) if p["in"] == "query"]
                for parameter in query:
                    value = example_value(parameter["schema"], document)
                    raw = "octet-stream" in parameter.get("description", "")
                    response = client.request(
                        method.upper(),
                        fill(path, **ids),
                        params={parameter["name"]: value},
                        content=b"data" if raw else (b"{}" if "requestBody" in op else None),
                        headers={
                            "content-type": "application/octet-stream"
                            if raw
                            else "application/json"
                        },
                    )
                    message = (
                        response.json().get("message", "") if response.status_code >= 400 else ""
                    )
                    assert "unknown query parameter" not in message, (op["operationId"], message)
                    # The example values are valid: no parameter may be refused.
                    assert "query parameter" not in message, (op["operationId"], message)
                    checked += 1
        assert checked >= 30
