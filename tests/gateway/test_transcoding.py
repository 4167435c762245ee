"""The REST/JSON gateway in front of a real tracker: every google.api.http feature the tracker
protos use, with httpx against the live gateway, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from starlette.applications import Starlette

from cairn.tracker.v1 import artifact_pb2, experiment_pb2, tracker_service_pb2
from services.gateway import transcoding
from services.gateway.backends import Backends
from services.gateway.bindings import Binding, all_bindings, registered_services
from services.gateway.server import HttpService
from services.gateway.templates import parse_template

from cairn_testing import ServerThread, make_settings

MiB = 1 << 20
SSE = "text/event-stream"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


# =====================================================================================
# Helpers
# =====================================================================================


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=20) as http:
        yield http


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def expect_error(
    response: httpx.Response, http_status: int, code: int, reason: str | None = None
) -> dict[str, Any]:
    """Assert a google.rpc.Status error body; returns it with its one ErrorInfo as "info"."""
    assert response.status_code == http_status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) <= {"code", "message", "details"}, body
    assert body["code"] == code, body
    assert body["message"]
    assert "Traceback" not in response.text
    infos = [d for d in body.get("details", []) if d["@type"] == ERROR_INFO]
    assert len(infos) == 1, body
    assert infos[0]["domain"] == "cairn.dev"
    if reason is not None:
        assert infos[0]["reason"] == reason, body
    return {**body, "info": infos[0]}


def create_experiment(http: httpx.Client, display_name: str | None = None, **fields: Any) -> Any:
    body = {"displayName": display_name or unique("exp"), **fields}
    return ok(http.post("/v1/experiments", json=body))


def create_run(http: httpx.Client, experiment: dict[str, Any], **fields: Any) -> Any:
    return ok(http.post(f"/v1/{experiment['name']}/runs", json=fields))


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event name, parsed data) of each server-sent event."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, json.loads("\n".join(data))))
    return events


def start_gateway(settings: Any) -> ServerThread:
    return ServerThread(
        settings, ("tracker", "scheduler", "analytics", "logproxy", "gateway")
    ).start()


# =====================================================================================
# Standard methods: experiments and runs
# =====================================================================================


def test_experiment_create_get_list_update_delete_restore(client: httpx.Client) -> None:
    experiment = create_experiment(client, description="first", tags={"team": "recs"})
    name, experiment_id = experiment["name"], experiment["experimentId"]
    assert name == f"experiments/{experiment_id}"
    # lowerCamel names in responses, enums by name, timestamps RFC 3339, defaults omitted.
    assert experiment["displayName"].startswith("exp-")
    assert experiment["lifecycleState"] == "LIFECYCLE_STATE_ACTIVE"
    assert experiment["createTime"].endswith("Z")
    assert experiment["tags"] == {"team": "recs"}
    assert "runCount" not in experiment

    assert ok(client.get(f"/v1/{name}")) == experiment
    # Paths match per http.proto: a resource name sent as one percent-encoded segment is ONE
    # segment, which {name=experiments/*} (two segments) does not match; an encoded ":" is
    # data, not a custom verb.
    expect_error(client.get(f"/v1/experiments%2F{experiment_id}"), 404, 5, "ROUTE_NOT_FOUND")
    response = client.post(f"/v1/experiments/{experiment_id}%3Arestore", json={})
    expect_error(response, 405, 12, "METHOD_NOT_ALLOWED")  # {name=experiments/*} has no POST
    by_name = client.get(
        "/v1/experiments:byName", params={"display_name": experiment["displayName"]}
    )
    assert ok(by_name)["name"] == name
    by_camel = client.get(
        "/v1/experiments:byName", params={"displayName": experiment["displayName"]}
    )
    assert ok(by_camel)["name"] == name

    listed = ok(
        client.get(
            "/v1/experiments",
            params={"filter": f"display_name = '{experiment['displayName']}'", "pageSize": "5"},
        )
    )
    assert [e["name"] for e in listed["experiments"]] == [name]

    # PATCH: the body is the `experiment` field, the mask a query parameter in either
    # spelling, with paths in either spelling.
    updated = ok(
        client.patch(
            f"/v1/{name}",
            params={"updateMask": "description"},
            json={"description": "second", "displayName": "ignored-by-mask"},
        )
    )
    assert updated["description"] == "second"
    assert updated["displayName"] == experiment["displayName"]
    renamed = unique("renamed")
    updated = ok(
        client.patch(
            f"/v1/{name}",
            params={"update_mask": "display_name,tags"},
            json={"displayName": renamed, "tags": {"stage": "2"}},
        )
    )
    assert (updated["displayName"], updated["tags"]) == (renamed, {"stage": "2"})
    updated = ok(
        client.patch(
            f"/v1/{name}",
            params=[("updateMask", "displayName")],
            json={"displayName": renamed + "x"},
        )
    )
    assert updated["displayName"] == renamed + "x"

    # Delete returns Empty ({}); the experiment is then DELETED and restorable.
    assert ok(client.delete(f"/v1/{name}")) == {}
    assert ok(client.get(f"/v1/{name}"))["lifecycleState"] == "LIFECYCLE_STATE_DELETED"
    restored = ok(client.post(f"/v1/{name}:restore"))  # body "*", empty body
    assert restored["lifecycleState"] == "LIFECYCLE_STATE_ACTIVE"
    ok(client.delete(f"/v1/{name}"))
    # A body that repeats the path variable must agree with it.
    restored = ok(client.post(f"/v1/{name}:restore", json={"name": name}))
    assert restored["lifecycleState"] == "LIFECYCLE_STATE_ACTIVE"
    error = expect_error(
        client.post(f"/v1/{name}:restore", json={"name": "experiments/other"}), 400, 3
    )
    assert error["info"]["metadata"]["field"] == "name"


def test_list_pagination_and_lifecycle_filter(client: httpx.Client) -> None:
    prefix = unique("page")
    names = [create_experiment(client, f"{prefix}-{i}")["name"] for i in range(3)]
    seen: list[str] = []
    token = ""
    while True:
        params = {"filter": f"display_name LIKE '{prefix}-%'", "page_size": 2}
        if token:
            params["pageToken"] = token
        page = ok(client.get("/v1/experiments", params=params))
        seen += [e["name"] for e in page["experiments"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert sorted(seen) == sorted(names)
    ok(client.delete(f"/v1/{names[0]}"))
    deleted = ok(
        client.get(
            "/v1/experiments",
            params={
                "filter": f"display_name LIKE '{prefix}-%'",
                "lifecycleFilter": "LIFECYCLE_FILTER_DELETED_ONLY",
            },
        )
    )
    assert [e["name"] for e in deleted["experiments"]] == [names[0]]
    # Enums by number work too.
    deleted = ok(
        client.get(
            "/v1/experiments",
            params={"filter": f"display_name LIKE '{prefix}-%'", "lifecycle_filter": "2"},
        )
    )
    assert [e["name"] for e in deleted["experiments"]] == [names[0]]


def test_run_create_get_update_delete_restore(client: httpx.Client) -> None:
    experiment = create_experiment(client)
    run = create_run(client, experiment, runName="baseline", tags={"k": "v"}, note="hello")
    assert run["name"].startswith(experiment["name"] + "/runs/")
    assert run["status"] == "RUN_STATUS_RUNNING"

    # experiments/-/runs/{id} finds a run without its experiment id.
    found = ok(client.get(f"/v1/experiments/-/runs/{run['runId']}"))
    assert found["name"] == run["name"]
    basic = ok(client.get(f"/v1/{run['name']}", params={"view": "RUN_VIEW_BASIC"}))
    assert basic["runName"] == "baseline"
    ok(client.get(f"/v1/{run['name']}", params={"view": "1"}))  # enum by number

    listed = ok(client.get(f"/v1/{experiment['name']}/runs", params={"orderBy": "start_time DESC"}))
    assert [r["name"] for r in listed["runs"]] == [run["name"]]

    updated = ok(
        client.patch(
            f"/v1/{run['name']}",
            params={"update_mask": "run_name,note"},
            json={"runName": "renamed", "note": "n2", "status": "RUN_STATUS_KILLED"},
        )
    )
    assert (updated["runName"], updated["note"], updated["status"]) == (
        "renamed",
        "n2",
        "RUN_STATUS_RUNNING",
    )
    finished = ok(
        client.patch(
            f"/v1/{run['name']}",
            params={"updateMask": "status"},
            json={"status": "RUN_STATUS_FINISHED"},
        )
    )
    assert finished["status"] == "RUN_STATUS_FINISHED"
    assert "endTime" in finished
    # A status transition the lifecycle forbids: FAILED_PRECONDITION is HTTP 400.
    error = expect_error(
        client.patch(
            f"/v1/{run['name']}",
            params={"updateMask": "status"},
            json={"status": "RUN_STATUS_QUEUED"},
        ),
        400,
        9,
        "INVALID_STATUS_TRANSITION",
    )
    assert "QUEUED" in error["message"]

    assert ok(client.delete(f"/v1/{run['name']}")) == {}
    assert ok(client.get(f"/v1/{run['name']}"))["lifecycleState"] == "LIFECYCLE_STATE_DELETED"
    restored = ok(client.post(f"/v1/{run['name']}:restore", json={}))
    assert restored["lifecycleState"] == "LIFECYCLE_STATE_ACTIVE"


# =====================================================================================
# Custom verbs, additional bindings, repeated and nested query parameters
# =====================================================================================


def test_search_runs_by_post_body_and_by_get_query(client: httpx.Client) -> None:
    first, second, other = (create_experiment(client) for _ in range(3))
    runs = {}
    for experiment, model, accuracy in (
        (first, "xgb boost", 0.9),
        (second, "xgb boost", 0.95),
        (second, "linear", 0.99),
        (other, "xgb boost", 0.97),
    ):
        run = create_run(client, experiment, runName=unique("run"))
        ok(client.post(f"/v1/{run['name']}:logParams", json={"params": {"model": model}}))
        ok(
            client.post(
                f"/v1/{run['name']}:logMetrics",
                json={"metrics": [{"key": "acc", "value": accuracy}]},
            )
        )
        runs[run["name"]] = (experiment["experimentId"], model, accuracy)
    wanted = {
        name
        for name, (exp_id, model, _) in runs.items()
        if exp_id in (first["experimentId"], second["experimentId"]) and model == "xgb boost"
    }
    assert len(wanted) == 2
    search_filter = "params.model = 'xgb boost' AND metrics.acc > 0.5"

    by_post = ok(
        client.post(
            "/v1/runs:search",
            json={
                "experimentIds": [first["experimentId"], second["experimentId"]],
                "filter": search_filter,
                "orderBy": "metrics.acc DESC",
                "view": "RUN_VIEW_FULL",
                "pageSize": 10,
            },
        )
    )
    accuracy_of = {name: acc for name, (_, _, acc) in runs.items()}
    assert [r["name"] for r in by_post["runs"]] == sorted(wanted, key=lambda n: -accuracy_of[n])
    assert all(r["params"] == {"model": "xgb boost"} for r in by_post["runs"])

    by_get = client.get(
        "/v1/runs:search",
        params=[
            ("experiment_ids", first["experimentId"]),
            ("experimentIds", second["experimentId"]),
            ("filter", search_filter),
            ("order_by", "metrics.acc DESC"),
            ("view", "RUN_VIEW_BASIC"),
        ],
    )
    # Spaces, quotes and '>' travel percent-encoded.
    assert "%27xgb%20boost%27" in str(by_get.request.url) or "%27xgb+boost%27" in str(
        by_get.request.url
    )
    got = ok(by_get)
    assert [r["name"] for r in got["runs"]] == [r["name"] for r in by_post["runs"]]
    assert all("params" not in r for r in got["runs"])  # BASIC view

    # A comma is not a separator for repeated parameters: "a,b" is one (unknown) id.
    joined = client.get(
        "/v1/runs:search",
        params={"experiment_ids": f"{first['experimentId']},{second['experimentId']}"},
    )
    assert joined.status_code != 200 or not ok(joined).get("runs")


def test_params_metrics_tags_custom_verbs(client: httpx.Client) -> None:
    run = create_run(client, create_experiment(client))
    name = run["name"]
    assert ok(
        client.post(f"/v1/{name}:logParams", json={"params": {"lr": "0.1", "depth": "6"}})
    ) == {"newParamCount": 2}
    # Logging the same values again stores nothing new (proto3 JSON omits the zero).
    assert ok(client.post(f"/v1/{name}:logParams", json={"params": {"lr": "0.1"}})) == {}
    error = expect_error(
        client.post(f"/v1/{name}:logParams", json={"params": {"lr": "0.2"}}), 409, 6
    )
    assert "lr" in error["message"]

    points = [{"key": "loss", "value": 1.0 / (step + 1), "step": str(step)} for step in range(50)]
    logged = ok(client.post(f"/v1/{name}:logMetrics", json={"batchId": "b-1", "metrics": points}))
    assert logged == {"storedPointCount": "50"}  # int64 as a string
    again = ok(client.post(f"/v1/{name}:logMetrics", json={"batch_id": "b-1", "metrics": points}))
    assert again == {"duplicate": True}

    history = ok(client.get(f"/v1/{name}:metricHistory", params={"metricKey": "loss"}))
    assert [int(p.get("step", 0)) for p in history["points"]] == list(range(50))
    assert history["totalPointCount"] == "50"
    thinned = ok(
        client.get(f"/v1/{name}:metricHistory", params={"metric_key": "loss", "max_points": 8})
    )
    assert thinned["downsampled"] is True
    assert 2 <= len(thinned["points"]) <= 8
    steps = [int(p.get("step", 0)) for p in thinned["points"]]
    assert steps[0] == 0 and steps[-1] == 49  # the ends survive
    ranged = ok(
        client.get(
            f"/v1/{name}:metricHistory",
            params={"metricKey": "loss", "startStep": "10", "end_step": 12},
        )
    )
    assert [int(p["step"]) for p in ranged["points"]] == [10, 11, 12]

    assert ok(client.post(f"/v1/{name}:setTags", json={"tags": {"a": "1", "b": "2"}})) == {}
    assert ok(client.get(f"/v1/{name}"))["tags"] == {"a": "1", "b": "2"}
    assert ok(client.post(f"/v1/{name}:deleteTag", json={"key": "a"})) == {}
    assert ok(client.get(f"/v1/{name}"))["tags"] == {"b": "2"}
    expect_error(client.post(f"/v1/{name}:deleteTag", json={"key": "a"}), 404, 5)


def test_stream_metrics_json_array_and_single_message(client: httpx.Client) -> None:
    run = create_run(client, create_experiment(client))
    name = run["name"]
    batches = [
        {
            "batchId": f"epoch-{epoch}",
            "metrics": [
                {"key": "loss", "value": 1.0 / (epoch + 1), "step": epoch},
                {"key": "acc", "value": epoch / 10, "step": epoch},
            ],
        }
        for epoch in range(5)
    ]
    result = ok(client.post(f"/v1/{name}:streamMetrics", json=batches))
    assert result == {"batchCount": "5", "storedPointCount": "10"}
    # Resending is deduplicated by batch id; one object is a stream of one.
    again = ok(client.post(f"/v1/{name}:streamMetrics", json=batches[0]))
    assert again == {"batchCount": "1", "duplicateBatchCount": "1"}
    # The path variable applies to every message, and a disagreeing `run` is refused.
    error = expect_error(
        client.post(
            f"/v1/{name}:streamMetrics", json=[{"run": "experiments/x/runs/y", "metrics": []}]
        ),
        400,
        3,
    )
    assert error["info"]["metadata"]["field"] == "run"
    error = expect_error(
        client.post(f"/v1/{name}:streamMetrics", json=[batches[0], {"metrics": "nope"}]),
        400,
        3,
    )
    assert "[1].metrics" in error["message"]
    history = ok(client.get(f"/v1/{name}:metricHistory", params={"metricKey": "acc"}))
    assert len(history["points"]) == 5
    # The columnar form of a batch, as JSON arrays.
    columnar = {
        "batchId": "columns-0",
        "columns": {
            "keys": ["acc", "lr"],
            "keyIndexes": [0, 1, 1],
            "steps": ["5", 5, 6],
            "values": [0.6, 0.01, "NaN"],
            "timestampMs": ["1700000000000", 0, 0],
        },
    }
    assert ok(client.post(f"/v1/{name}:streamMetrics", json=[columnar])) == {
        "batchCount": "1",
        "storedPointCount": "3",
    }
    history = ok(client.get(f"/v1/{name}:metricHistory", params={"metricKey": "lr"}))
    assert [(p["step"], p["value"]) for p in history["points"]] == [("5", 0.01), ("6", "NaN")]
    history = ok(client.get(f"/v1/{name}:metricHistory", params={"metricKey": "acc"}))
    assert history["points"][-1]["timestamp"] == "2023-11-14T22:13:20Z"


# =====================================================================================
# Artifacts: raw and JSON uploads; NDJSON, SSE and alt=media downloads
# =====================================================================================


def test_raw_upload_and_three_download_forms(client: httpx.Client) -> None:
    run = create_run(client, create_experiment(client))
    name = run["name"]
    data = os.urandom(3 * MiB + 123)
    digest = hashlib.sha256(data).hexdigest()

    def body() -> Iterator[bytes]:  # a streamed request body, sent in odd-sized pieces
        for start in range(0, len(data), 300_000):
            yield data[start : start + 300_000]

    artifact = ok(
        client.post(
            f"/v1/{name}/artifacts:upload",
            params={
                "metadata.path": "models/m.pkl",
                "metadata.artifactType": "ARTIFACT_TYPE_MODEL",
            },
            content=body(),
            headers={"content-type": "application/octet-stream"},
        )
    )
    assert artifact["run"] == name
    assert artifact["path"] == "models/m.pkl"
    assert artifact["artifactType"] == "ARTIFACT_TYPE_MODEL"
    assert artifact["sizeBytes"] == str(len(data))
    assert artifact["sha256"] == digest
    listed = ok(client.get(f"/v1/{name}/artifacts"))
    assert [a["path"] for a in listed["artifacts"]] == ["models/m.pkl"]

    # alt=media: the raw bytes, byte-identical.
    media = client.get(
        f"/v1/{name}/artifacts:download", params={"path": "models/m.pkl", "alt": "media"}
    )
    assert media.status_code == 200
    assert media.headers["content-type"] == "application/octet-stream"
    assert media.headers["content-length"] == str(len(data))
    assert media.headers["x-cairn-sha256"] == digest
    assert (
        media.headers["content-disposition"]
        == "attachment; filename=\"m.pkl\"; filename*=UTF-8''m.pkl"
    )
    assert media.headers["x-request-id"]
    assert media.content == data

    # NDJSON (the default for a server stream): the artifact, then base64 chunks.
    ndjson = client.get(f"/v1/{name}/artifacts:download", params={"path": "models/m.pkl"})
    assert ndjson.status_code == 200
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert lines[0]["artifact"]["sha256"] == digest
    assert b"".join(base64.b64decode(line["chunk"]) for line in lines[1:]) == data
    assert len(lines) > 2

    # Server-sent events when asked for.
    sse = client.get(
        f"/v1/{name}/artifacts:download",
        params={"path": "models/m.pkl"},
        headers={"accept": "text/event-stream"},
    )
    assert sse.status_code == 200
    assert sse.headers["content-type"].startswith("text/event-stream")
    events = sse_events(sse.text)
    assert {event for event, _ in events} == {"message"}
    assert events[0][1]["artifact"]["path"] == "models/m.pkl"
    assert b"".join(base64.b64decode(d["chunk"]) for _, d in events[1:]) == data

    # Same content again is idempotent; different content without overwrite is 409.
    same = client.post(
        f"/v1/{name}/artifacts:upload",
        params={"metadata.path": "models/m.pkl"},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert ok(same)["sha256"] == digest
    expect_error(
        client.post(
            f"/v1/{name}/artifacts:upload",
            params={"metadata.path": "models/m.pkl"},
            content=b"other",
            headers={"content-type": "application/octet-stream"},
        ),
        409,
        6,
    )
    replaced = client.post(
        f"/v1/{name}/artifacts:upload",
        params={"metadata.path": "models/m.pkl", "metadata.overwrite": "true"},
        content=b"other",
        headers={"content-type": "application/zip"},
    )
    assert ok(replaced)["sizeBytes"] == "5"
    # A digest mismatch aborts the upload: DATA_LOSS is HTTP 500.
    expect_error(
        client.post(
            f"/v1/{name}/artifacts:upload",
            params={"metadata.path": "x.bin", "metadata.expected_sha256": "0" * 64},
            content=b"abc",
            headers={"content-type": "application/octet-stream"},
        ),
        500,
        15,
    )
    # Raw uploads take header fields from the query; others are refused by name.
    error = expect_error(
        client.post(
            f"/v1/{name}/artifacts:upload",
            params={"metadata.path": "y", "chunk": "x"},
            content=b"abc",
            headers={"content-type": "application/octet-stream"},
        ),
        400,
        3,
    )
    assert error["info"]["metadata"]["field"] == "chunk"


def test_json_upload_and_download_errors_before_the_first_byte(client: httpx.Client) -> None:
    run = create_run(client, create_experiment(client))
    name = run["name"]
    content = b"report line\n" * 1000
    messages = [
        {"metadata": {"path": "reports/r.txt", "artifactType": "ARTIFACT_TYPE_REPORT"}},
        {"chunk": base64.b64encode(content[:5000]).decode()},
        {"chunk": base64.b64encode(content[5000:]).decode()},
    ]
    artifact = ok(client.post(f"/v1/{name}/artifacts:upload", json=messages))
    assert artifact["sizeBytes"] == str(len(content))
    assert artifact["artifactType"] == "ARTIFACT_TYPE_REPORT"
    media = client.get(
        f"/v1/{name}/artifacts:download", params={"path": "reports/r.txt", "alt": "media"}
    )
    assert media.content == content

    # Errors before the first message are ordinary JSON errors, in every format.
    for extra in ({"alt": "media"}, {}):
        for accept in ("*/*", "text/event-stream"):
            response = client.get(
                f"/v1/{name}/artifacts:download",
                params={"path": "reports/nope.txt", **extra},
                headers={"accept": accept},
            )
            expect_error(response, 404, 5, "ARTIFACT_NOT_FOUND")
    expect_error(
        client.get(
            "/v1/experiments/-/runs/nope/artifacts:download", params={"path": "a", "alt": "media"}
        ),
        404,
        5,
    )
    # alt is only json or media, and media only where bytes stream.
    expect_error(
        client.get(
            f"/v1/{name}/artifacts:download", params={"path": "reports/r.txt", "alt": "xml"}
        ),
        400,
        3,
    )
    error = expect_error(client.get(f"/v1/{name}", params={"alt": "media"}), 400, 3)
    assert error["info"]["metadata"]["field"] == "alt"


# =====================================================================================
# Errors: the gateway's own and the tracker's
# =====================================================================================


def test_request_errors_name_the_field(client: httpx.Client) -> None:
    json_headers = {"content-type": "application/json"}
    error = expect_error(
        client.post("/v1/experiments", content=b'{"displayName": "x",', headers=json_headers),
        400,
        3,
        "INVALID_ARGUMENT",
    )
    assert error["message"].startswith("invalid request body: malformed JSON")
    error = expect_error(client.post("/v1/experiments", json={"displayName": 7}), 400, 3)
    assert "field 'displayName'" in error["message"]
    assert error["info"]["metadata"]["field"] == "displayName"
    error = expect_error(client.post("/v1/experiments", json={"displayNam": "x"}), 400, 3)
    assert "field 'displayNam'" in error["message"] and "unknown field" in error["message"]
    error = expect_error(client.post("/v1/runs:search", json={"pageSize": "ten"}), 400, 3)
    assert "field 'pageSize'" in error["message"]
    error = expect_error(client.post("/v1/runs:search", json={"view": "RUN_VIEW_HUGE"}), 400, 3)
    assert "view" in error["message"]
    error = expect_error(client.post("/v1/runs:search", json=["not", "an", "object"]), 400, 3)
    assert "expected a JSON object" in error["message"]
    error = expect_error(client.post("/v1/experiments", json=5), 400, 3)
    assert "expected a JSON object for 'experiment', got number" in error["message"]
    deep = b'{"filter": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = expect_error(client.post("/v1/runs:search", content=deep, headers=json_headers), 400, 3)
    assert "nested too deeply" in error["message"]
    run = create_run(client, create_experiment(client))
    error = expect_error(
        client.post(
            f"/v1/{run['name']}:logMetrics",
            json={"metrics": [{"key": "a", "value": 1}, {"key": "b", "value": "x"}]},
        ),
        400,
        3,
    )
    assert "metrics[1].value" in error["message"]

    error = expect_error(client.get("/v1/experiments", params={"pageSize": "ten"}), 400, 3)
    assert "'pageSize'" in error["message"]
    error = expect_error(client.get("/v1/experiments", params={"colour": "red"}), 400, 3)
    assert "unknown query parameter 'colour'" in error["message"]
    assert error["info"]["metadata"]["field"] == "colour"
    error = expect_error(
        client.get("/v1/experiments", params=[("pageSize", 1), ("pageSize", 2)]), 400, 3
    )
    assert "pageSize" in error["message"]
    # A body "*" binding has no query parameters; a path-bound field is not one either.
    error = expect_error(client.post("/v1/runs:search", params={"filter": "x"}, json={}), 400, 3)
    assert "'filter'" in error["message"]
    error = expect_error(client.get(f"/v1/{run['name']}", params={"name": "x"}), 400, 3)
    assert "URL path" in error["message"]
    expect_error(client.get(f"/v1/{run['name']}", params={"view": "WIDE"}), 400, 3)

    error = expect_error(
        client.post(
            "/v1/experiments",
            content=b"displayName=x",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
        3,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    assert "application/json" in error["message"]
    # An empty body on a body binding is an empty message (the tracker then says what's
    # missing).
    error = expect_error(client.post("/v1/experiments"), 400, 3)
    assert "display_name" in error["message"] or "displayName" in error["message"]


def test_routing_errors(client: httpx.Client) -> None:
    error = expect_error(client.get("/v2/nothing/here"), 404, 5, "ROUTE_NOT_FOUND")
    assert error["message"] == "no route for GET /v2/nothing/here"
    response = client.put("/v1/experiments", json={})
    expect_error(response, 405, 12, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "GET, HEAD, POST"
    experiment = create_experiment(client)
    response = client.post(f"/v1/{experiment['name']}", json={})
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"DELETE", "GET", "HEAD", "PATCH"}


def test_tracker_errors_map_to_http(client: httpx.Client) -> None:
    error = expect_error(
        client.get("/v1/experiments/-/runs/0123456789abcdef"), 404, 5, "RUN_NOT_FOUND"
    )
    assert "0123456789abcdef" in error["message"]
    experiment = create_experiment(client)
    error = expect_error(
        client.post("/v1/experiments", json={"displayName": experiment["displayName"]}),
        409,
        6,
        "EXPERIMENT_EXISTS",
    )
    assert error["info"]["metadata"]["display_name"] == experiment["displayName"]


def test_request_id_passes_through_to_the_tracker_and_back(client: httpx.Client) -> None:
    supplied = f"client-{uuid.uuid4().hex}"
    response = client.get("/v1/experiments/-/runs/missing", headers={"X-Request-Id": supplied})
    error = expect_error(response, 404, 5)
    assert response.headers["x-request-id"] == supplied
    assert error["info"]["metadata"]["request_id"] == supplied  # the tracker saw it
    response = client.get("/v1/experiments", headers={"x-request-id": supplied})
    assert ok(response) is not None and response.headers["x-request-id"] == supplied

    # Without one (or with an unusable one), the gateway makes one and both sides use it.
    response = client.get("/v1/experiments/-/runs/missing")
    made = response.headers["x-request-id"]
    assert made and expect_error(response, 404, 5)["info"]["metadata"]["request_id"] == made
    response = client.get("/v1/experiments/-/runs/missing", headers={"x-request-id": "x" * 500})
    assert response.headers["x-request-id"] != "x" * 500
    # Gateway-side errors carry one too, in the header and in their ErrorInfo.
    response = client.get(
        "/v1/experiments", params={"bad": "1"}, headers={"x-request-id": supplied}
    )
    assert response.headers["x-request-id"] == supplied
    assert expect_error(response, 400, 3)["info"]["metadata"]["request_id"] == supplied
    response = client.get("/nowhere", headers={"x-request-id": supplied})
    assert expect_error(response, 404, 5)["info"]["metadata"]["request_id"] == supplied


# =====================================================================================
# Auth, an unavailable backend, CORS, metrics
# =====================================================================================


def test_authorization_passes_through(database_url: str, tmp_path: Path) -> None:
    server = start_gateway(make_settings(database_url, tmp_path / "data", auth_tokens="s3cret"))
    try:
        with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=10) as http:
            response = http.get("/v1/experiments")
            error = expect_error(response, 401, 16)
            assert "bearer" in error["message"].lower()
            assert response.headers["www-authenticate"].startswith("Bearer")
            expect_error(
                http.get("/v1/experiments", headers={"Authorization": "Bearer nope"}), 401, 16
            )
            authorized = http.get("/v1/experiments", headers={"Authorization": "Bearer s3cret"})
            assert ok(authorized) is not None
            created = http.post(
                "/v1/experiments",
                json={"displayName": unique("auth")},
                headers={"Authorization": "Bearer s3cret"},
            )
            assert ok(created)["displayName"].startswith("auth-")
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()


def test_stopped_backend_is_503(database_url: str, tmp_path: Path) -> None:
    # No wait_for_ready: a backend that is down is UNAVAILABLE (503), not a DEADLINE_EXCEEDED
    # (504) after waiting out the deadline.
    server = start_gateway(make_settings(database_url, tmp_path / "data"))
    try:
        with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=10) as http:
            ok(http.get("/v1/experiments"))
            tracker = server.services.pop("tracker")
            server.call(tracker.stop(0))
            error = expect_error(http.get("/v1/experiments"), 503, 14, "UNAVAILABLE")
            assert "127.0.0.1" not in error["message"]  # no channel internals
            expect_error(http.post("/v1/experiments", json={"displayName": "x"}), 503, 14)
            expect_error(
                http.get(
                    "/v1/experiments/-/runs/r/artifacts:download",
                    params={"path": "p", "alt": "media"},
                ),
                503,
                14,
            )
            assert http.get("/healthz").status_code == 503
    finally:
        server.stop()


def test_cors_preflight(database_url: str, tmp_path: Path) -> None:
    origin = "https://ui.cairn.example"
    settings = make_settings(database_url, tmp_path / "data", gateway_cors_origins=origin)
    server = start_gateway(settings)
    try:
        with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=10) as http:
            preflight = http.options(
                "/v1/experiments",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type, authorization, x-request-id",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == origin
            assert "POST" in preflight.headers["access-control-allow-methods"]
            allowed = preflight.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "x-request-id"} <= set(allowed.split(", "))
            actual = http.get("/v1/experiments", headers={"Origin": origin})
            assert ok(actual) is not None
            assert actual.headers["access-control-allow-origin"] == origin
            assert "x-request-id" in actual.headers["access-control-expose-headers"].lower()
            stranger = http.options(
                "/v1/experiments",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert stranger.status_code == 400
    finally:
        server.stop()


def test_metrics_count_requests_by_route_template(client: httpx.Client) -> None:
    experiment = create_experiment(client)
    ok(client.get(f"/v1/{experiment['name']}"))
    client.get("/v1/experiments/-/runs/missing")
    client.get("/no/such/route")
    text = client.get("/metrics").text
    samples = [
        line for line in text.splitlines() if line.startswith("cairn_gateway_requests_total{")
    ]
    assert any('route="/v1/{name=experiments/*}"' in s and 'status="200"' in s for s in samples)
    assert any(
        'route="/v1/{name=experiments/*/runs/*}"' in s and 'status="404"' in s for s in samples
    )
    assert any('route="/v1/experiments"' in s and 'method="POST"' in s for s in samples)
    assert any('route="unmatched"' in s for s in samples)
    assert not any(experiment["experimentId"] in s or "missing" in s for s in samples)


# =====================================================================================
# Client disconnects mid-upload: nothing is stored
# =====================================================================================


def rpc_count(http: httpx.Client, counter: str, method: str) -> float:
    """The tracker's grpc_server_<counter>_total for one method, all codes summed, from the
    process-wide registry the gateway's /metrics serves (tracker and gateway share the test
    process)."""
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"grpc_server_{counter}_total{{") and f'grpc_method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_rpc(http: httpx.Client, counter: str, method: str, above: float) -> None:
    """Wait (bounded) until the tracker has started/handled one more `method` call: a
    condition, not a guess at how long the server needs."""
    for _ in range(600):
        if rpc_count(http, counter, method) > above:
            return
        time.sleep(0.05)
    raise AssertionError(f"the tracker never {counter} another {method} call")


def test_client_disconnect_mid_upload_stores_nothing(
    client: httpx.Client, gateway_url: str
) -> None:
    run = create_run(client, create_experiment(client))
    host, port = gateway_url.removeprefix("http://").rsplit(":", 1)
    target = f"/v1/{run['name']}/artifacts:upload?metadata.path=partial.bin"
    started = rpc_count(client, "started", "UploadArtifact")
    handled = rpc_count(client, "handled", "UploadArtifact")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {3 * MiB}\r\n\r\n".encode()
        )
        raw.sendall(os.urandom(MiB + 17))
        # Disconnect only once the tracker is inside the upload.
        wait_for_rpc(client, "started", "UploadArtifact", started)
    # The tracker's call has ended (as CANCELLED) before we look at what it stored.
    wait_for_rpc(client, "handled", "UploadArtifact", handled)
    assert ok(client.get(f"/v1/{run['name']}/artifacts")).get("artifacts", []) == []
    # The gateway is fine afterwards.
    ok(client.get(f"/v1/{run['name']}"))


# =====================================================================================
# A misbehaving backend (a real gRPC server that is slow or fails mid-stream)
# =====================================================================================


def _hang(context: grpc.ServicerContext) -> None:
    """Answer nothing until the caller gives up (cancels or its deadline passes)."""
    while context.is_active():
        time.sleep(0.02)


class _FaultyTracker:
    """TrackerService methods that hang until the caller gives up, or fail halfway."""

    def get_experiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        _hang(context)
        return experiment_pb2.Experiment()

    def download_artifact(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        response = tracker_service_pb2.DownloadArtifactResponse
        if request.path == "stall/first":
            _hang(context)
            return
        artifact = artifact_pb2.Artifact(path="models/x.bin", size_bytes=2 * MiB, sha256="ab")
        yield response(artifact=artifact)
        yield response(chunk=b"\1" * MiB)
        if request.path == "stall/after":
            _hang(context)
            return
        context.abort(grpc.StatusCode.DATA_LOSS, "the artifact store lost the rest")

    def upload_artifact(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        for _ in requests:  # the whole body arrives, then no answer comes
            pass
        _hang(context)
        return artifact_pb2.Artifact()


@pytest.fixture
def faulty_gateway(tmp_path: Path) -> Iterator[str]:
    faulty = _FaultyTracker()
    requests = tracker_service_pb2
    handler = grpc.method_handlers_generic_handler(
        "cairn.tracker.v1.TrackerService",
        {
            "GetExperiment": grpc.unary_unary_rpc_method_handler(
                faulty.get_experiment,
                request_deserializer=requests.GetExperimentRequest.FromString,
                response_serializer=experiment_pb2.Experiment.SerializeToString,
            ),
            "DownloadArtifact": grpc.unary_stream_rpc_method_handler(
                faulty.download_artifact,
                request_deserializer=requests.DownloadArtifactRequest.FromString,
                response_serializer=requests.DownloadArtifactResponse.SerializeToString,
            ),
            "UploadArtifact": grpc.stream_unary_rpc_method_handler(
                faulty.upload_artifact,
                request_deserializer=requests.UploadArtifactRequest.FromString,
                response_serializer=artifact_pb2.Artifact.SerializeToString,
            ),
        },
    )
    backend = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = backend.add_insecure_port("127.0.0.1:0")
    backend.start()
    settings = make_settings(
        f"sqlite:///{tmp_path / 'unused.db'}",
        tmp_path / "data",
        tracker_address=f"127.0.0.1:{port}",
        gateway_timeout_seconds=0.5,
    )
    server = ServerThread(settings, ("gateway",)).start()
    try:
        yield f"http://{server.address('gateway')}"
    finally:
        server.stop()
        backend.stop(0).wait(5)


def test_slow_backend_is_504_at_the_deadline(faulty_gateway: str) -> None:
    with httpx.Client(base_url=faulty_gateway, timeout=10) as http:
        error = expect_error(http.get("/v1/experiments/e1"), 504, 4, "DEADLINE_EXCEEDED")
        assert "in time" in error["message"]


def test_stream_failing_midway(faulty_gateway: str) -> None:
    url = "/v1/experiments/e/runs/r/artifacts:download"
    with httpx.Client(base_url=faulty_gateway, timeout=10) as http:
        ndjson = http.get(url, params={"path": "models/x.bin"})
        assert ndjson.status_code == 200
        lines = [json.loads(line) for line in ndjson.text.splitlines()]
        assert [next(iter(line)) for line in lines] == ["artifact", "chunk", "error"]
        assert lines[-1]["error"]["code"] == 15
        assert lines[-1]["error"]["message"] == "the artifact store lost the rest"

        sse = http.get(url, params={"path": "models/x.bin"}, headers={"accept": SSE})
        events = sse_events(sse.text)
        assert [name for name, _ in events] == ["message", "message", "error"]
        assert events[-1][1]["code"] == 15
        assert events[-1][1]["details"][0]["reason"] == "DATA_LOSS"

        # Raw bytes cannot carry an error after the headers: the connection is cut short of
        # Content-Length, so no client mistakes the prefix for the file.
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(url, params={"path": "models/x.bin", "alt": "media"})


def test_a_stalled_backend_stream_is_cut_by_the_idle_timeout(faulty_gateway: str) -> None:
    """Streams have no flat deadline but an idle timeout (0.5 s here): a backend that sends
    nothing for that long is a 504 before the response starts, an error event after."""
    url = "/v1/experiments/e/runs/r/artifacts:download"
    with httpx.Client(base_url=faulty_gateway, timeout=10) as http:
        for extra in ({}, {"alt": "media"}):
            response = http.get(url, params={"path": "stall/first", **extra})
            expect_error(response, 504, 4, "BACKEND_TIMEOUT")

        ndjson = http.get(url, params={"path": "stall/after"})
        lines = [json.loads(line) for line in ndjson.text.splitlines()]
        assert [next(iter(line)) for line in lines] == ["artifact", "chunk", "error"]
        assert lines[-1]["error"]["code"] == 4
        assert lines[-1]["error"]["details"][0]["reason"] == "BACKEND_TIMEOUT"
        events = sse_events(
            http.get(url, params={"path": "stall/after"}, headers={"accept": SSE}).text
        )
        assert [name for name, _ in events] == ["message", "message", "error"]
        assert events[-1][1]["details"][0]["reason"] == "BACKEND_TIMEOUT"
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(url, params={"path": "stall/after", "alt": "media"})

        # An upload whose backend never answers once the body is in.
        upload = http.post(
            "/v1/experiments/e/runs/r/artifacts:upload",
            params={"metadata.path": "a.bin"},
            content=b"x" * 1000,
            headers={"content-type": "application/octet-stream"},
        )
        expect_error(upload, 504, 4, "BACKEND_TIMEOUT")


# =====================================================================================
# HttpRule features the tracker's annotations do not use yet, on synthetic bindings
# =====================================================================================


def _binding(
    method: str, http_method: str, path: str, body: str = "", response_body: str = ""
) -> Binding:
    descriptor = tracker_service_pb2.DESCRIPTOR.services_by_name["TrackerService"]
    return Binding(
        method=descriptor.methods_by_name[method],
        http_method=http_method,
        template=parse_template(path),
        body=body,
        response_body=response_body,
    )


SYNTHETIC_BINDINGS = [
    # response_body: one field of the response (a repeated scalar, an int64, a map).
    _binding("PurgeDeleted", "GET", "/x/purge:ids", response_body="purged_run_ids"),
    _binding("PurgeDeleted", "GET", "/x/purge:count", response_body="purged_run_count"),
    _binding("GetExperiment", "GET", "/x/{name=experiments/*}/tags", response_body="tags"),
    # body naming a scalar field and a repeated field.
    _binding("GetExperimentByName", "POST", "/x/experiments:lookup", body="display_name"),
    _binding("SearchRuns", "POST", "/x/runs:searchIn", body="experiment_ids"),
    # every field from the query, nested under a path-bound message.
    _binding("UpdateRun", "POST", "/x/{run.name=experiments/*/runs/*}:set"),
]


@pytest.fixture
def synthetic_url(gateway_server: ServerThread) -> Iterator[str]:
    settings = gateway_server.settings.model_copy(
        update={"tracker_address": gateway_server.address("tracker")}
    )
    backends = Backends(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backends.open()
        yield
        await backends.close()

    app = Starlette(routes=transcoding.routes(SYNTHETIC_BINDINGS, backends), lifespan=lifespan)
    service = HttpService("synthetic", app, host="127.0.0.1", port=0, grace=0)
    gateway_server.call(service.start())
    try:
        yield f"http://{service.address}"
    finally:
        gateway_server.call(service.stop())


def test_response_body_and_well_known_types_in_query(
    client: httpx.Client, synthetic_url: str
) -> None:
    experiment = create_experiment(client, tags={"team": "recs"})
    run = create_run(client, experiment)
    ok(client.delete(f"/v1/{run['name']}"))
    with httpx.Client(base_url=synthetic_url, timeout=10) as http:
        query = [
            ("older_than", "0s"),
            ("experimentIds", experiment["experimentId"]),
            ("experiment_ids", "nonexistent"),
            ("dryRun", "true"),
        ]
        assert ok(http.get("/x/purge:ids", params=query)) == [run["runId"]]
        assert ok(http.get("/x/purge:count", params=query)) == "1"
        assert (
            ok(http.get("/x/purge:ids", params={"olderThan": "3600.5s", "dry_run": "TRUE"})) == []
        )
        assert ok(http.get(f"/x/{experiment['name']}/tags")) == {"team": "recs"}
        expect_error(http.get("/x/purge:ids", params={"dryRun": "yes"}), 400, 3)
        error = expect_error(http.get("/x/purge:ids", params={"olderThan": "an hour"}), 400, 3)
        assert "'olderThan'" in error["message"]
        # Still a dry run: the run was not purged.
        assert ok(client.get(f"/v1/{run['name']}"))["runId"] == run["runId"]

        found = ok(http.post("/x/experiments:lookup", json=experiment["displayName"]))
        assert found["name"] == experiment["name"]
        expect_error(http.post("/x/experiments:lookup", json={"displayName": "x"}), 400, 3)

        other = create_run(client, create_experiment(client))
        searched = ok(
            http.post(
                "/x/runs:searchIn",
                params={"view": "RUN_VIEW_BASIC"},
                json=[experiment["experimentId"], other["experimentId"]],
            )
        )
        assert {r["name"] for r in searched["runs"]} == {other["name"]}  # `run` is deleted

        live = create_run(client, experiment)
        updated = ok(
            http.post(
                f"/x/{live['name']}:set",
                params=[
                    ("run.note", "from the query"),
                    ("run.startTime", "2024-05-01T12:30:00.250+02:00"),
                    ("update_mask", "note"),
                    ("updateMask", "startTime"),
                ],
            )
        )
        assert updated["note"] == "from the query"
        assert updated["startTime"] == "2024-05-01T10:30:00.250Z"
        error = expect_error(
            http.post(f"/x/{live['name']}:set", params={"run.startTime": "yesterday"}), 400, 3
        )
        assert "'run.startTime'" in error["message"]
        error = expect_error(http.post(f"/x/{live['name']}:set", params={"run.name": "x"}), 400, 3)
        assert "URL path" in error["message"]


# =====================================================================================
# Compilation (no servers)
# =====================================================================================


def test_every_binding_compiles_with_its_query_parameters() -> None:
    settings = make_settings("sqlite://", Path("/nonexistent"))
    compiled = {
        (c.binding.http_method, c.binding.template.source): c
        for c in transcoding.compile_bindings(
            all_bindings(registered_services()), Backends(settings)
        )
    }
    list_runs = compiled[("GET", "/v1/{parent=experiments/*}/runs")]
    assert set(list_runs.query_index) >= {
        "page_size",
        "pageSize",
        "filter",
        "order_by",
        "orderBy",
        "view",
        "lifecycle_filter",
    }
    assert "parent" not in list_runs.query_index
    update = compiled[("PATCH", "/v1/{experiment.name=experiments/*}")]
    assert set(update.query_index) == {"update_mask", "updateMask"}
    assert compiled[("POST", "/v1/runs:search")].query_index == {}
    get_search = compiled[("GET", "/v1/runs:search")]
    assert get_search.query_index["experimentIds"].repeated
    upload = compiled[("POST", "/v1/{metadata.run=experiments/*/runs/*}/artifacts:upload")]
    assert upload.upload is not None and upload.query_index == {}
    assert set(upload.upload_query_index) >= {
        "metadata.path",
        "metadata.artifactType",
        "metadata.artifact_type",
        "metadata.overwrite",
    }
    assert "metadata.run" not in upload.upload_query_index
    download = compiled[("GET", "/v1/{run=experiments/*/runs/*}/artifacts:download")]
    assert download.download is not None
    assert compiled[("GET", "/v1/{name=experiments/*}")].download is None
