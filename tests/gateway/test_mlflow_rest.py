"""The corners of the MLflow REST layer, with raw HTTP requests: prefixes, limits, retries,
filter and order_by translation, paging, view types, the artifact proxy and its path checks,
error codes and HTTP statuses."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

import cairn
from services.gateway.mlflow import handlers, translate
from services.gateway.mlflow.protocol import MlflowError

from cairn_testing import (
    DATABASE_KINDS,
    PostgresDatabases,
    ServerThread,
    files_under,
    make_settings,
    migrated_database,
    sqlite_url,
)

API = "/api/2.0/mlflow"
AJAX = "/ajax-api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass
class Gateway:
    server: ServerThread
    http: httpx.Client
    data_dir: Path
    runs: dict[str, str] = field(default_factory=dict)  # seeded run name -> id

    def post(self, path: str, body: dict[str, Any], prefix: str = API) -> httpx.Response:
        return self.http.post(prefix + path, json=body)

    def get(self, path: str, params: Any = None, prefix: str = API) -> httpx.Response:
        return self.http.get(prefix + path, params=params)

    def ok(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def experiment(self, name: str | None = None) -> str:
        name = name or f"exp-{uuid.uuid4().hex[:10]}"
        return str(self.ok(self.post("/experiments/create", {"name": name}))["experiment_id"])

    def run(self, experiment_id: str, name: str = "", **fields: Any) -> str:
        body = {"experiment_id": experiment_id, "run_name": name, **fields}
        return str(self.ok(self.post("/runs/create", body))["run"]["info"]["run_id"])

    def tracker(self) -> cairn.Tracker:
        return cairn.Tracker(self.server.address("tracker"), capture_environment=False)


def _start(
    settings_dir: Path,
    url: str,
    names: tuple[str, ...] = ("tracker", "scheduler", "analytics", "logproxy", "gateway"),
    **overrides: Any,
) -> ServerThread:
    return ServerThread(make_settings(url, settings_dir, **overrides), names).start()


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One tracker and gateway per module and database kind (tests use unique names)."""
    kind = str(request.param)
    root = tmp_path_factory.mktemp(f"mlflow-rest-{kind}")
    postgres: PostgresDatabases | None = None
    if kind == "sqlite":
        url = sqlite_url(root)
        with migrated_database(url):
            pass
    else:
        postgres = request.getfixturevalue("postgres")
        url = postgres.fresh()
    server = _start(root / "data", url)
    client = httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=30)
    try:
        yield Gateway(server, client, root / "data")
    finally:
        client.close()
        server.stop()
        if postgres is not None:
            postgres.drop(url)


def _error(response: httpx.Response, status: int, code: str, *fragments: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code, body
    assert set(body) == {"error_code", "message"}
    assert "Traceback" not in body["message"]
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    return str(body["message"])


# ---------------------------------------------------------------------- prefixes, shapes


def test_ajax_prefix_and_payload_shapes(gateway: Gateway) -> None:
    name = f"ajax-{uuid.uuid4().hex[:8]}"
    created = gateway.ok(gateway.post("/experiments/create", {"name": name}, prefix=AJAX))
    experiment_id = created["experiment_id"]
    experiment = gateway.ok(
        gateway.get("/experiments/get", {"experiment_id": experiment_id}, prefix=AJAX)
    )["experiment"]
    assert experiment["experiment_id"] == experiment_id
    assert experiment["name"] == name
    assert experiment["artifact_location"] == f"mlflow-artifacts:/{experiment_id}"
    assert experiment["lifecycle_stage"] == "active"
    assert experiment["creation_time"] > 0 and experiment["last_update_time"] > 0

    run = gateway.ok(
        gateway.post(
            "/runs/create",
            {
                "experiment_id": experiment_id,
                "start_time": 1_700_000_000_123,
                "tags": [
                    {"key": "mlflow.runName", "value": "shaped"},
                    {"key": "mlflow.user", "value": "alice"},
                    {"key": "mlflow.note.content", "value": "a note"},
                    {"key": "team", "value": "vision"},
                ],
            },
        )
    )["run"]
    info = run["info"]
    run_id = info["run_id"]
    assert info == {
        "run_id": run_id,
        "run_uuid": run_id,
        "run_name": "shaped",
        "experiment_id": experiment_id,
        "user_id": "alice",
        "status": "RUNNING",
        "start_time": 1_700_000_000_123,
        "artifact_uri": f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts",
        "lifecycle_stage": "active",
    }
    assert run["data"]["tags"] == [
        {"key": "mlflow.note.content", "value": "a note"},
        {"key": "mlflow.runName", "value": "shaped"},
        {"key": "mlflow.user", "value": "alice"},
        {"key": "team", "value": "vision"},
    ]
    assert run["inputs"] == {}

    # mlflow.runName renames the run, mlflow.note.content is the note
    gateway.ok(
        gateway.post(
            "/runs/set-tag", {"run_id": run_id, "key": "mlflow.runName", "value": "renamed"}
        )
    )
    gateway.ok(gateway.post("/runs/delete-tag", {"run_id": run_id, "key": "mlflow.note.content"}))
    fetched = gateway.ok(gateway.get("/runs/get", {"run_id": run_id}, prefix=AJAX))["run"]
    assert fetched["info"]["run_name"] == "renamed"
    tags = {t["key"]: t["value"] for t in fetched["data"]["tags"]}
    assert tags == {"mlflow.runName": "renamed", "mlflow.user": "alice", "team": "vision"}
    _error(
        gateway.post("/runs/set-tag", {"run_id": run_id, "key": "mlflow.user", "value": "eve"}),
        400,
        "INVALID_PARAMETER_VALUE",
        "mlflow.user",
    )

    finished = gateway.ok(
        gateway.post(
            "/runs/update",
            {"run_id": run_id, "status": "FINISHED", "end_time": 1_700_000_009_000},
        )
    )["run_info"]
    assert (finished["status"], finished["end_time"]) == ("FINISHED", 1_700_000_009_000)
    _error(
        gateway.post("/runs/update", {"run_id": run_id, "status": "RUNNING"}),
        400,
        "INVALID_PARAMETER_VALUE",
        "terminal",
    )

    # experiment tags; mlflow.note.content is the description
    for key, value in (("owner", "ml"), ("mlflow.note.content", "about")):
        body = {"experiment_id": experiment_id, "key": key, "value": value}
        gateway.ok(gateway.post("/experiments/set-experiment-tag", body))
    tags = gateway.ok(gateway.get("/experiments/get-by-name", {"experiment_name": name}))
    assert tags["experiment"]["tags"] == [
        {"key": "owner", "value": "ml"},
        {"key": "mlflow.note.content", "value": "about"},
    ]
    body = {"experiment_id": experiment_id, "key": "owner"}
    gateway.ok(gateway.post("/experiments/delete-experiment-tag", body))
    _error(
        gateway.post("/experiments/delete-experiment-tag", body),
        404,
        "RESOURCE_DOES_NOT_EXIST",
        "owner",
    )


def test_errors_are_mlflow_shaped(gateway: Gateway) -> None:
    _error(gateway.get("/runs/get", {"run_id": "f" * 32}), 404, "RESOURCE_DOES_NOT_EXIST")
    for path in ("/runs/log-batch", "/runs/set-tag", "/runs/log-parameter"):
        body = {"run_id": "f" * 32, "key": "k", "value": "v"}
        _error(gateway.post(path, body), 404, "RESOURCE_DOES_NOT_EXIST", "f" * 32)
    _error(
        gateway.get("/experiments/get", {"experiment_id": "nope"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
        "nope",
    )
    _error(
        gateway.post("/runs/create", {"experiment_id": "does-not-exist"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )
    _error(
        gateway.post("/experiments/create", {}),
        400,
        "INVALID_PARAMETER_VALUE",
        "Missing value for required parameter 'name'",
    )
    _error(
        gateway.post("/experiments/create", {"name": 7}),
        400,
        "INVALID_PARAMETER_VALUE",
        "Invalid value 7 for parameter 'name'",
    )
    malformed = gateway.http.post(
        f"{API}/runs/log-batch", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(malformed, 400, "INVALID_PARAMETER_VALUE", "JSON")
    name = f"dup-{uuid.uuid4().hex[:8]}"
    gateway.experiment(name)
    _error(
        gateway.post("/experiments/create", {"name": name}),
        400,
        "RESOURCE_ALREADY_EXISTS",
        name,
    )
    for path, method in (
        ("/traces", "GET"),
        ("/runs/log-model", "POST"),  # MLflow 2's record_logged_model
        ("/logged-models/m-x/artifacts/directories", "GET"),
        ("/registered-models/create", "POST"),
    ):
        response = gateway.http.request(method, API + path, json={})
        _error(response, 404, "ENDPOINT_NOT_FOUND", path)
    _error(gateway.http.get("/api/3.0/mlflow/traces/abc"), 404, "ENDPOINT_NOT_FOUND")
    info = gateway.ok(gateway.http.get("/api/3.0/mlflow/server-info"))
    assert info["multipart_uploads_enabled"] is False
    assert info["multipart_downloads_enabled"] is False
    empty = gateway.experiment()
    assert gateway.ok(gateway.post("/logged-models/search", {"experiment_ids": [empty]})) == {
        "models": []
    }
    _error(
        gateway.post("/logged-models", {"experiment_id": empty, "name": "orphan"}),
        400,
        "INVALID_PARAMETER_VALUE",
        "log the model inside a run",
    )
    _error(gateway.get("/logged-models/m-nope"), 404, "RESOURCE_DOES_NOT_EXIST", "m-nope")
    run_id = gateway.run(empty, "r")
    _error(gateway.get(f"/logged-models/m-{run_id}-0123abcd"), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(
        gateway.post("/runs/set-tag", {"run_id": run_id, "key": "cairn.mlflow.x", "value": "v"}),
        400,
        "INVALID_PARAMETER_VALUE",
        "reserved",
    )


# ---------------------------------------------------------------------- log-batch


def _batch_run(gateway: Gateway) -> str:
    return gateway.run(gateway.experiment(), "batch")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"metrics": [{"key": f"m{i}", "value": 1, "timestamp": 1} for i in range(1001)]},
            "at most 1000 metrics",
        ),
        ({"params": [{"key": f"p{i}", "value": "v"} for i in range(101)]}, "at most 100 params"),
        ({"tags": [{"key": f"t{i}", "value": "v"} for i in range(101)]}, "at most 100 tags"),
        (
            {
                "metrics": [{"key": f"m{i}", "value": 1, "timestamp": 1} for i in range(900)],
                "params": [{"key": f"p{i}", "value": "v"} for i in range(100)],
                "tags": [{"key": "t", "value": "v"}],
            },
            "at most 1000 metrics, params, and tags",
        ),
        ({"params": [{"key": "p", "value": "x" * 6001}]}, "maximum length of 6000"),
        ({"tags": [{"key": "t", "value": "x" * 8001}]}, "maximum length of 8000"),
        ({"params": [{"key": "k" * 251, "value": "v"}]}, "maximum length of 250"),
        ({"metrics": [{"key": "bad*key", "value": 1, "timestamp": 1}]}, "Names may only"),
        ({"metrics": [{"key": "a/../b", "value": 1, "timestamp": 1}]}, "would resolve"),
        ({"metrics": [{"key": "m", "value": "high", "timestamp": 1}]}, "valid double"),
        ({"metrics": [{"key": "m", "value": 1}]}, "metrics[0].timestamp"),
        ({"metrics": [{"key": "m", "value": 1, "timestamp": -5}]}, "nonnegative"),
        (
            {"params": [{"key": "p", "value": "1"}, {"key": "p", "value": "2"}]},
            "Duplicate parameter keys",
        ),
        (
            {
                "params": [{"key": "ok", "value": "1"}],
                "metrics": [{"key": "m", "value": None, "timestamp": 1}],
            },
            "metrics[0].value",
        ),
    ],
    ids=[
        "metrics",
        "params",
        "tags",
        "total",
        "param-value",
        "tag-value",
        "key-length",
        "key-chars",
        "key-path",
        "value-type",
        "timestamp",
        "negative-timestamp",
        "duplicate-params",
        "missing-value",
    ],
)
def test_log_batch_limits(gateway: Gateway, body: dict[str, Any], fragment: str) -> None:
    run_id = _batch_run(gateway)
    response = gateway.post("/runs/log-batch", {"run_id": run_id, **body})
    _error(response, 400, "INVALID_PARAMETER_VALUE", fragment)
    data = gateway.ok(gateway.get("/runs/get", {"run_id": run_id}))["run"]["data"]
    assert data["metrics"] == [] and data["params"] == []  # nothing was written
    assert [t["key"] for t in data["tags"]] == ["mlflow.runName"]


def test_log_batch_at_the_limits_and_retries(gateway: Gateway) -> None:
    run_id = _batch_run(gateway)
    full = {
        "run_id": run_id,
        "metrics": [
            {"key": "loss", "value": 1 / (i + 1), "timestamp": 1_700_000_000_000 + i, "step": i}
            for i in range(800)
        ],
        "params": [{"key": f"p{i}", "value": "x" * 6000} for i in range(100)],
        "tags": [{"key": f"t{i}", "value": "y" * 8000} for i in range(100)],
    }
    gateway.ok(gateway.post("/runs/log-batch", full))
    gateway.ok(gateway.post("/runs/log-batch", full))  # a client retry: stored once
    history = gateway.ok(
        gateway.get("/metrics/get-history", {"run_id": run_id, "metric_key": "loss"})
    )["metrics"]
    assert [m["step"] for m in history] == list(range(800))

    point = {"run_id": run_id, "key": "acc", "value": 0.5, "timestamp": 1_700_000_000_000}
    gateway.ok(gateway.post("/runs/log-metric", point))
    gateway.ok(gateway.post("/runs/log-metric", point))  # retried: stored once
    gateway.ok(gateway.post("/runs/log-metric", {**point, "timestamp": 1_700_000_000_001}))
    history = gateway.ok(
        gateway.get("/metrics/get-history", {"run_id": run_id, "metric_key": "acc"})
    )["metrics"]
    assert [(m["value"], m["timestamp"]) for m in history] == [
        (0.5, 1_700_000_000_000),
        (0.5, 1_700_000_000_001),
    ]

    # paged history: the client follows next_page_token
    pages, token = [], None
    while True:
        params = {"run_id": run_id, "metric_key": "loss", "max_results": 300}
        if token:
            params["page_token"] = token
        body = gateway.ok(gateway.get("/metrics/get-history", params))
        pages.append(len(body["metrics"]))
        token = body.get("next_page_token")
        if not token:
            break
    assert pages == [300, 300, 200]

    # NaN and infinities survive as proto3 JSON strings
    for value in ("NaN", "Infinity", "-Infinity"):
        gateway.ok(
            gateway.post(
                "/runs/log-metric",
                {"run_id": run_id, "key": "odd", "value": value, "timestamp": 1, "step": 0},
            )
        )
    odd = gateway.ok(gateway.get("/metrics/get-history", {"run_id": run_id, "metric_key": "odd"}))
    assert sorted(m["value"] for m in odd["metrics"]) == ["-Infinity", "Infinity", "NaN"]

    # a changed param refuses the whole batch with MLflow's message
    changed = {
        "run_id": run_id,
        "params": [{"key": "p0", "value": "other"}],
        "metrics": [{"key": "late", "value": 1, "timestamp": 1}],
    }
    _error(
        gateway.post("/runs/log-batch", changed),
        400,
        "INVALID_PARAMETER_VALUE",
        "Changing param values is not allowed. Param with key='p0'",
    )
    late = gateway.get("/metrics/get-history", {"run_id": run_id, "metric_key": "late"})
    assert gateway.ok(late)["metrics"] == []

    bulk = gateway.ok(
        gateway.get(
            "/metrics/get-history-bulk-interval",
            [("run_ids", run_id), ("metric_key", "loss"), ("max_results", "8")],
        )
    )["metrics"]
    assert 0 < len(bulk) <= 8 and {m["run_id"] for m in bulk} == {run_id}
    assert bulk[0]["step"] == 0 and bulk[-1]["step"] == 799


def test_create_run_idempotency_key(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    body = {"experiment_id": experiment_id, "run_name": "once", "start_time": 5}
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    first = gateway.http.post(f"{API}/runs/create", json=body, headers=headers)
    again = gateway.http.post(f"{API}/runs/create", json=body, headers=headers)
    assert gateway.ok(first)["run"]["info"]["run_id"] == gateway.ok(again)["run"]["info"]["run_id"]
    plain = [gateway.run(experiment_id, "twice", start_time=5) for _ in range(2)]
    assert plain[0] != plain[1]  # without a key, two identical creates are two runs


# ---------------------------------------------------------------------- filters


TRANSLATIONS = [
    (
        "metrics.acc > 0.5 and params.model = 'xgb'",
        "metrics.acc > 0.5 AND params.model = 'xgb'",
    ),
    ("attributes.status = 'SCHEDULED'", "status = 'QUEUED'"),
    ("status IN ('finished', 'SCHEDULED')", "status IN ('FINISHED', 'QUEUED')"),
    ("tags.mlflow.runName = 'x'", "run_name = 'x'"),
    ("attributes.run_name LIKE 'x%'", "run_name LIKE 'x%'"),
    ("attributes.`Run name` = 'x'", "run_name = 'x'"),
    ("tags.mlflow.user = 'u'", "user = 'u'"),
    ("attribute.user_id ILIKE 'al%'", "user ILIKE 'al%'"),
    ("tags.mlflow.note.content != ''", "note != ''"),
    ("tags.mlflow.parentRunId = 'abc'", "tags.`mlflow.parentRunId` = 'abc'"),
    ("tags.\"key with space\" != 'it''s'", "tags.`key with space` != 'it''s'"),
    ("tags.`tick``s` = 'v'", "tags.`tick``s` = 'v'"),
    ("`metrics`.`my-metric` <= -1e-3", "metrics.`my-metric` <= -0.001"),
    ("metric.val-loss < 2", "metrics.`val-loss` < 2"),
    ("param.path = 'C:\\tmp'", "params.path = 'C:\\\\tmp'"),
    ('params.x = "double"', "params.x = 'double'"),
    ("attributes.run_id IN ('a','b')", "run_id IN ('a', 'b')"),
    ("run_id NOT IN ('a')", "run_id NOT IN ('a')"),
    ("created >= 1700000000000", "start_time >= 1700000000000"),
    ("attributes.end_time < '2030-01-01'", "end_time < '2030-01-01'"),
    ("params.lr > 0.05", "params.lr > 0.05"),
    ("tags.t IS NULL AND params.p IS NOT NULL", "tags.t IS NULL AND params.p IS NOT NULL"),
    ("params.p NOT ILIKE '%a%'", "params.p NOT ILIKE '%a%'"),
    (
        "metrics.a > 1 or (metrics.b < 2 and not tags.x = 'y')",
        "metrics.a > 1 OR (metrics.b < 2 AND NOT tags.x = 'y')",
    ),
    ("  ", ""),
]


@pytest.mark.parametrize(("mlflow_filter", "cairn_filter"), TRANSLATIONS)
def test_filter_translation(mlflow_filter: str, cairn_filter: str) -> None:
    assert translate.run_filter(mlflow_filter) == cairn_filter


INVALID_FILTERS = [
    ("metrics.acc > 'high'", "Expected numeric value type for metric"),
    ("params.model = xgb", "expected a value"),
    ("attributes.artifact_uri = 'x'", "artifact_uri"),
    ("datasets.name = 'd'", "dataset"),
    ("foo.bar = 1", "Invalid entity type 'foo'"),
    ("attributes.color = 'red'", "Invalid attribute key 'color'"),
    ("metrics.acc LIKE '%1'", "LIKE"),
    ("params.model > 'a'", "'>'"),
    ("tags.team < 'a'", "'<'"),
    ("status = 'DONE'", "Invalid run status 'DONE'"),
    ("run_name = 5", "Expected a quoted string value"),
    ("metrics.acc >", "expected a value"),
    ("metrics.acc == 1", "'=='"),
    ("(metrics.acc > 1", "')'"),
    ("tags.team = 'open", "unterminated"),
    ("metrics.acc > 1 metrics.b > 2", "AND, OR"),
    ("metrics.acc ~ 1", "'~'"),
    ("metrics.acc IS 1", "NULL"),
    ("(" * 60 + "metrics.a > 1" + ")" * 60, "at most 50 levels"),
    ("NOT " * 60 + "metrics.a > 1", "at most 50 levels"),
    ("metrics.a > 1 AND " * 600 + "metrics.a > 1", "the limit is 10,000"),
]


@pytest.mark.parametrize(
    ("mlflow_filter", "fragment"), INVALID_FILTERS, ids=[f[:40] for f, _ in INVALID_FILTERS]
)
def test_untranslatable_filters_are_refused(mlflow_filter: str, fragment: str) -> None:
    with pytest.raises(MlflowError) as refused:
        translate.run_filter(mlflow_filter)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert fragment in refused.value.message


def test_order_by_translation() -> None:
    assert translate.run_order_by(
        ["metrics.acc DESC", "params.`learning rate`", "attributes.start_time asc"]
    ) == ("metrics.acc DESC, params.`learning rate` ASC, start_time ASC")
    assert translate.run_order_by(["tags.mlflow.runName", "created DESC"]) == (
        "run_name ASC, start_time DESC"
    )
    assert translate.experiment_order_by(["name", "creation_time DESC"]) == (
        "display_name ASC, create_time DESC"
    )
    default_id = {"0": "real"}.get
    assert translate.experiment_filter(
        "name LIKE 'a%' and tags.mlflow.note.content = 'x' and experiment_id IN ('0', '7')",
        lambda value: default_id(value, value),
    ) == ("display_name LIKE 'a%' AND description = 'x' AND experiment_id IN ('real', '7')")
    for bad, fragment in (
        (["metrics.acc SIDEWAYS"], "ASC, DESC"),
        (["attributes.artifact_uri"], "artifact_uri"),
        (["datasets.name"], "dataset"),
    ):
        with pytest.raises(MlflowError, match=fragment):
            translate.run_order_by(bad)
    with pytest.raises(MlflowError, match="experiments sort by"):
        translate.experiment_order_by(["tags.x"])


@pytest.fixture(scope="module")
def seeded(gateway: Gateway) -> tuple[str, dict[str, str]]:
    """Four runs to search: alpha, beta, gamma, delta (start times 1000 to 4000)."""
    experiment_id = gateway.experiment()
    specs: list[dict[str, Any]] = [
        {
            "name": "alpha",
            "user": "alice",
            "params": {"model": "xgb", "lr": "0.1"},
            "metrics": {"acc": 0.9, "loss": 0.2},
            "tags": {"team": "vision", "key with space": "x"},
            "status": "FINISHED",
        },
        {
            "name": "beta",
            "params": {"model": "lgbm", "lr": "0.01"},
            "metrics": {"acc": 0.7},
            "tags": {"team": "nlp"},
            "status": "FAILED",
        },
        {
            "name": "gamma",
            "params": {"model": "xgb"},
            "metrics": {},
            "tags": {"team": "Vision Core", "mlflow.note.content": "best"},
            "status": None,
        },
        {
            "name": "delta",
            "params": {"model": "rf"},
            "metrics": {"acc": 0.5},
            "tags": {},
            "status": "KILLED",
        },
    ]
    ids: dict[str, str] = {}
    for index, spec in enumerate(specs):
        tags = [{"key": "mlflow.user", "value": spec.get("user", "bob")}]
        if spec["name"] == "gamma":
            tags.append({"key": "mlflow.parentRunId", "value": ids["alpha"]})
        run_id = gateway.run(experiment_id, spec["name"], start_time=1000 * (index + 1), tags=tags)
        ids[spec["name"]] = run_id
        gateway.ok(
            gateway.post(
                "/runs/log-batch",
                {
                    "run_id": run_id,
                    "params": [{"key": k, "value": v} for k, v in spec["params"].items()],
                    "tags": [{"key": k, "value": v} for k, v in spec["tags"].items()],
                    "metrics": [
                        {"key": k, "value": v, "timestamp": 1, "step": 0}
                        for k, v in spec["metrics"].items()
                    ],
                },
            )
        )
        if spec["status"]:
            gateway.ok(gateway.post("/runs/update", {"run_id": run_id, "status": spec["status"]}))
    return experiment_id, ids


def _search(gateway: Gateway, body: dict[str, Any]) -> tuple[list[str], str | None]:
    response = gateway.ok(gateway.post("/runs/search", body))
    names = [run["info"]["run_name"] for run in response.get("runs", [])]
    return names, response.get("next_page_token")


SEARCHES = [
    ("metrics.acc > 0.8", "alpha"),
    ("metrics.acc >= 0.7 and params.model = 'xgb'", "alpha"),
    ("metric.acc < 0.8", "beta delta"),
    ("params.model != 'xgb'", "beta delta"),
    ("params.model LIKE 'x%'", "alpha gamma"),
    ("params.model ILIKE 'XG%'", "alpha gamma"),
    ("params.lr > 0.05", "alpha"),
    ("params.lr IS NOT NULL", "alpha beta"),
    ("tags.team = 'vision'", "alpha"),
    ("tags.team ILIKE '%vision%'", "alpha gamma"),
    ("tags.team IS NULL", "delta"),
    ("tags.`key with space` = 'x'", "alpha"),
    ("tags.mlflow.note.content = 'best'", "gamma"),
    ("tags.mlflow.parentRunId = '{alpha}'", "gamma"),
    ("attributes.status = 'FAILED'", "beta"),
    ("status != 'RUNNING'", "alpha beta delta"),
    ("attributes.status IN ('KILLED', 'FINISHED')", "alpha delta"),
    ("attributes.run_name = 'beta'", "beta"),
    ("run_name LIKE 'g%'", "gamma"),
    ("tags.mlflow.runName = 'delta'", "delta"),
    ("attributes.`Run name` = 'alpha'", "alpha"),
    ("attributes.user_id = 'alice'", "alpha"),
    ("attributes.start_time >= 2000 and attributes.start_time < 4000", "beta gamma"),
    ("created > 3500", "delta"),
    ("attributes.run_id IN ('{alpha}', '{beta}')", "alpha beta"),
    ("attributes.run_id NOT IN ('{alpha}')", "beta gamma delta"),
    ("attributes.end_time IS NULL", "gamma"),
    ("metrics.acc > 0.8 OR params.model = 'lgbm'", "alpha beta"),
    ("", "alpha beta gamma delta"),
]


@pytest.mark.parametrize(("mlflow_filter", "expected"), SEARCHES)
def test_search_filters(
    gateway: Gateway, seeded: tuple[str, dict[str, str]], mlflow_filter: str, expected: str
) -> None:
    experiment_id, ids = seeded
    names, _ = _search(
        gateway,
        {
            "experiment_ids": [experiment_id],
            "filter": mlflow_filter.format(**ids),
            "order_by": ["attributes.start_time ASC"],
        },
    )
    assert names == expected.split()


def test_search_order_by_and_invalid_requests(
    gateway: Gateway, seeded: tuple[str, dict[str, str]]
) -> None:
    experiment_id, _ = seeded
    for order_by, expected in (
        (["metrics.acc DESC"], "alpha beta delta gamma"),
        (["params.model ASC", "attributes.start_time DESC"], "beta delta gamma alpha"),
        (["tags.mlflow.runName"], "alpha beta delta gamma"),
        ([], "delta gamma beta alpha"),  # MLflow's default: start_time DESC
    ):
        body = {"experiment_ids": [experiment_id], "order_by": order_by}
        assert _search(gateway, body)[0] == expected.split(), order_by
    for body, fragment in (
        ({"filter": "metrics.acc > 'x'"}, "numeric"),
        ({"filter": "datasets.name = 'x'"}, "dataset"),
        ({"order_by": ["attributes.artifact_uri"]}, "artifact_uri"),
        ({"max_results": 50_001}, "between 1 and 50000"),
        ({"page_token": "garbage"}, "page token"),
        ({"run_view_type": "SOMETIMES"}, "run_view_type"),
    ):
        response = gateway.post("/runs/search", {"experiment_ids": [experiment_id], **body})
        _error(response, 400, "INVALID_PARAMETER_VALUE", fragment)
    # MLflow searches only the experiments it is given
    assert _search(gateway, {"experiment_ids": []}) == ([], None)


# ---------------------------------------------------------------------- paging, views


def test_page_tokens_across_pages(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    names = [f"run-{i}" for i in range(7)]
    for index, name in enumerate(names):
        gateway.run(experiment_id, name, start_time=10 + index)
    seen: list[str] = []
    token: str | None = None
    sizes = []
    while True:
        body: dict[str, Any] = {
            "experiment_ids": [experiment_id],
            "max_results": 3,
            "order_by": ["attributes.start_time ASC"],
        }
        if token:
            body["page_token"] = token
        page, token = _search(gateway, body)
        seen.extend(page)
        sizes.append(len(page))
        if not token:
            break
    assert seen == names and sizes == [3, 3, 1]

    # a token belongs to its query
    _, first = _search(gateway, {"experiment_ids": [experiment_id], "max_results": 3})
    other = {"experiment_ids": [experiment_id], "filter": "run_name = 'run-1'", "page_token": first}
    _error(gateway.post("/runs/search", other), 400, "INVALID_PARAMETER_VALUE")

    prefix = f"paged-{uuid.uuid4().hex[:6]}"
    for index in range(5):
        gateway.experiment(f"{prefix}-{index}")
    found: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {
            "filter": f"name LIKE '{prefix}-%'",
            "max_results": 2,
            "order_by": "name DESC",
        }
        if token:
            params["page_token"] = token
        body = gateway.ok(gateway.get("/experiments/search", params))
        found.extend(e["name"] for e in body["experiments"])
        token = body.get("next_page_token")
        if not token:
            break
    assert found == [f"{prefix}-{i}" for i in reversed(range(5))]


def test_internal_paging_fills_large_pages() -> None:
    """max_results above Cairn's 1000-run page is served from several Cairn pages."""
    pages = {"": (list(range(1000)), "a"), "a": (list(range(1000, 1700)), "b")}
    requested: list[int] = []

    async def fetch(size: int, token: str) -> tuple[list[int], str]:
        requested.append(size)
        items, after = pages[token]
        return items[:size], after if size >= len(items) else "partial"

    items, token = asyncio.run(handlers._collect(fetch, 1500, ""))
    assert items == list(range(1500)) and requested == [1000, 500] and token == "partial"


def test_view_types(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    alive = gateway.run(experiment_id, "alive", start_time=1)
    gone = gateway.run(experiment_id, "gone", start_time=2)
    gateway.ok(gateway.post("/runs/delete", {"run_id": gone}))
    expected = {
        "ACTIVE_ONLY": ["alive"],
        "DELETED_ONLY": ["gone"],
        "ALL": ["alive", "gone"],
        1: ["alive"],
        2: ["gone"],
        3: ["alive", "gone"],
    }
    for view, names in expected.items():
        body = {
            "experiment_ids": [experiment_id],
            "run_view_type": view,
            "order_by": ["run_name"],
        }
        assert _search(gateway, body)[0] == names, view
    gateway.ok(gateway.post("/runs/restore", {"run_id": gone}))
    assert _search(gateway, {"experiment_ids": [experiment_id]})[0] == ["gone", "alive"]
    assert alive

    prefix = f"views-{uuid.uuid4().hex[:6]}"
    active = gateway.experiment(f"{prefix}-active")
    deleted = gateway.experiment(f"{prefix}-deleted")
    gateway.ok(gateway.post("/experiments/delete", {"experiment_id": deleted}))
    for view, ids in (
        ("ACTIVE_ONLY", [active]),
        ("DELETED_ONLY", [deleted]),
        ("ALL", [active, deleted]),
    ):
        params = {"filter": f"name LIKE '{prefix}%'", "view_type": view, "order_by": "name"}
        body = gateway.ok(gateway.get("/experiments/search", params))
        assert [e["experiment_id"] for e in body["experiments"]] == ids, view
    stage = gateway.ok(gateway.get("/experiments/get", {"experiment_id": deleted}))
    assert stage["experiment"]["lifecycle_stage"] == "deleted"
    gateway.ok(gateway.post("/experiments/restore", {"experiment_id": deleted}))
    stage = gateway.ok(gateway.get("/experiments/get", {"experiment_id": deleted}))
    assert stage["experiment"]["lifecycle_stage"] == "active"


# ---------------------------------------------------------------------- artifacts


def _put(gateway: Gateway, location: str, content: bytes) -> httpx.Response:
    return gateway.http.put(f"{ARTIFACTS}/{location}", content=content)


def test_artifact_listing_of_nested_directories(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "files")
    root = f"{experiment_id}/{run_id}/artifacts"
    files = {
        "a/b/c.txt": b"c",
        "a/d.txt": b"dd",
        "a/b/e/f.bin": b"\x00" * 2000,
        "top.txt": b"top",
    }
    for path, content in files.items():
        gateway.ok(_put(gateway, f"{root}/{path}", content))

    def listing(directory: str, prefix: str = "/api/2.0/mlflow-artifacts") -> list[Any]:
        path = f"{root}/{directory}" if directory else root
        body = gateway.ok(gateway.http.get(f"{prefix}/artifacts", params={"path": path}))
        return [(f["path"], f["is_dir"], f.get("file_size")) for f in body["files"]]

    assert listing("") == [("a", True, None), ("top.txt", False, 3)]
    assert listing("a") == [("b", True, None), ("d.txt", False, 2)]
    assert listing("a/b", "/ajax-api/2.0/mlflow-artifacts") == [
        ("c.txt", False, 1),
        ("e", True, None),
    ]
    assert listing("a/b/e") == [("f.bin", False, 2000)]
    assert listing("a/d.txt") == [] and listing("missing") == []

    # the tracking API's artifacts/list (the MLflow UI's) answers run-relative paths
    tracking = gateway.ok(gateway.get("/artifacts/list", {"run_id": run_id, "path": "a/b"}))
    assert tracking["root_uri"] == f"mlflow-artifacts:/{root}"
    assert [(f["path"], f["is_dir"]) for f in tracking["files"]] == [
        ("a/b/c.txt", False),
        ("a/b/e", True),
    ]

    # several 1 MiB chunks both ways, byte-identical, recorded with Cairn's digest
    large = os.urandom(3 * (1 << 20) + 12345)
    gateway.ok(_put(gateway, f"{root}/big/blob.bin", large))
    assert gateway.http.get(f"{ARTIFACTS}/{root}/big/blob.bin").content == large
    head = gateway.http.head(f"{ARTIFACTS}/{root}/big/blob.bin")
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(large)))
    tracker = gateway.tracker()
    try:
        stored = {a.path: a for a in tracker.list_artifacts(run_id)}
        assert stored["big/blob.bin"].sha256 == hashlib.sha256(large).hexdigest()
        assert stored["big/blob.bin"].size_bytes == len(large)
    finally:
        tracker.close()

    download = gateway.http.get(f"{ARTIFACTS}/{root}/a/b/e/f.bin")
    assert download.status_code == 200 and download.content == files["a/b/e/f.bin"]
    assert download.headers["content-length"] == "2000"
    gateway.ok(_put(gateway, f"{root}/top.txt", b"replaced"))  # MLflow overwrites
    assert gateway.http.get(f"{ARTIFACTS}/{root}/top.txt").content == b"replaced"
    _error(gateway.http.get(f"{ARTIFACTS}/{root}/nope.txt"), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(gateway.http.get(f"{ARTIFACTS}/{root}/a"), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(gateway.http.delete(f"{ARTIFACTS}/{root}/top.txt"), 501, "NOT_IMPLEMENTED")
    other = gateway.experiment()
    _error(
        _put(gateway, f"{other}/{run_id}/artifacts/x.txt", b"x"),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )


def _raw(gateway: Gateway, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """A request whose path is sent exactly as written (no dot-segment normalization)."""
    host, port = gateway.server.address("gateway").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body if method == "PUT" else None)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


TRAVERSALS = [
    "../escape.txt",
    "a/../../escape.txt",
    "%2e%2e/escape.txt",
    "..%2Fescape.txt",
    "a%2F..%2F..%2Fescape.txt",
    "%252e%252e%252fescape.txt",
    "a/%2e%2e%5c..%5cescape.txt",
    "a//b.txt",
    "./a.txt",
    "a%23b.txt",
    "%00.txt",
]


def test_path_traversal_is_refused_and_nothing_is_written(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "traversal")
    root = f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts"
    before = files_under(gateway.data_dir)
    for attempt in TRAVERSALS:
        for method in ("PUT", "GET"):
            status, body = _raw(gateway, method, f"{root}/{attempt}", b"evil")
            assert (status, body.get("error_code")) == (400, "INVALID_PARAMETER_VALUE"), (
                method,
                attempt,
                body,
            )
        status, body = _raw(
            gateway, "GET", f"{ARTIFACTS}?path={experiment_id}/{run_id}/artifacts/{attempt}"
        )
        assert (status, body.get("error_code")) == (400, "INVALID_PARAMETER_VALUE"), attempt
    for location in (f"{experiment_id}/../{run_id}/artifacts/x", f"{experiment_id}/{run_id}/x"):
        status, body = _raw(gateway, "PUT", f"{ARTIFACTS}/{location}", b"evil")
        assert (status, body.get("error_code")) == (400, "INVALID_PARAMETER_VALUE"), location
    status, body = _raw(gateway, "GET", f"{ARTIFACTS}?path=..%2F..")
    assert (status, body.get("error_code")) == (400, "INVALID_PARAMETER_VALUE")
    tracker = gateway.tracker()
    try:
        assert tracker.list_artifacts(run_id) == []
    finally:
        tracker.close()
    after = files_under(gateway.data_dir)
    changed = {p for p in set(after) | set(before) if before.get(p) != after.get(p)}
    assert all(p.endswith((".db", ".db-wal", ".db-shm")) for p in changed), changed


# ---------------------------------------------------------------------- backends


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unavailable_tracker_is_503(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    server = _start(
        tmp_path / "data",
        url,
        ("gateway",),
        tracker_address=f"127.0.0.1:{_free_port()}",
        gateway_timeout_seconds=2,
    )
    try:
        with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=30) as client:
            response = client.get(f"{API}/experiments/get", params={"experiment_id": "1"})
            message = _error(response, 503, "TEMPORARILY_UNAVAILABLE")
            assert "127.0.0.1" not in message  # channel details stay in the log
    finally:
        server.stop()


def test_authorization_passes_through(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    with migrated_database(url):
        pass
    server = _start(tmp_path / "data", url, auth_tokens="s3cret")
    try:
        with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=30) as client:
            body = {"name": "guarded"}
            denied = client.post(f"{API}/experiments/create", json=body)
            _error(denied, 401, "UNAUTHENTICATED")
            wrong = client.post(
                f"{API}/experiments/create", json=body, headers={"Authorization": "Bearer no"}
            )
            _error(wrong, 401, "UNAUTHENTICATED")
            allowed = client.post(
                f"{API}/experiments/create", json=body, headers={"Authorization": "Bearer s3cret"}
            )
            assert allowed.status_code == 200, allowed.text
    finally:
        server.stop()


def test_protocol_doubles() -> None:
    """NaN and infinities travel as proto3 JSON strings both ways."""
    from services.gateway.mlflow.protocol import double, json_double

    assert math.isnan(double("NaN", "v")) and double("-Infinity", "v") == -math.inf
    assert double("0.25", "v") == 0.25 and double(3, "v") == 3.0
    assert [json_double(v) for v in (math.nan, math.inf, -math.inf, 1.5)] == [
        "NaN",
        "Infinity",
        "-Infinity",
        1.5,
    ]
    with pytest.raises(MlflowError):
        double(True, "v")


# ---------------------------------------------------------------------- experiment tags


def test_concurrent_experiment_tags_are_all_stored(gateway: Gateway) -> None:
    """Each set-experiment-tag writes its one key: concurrent writers lose nothing."""
    experiment_id = gateway.experiment()
    base = gateway.http.base_url

    async def set_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{API}/experiments/set-experiment-tag",
                        json={"experiment_id": experiment_id, "key": f"k{i}", "value": f"v{i}"},
                    )
                    for i in range(20)
                )
            )

    responses = asyncio.run(set_all())
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    experiment = gateway.ok(gateway.get("/experiments/get", {"experiment_id": experiment_id}))
    assert {t["key"]: t["value"] for t in experiment["experiment"]["tags"]} == {
        f"k{i}": f"v{i}" for i in range(20)
    }

    # delete: the key goes, the others stay; a missing tag is MLflow's RESOURCE_DOES_NOT_EXIST
    body = {"experiment_id": experiment_id, "key": "k3"}
    gateway.ok(gateway.post("/experiments/delete-experiment-tag", body))
    _error(
        gateway.post("/experiments/delete-experiment-tag", body),
        404,
        "RESOURCE_DOES_NOT_EXIST",
        f"No tag with name: k3 in experiment with id {experiment_id}",
    )
    missing = {"experiment_id": "f" * 32, "key": "k"}
    _error(
        gateway.post("/experiments/delete-experiment-tag", missing), 404, "RESOURCE_DOES_NOT_EXIST"
    )
    _error(
        gateway.post("/experiments/set-experiment-tag", {**missing, "value": "v"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
        "No Experiment with id",
    )
    tags = gateway.ok(gateway.get("/experiments/get", {"experiment_id": experiment_id}))
    assert len(tags["experiment"]["tags"]) == 19

    # MLflow allows 20,000 characters; Cairn stores 8,000 and says so
    at_limit = {"experiment_id": experiment_id, "key": "long", "value": "x" * 8000}
    gateway.ok(gateway.post("/experiments/set-experiment-tag", at_limit))
    message = _error(
        gateway.post("/experiments/set-experiment-tag", {**at_limit, "value": "x" * 8001}),
        400,
        "INVALID_PARAMETER_VALUE",
        "Cairn stores experiment tag values of at most 8,000 characters",
    )
    assert len(message) < 300
    _error(
        gateway.post(
            "/experiments/create", {"name": "t", "tags": [{"key": "a", "value": "x" * 8001}]}
        ),
        400,
        "INVALID_PARAMETER_VALUE",
        "8,000",
    )


# ---------------------------------------------------------------------- MLflow fidelity


def test_epoch_times_and_statuses(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    run = gateway.ok(
        gateway.post("/runs/create", {"experiment_id": experiment_id, "start_time": 0})
    )
    info = run["run"]["info"]
    assert info["start_time"] == 0  # the epoch, not "now"
    run_id = info["run_id"]
    # a metric at timestamp 0: the tracker reads a zero timestamp as "now" (documented)
    gateway.ok(
        gateway.post("/runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 0})
    )
    for status in (True, 1.5, "DONE", {"a": 1}):
        _error(
            gateway.post("/runs/update", {"run_id": run_id, "status": status}),
            400,
            "INVALID_PARAMETER_VALUE",
            "'status'",
        )
    updated = gateway.ok(gateway.post("/runs/update", {"run_id": run_id, "status": 3}))
    assert updated["run_info"]["status"] == "FINISHED"

    # steps 0..0 are MLflow's "step 0 only", not Cairn's "everything"
    other = gateway.run(experiment_id, "steps")
    metrics = [{"key": "s", "value": i, "timestamp": 10 + i, "step": i} for i in range(3)]
    gateway.ok(gateway.post("/runs/log-batch", {"run_id": other, "metrics": metrics}))
    bulk = gateway.ok(
        gateway.get(
            "/metrics/get-history-bulk-interval",
            [("run_ids", other), ("metric_key", "s"), ("start_step", "0"), ("end_step", "0")],
        )
    )["metrics"]
    assert [m["step"] for m in bulk] == [0]


HUGE_INPUTS = [
    ("/runs/log-metric", {"key": "m", "value": 10**400, "timestamp": 1}, "valid double"),
    ("/runs/log-metric", {"key": "m", "value": 1, "timestamp": 2**62}, "timestamp"),
    ("/runs/log-metric", {"key": "m", "value": 1, "timestamp": 1, "step": 2**70}, "step"),
    ("/runs/log-metric", {"key": "m", "value": 1, "timestamp": "9" * 5000}, "timestamp"),
    ("/runs/update", {"status": "FINISHED", "end_time": 2**62}, "end_time"),
    ("/runs/update", {"end_time": -(2**63) - 1}, "end_time"),
    ("/runs/log-batch", {"metrics": [{"key": "m", "value": 1, "timestamp": 10**30}]}, "timestamp"),
]


@pytest.mark.parametrize(("path", "body", "fragment"), HUGE_INPUTS)
def test_out_of_range_numbers_are_invalid_parameters(
    gateway: Gateway, path: str, body: dict[str, Any], fragment: str
) -> None:
    run_id = gateway.run(gateway.experiment(), "ranges")
    message = _error(
        gateway.post(path, {"run_id": run_id, **body}), 400, "INVALID_PARAMETER_VALUE", fragment
    )
    assert len(message) < 400, message


def test_out_of_range_queries_and_filters(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "q")
    huge = "9" * 5000
    for response, fragment in (
        (
            gateway.post("/runs/create", {"experiment_id": experiment_id, "start_time": 2**70}),
            "start_time",
        ),
        (gateway.get("/experiments/search", {"view_type": huge}), "view_type"),
        (gateway.post("/experiments/search", {"max_results": 10**30}), "max_results"),
        (
            gateway.post(
                "/runs/search", {"experiment_ids": [experiment_id], "filter": f"metrics.a > {huge}"}
            ),
            "beyond the range",
        ),
        (
            gateway.post(
                "/runs/search",
                {"experiment_ids": [experiment_id], "filter": f"metrics.a > 1{'0' * 400}.5"},
            ),
            "beyond the range",
        ),
        (
            gateway.get(
                "/metrics/get-history-bulk-interval",
                [
                    ("run_ids", run_id),
                    ("metric_key", "m"),
                    ("start_step", str(2**70)),
                    ("end_step", str(2**71)),
                ],
            ),
            "start_step",
        ),
        (
            gateway.get(
                "/metrics/get-history", {"run_id": run_id, "metric_key": "m", "max_results": huge}
            ),
            "max_results",
        ),
    ):
        message = _error(response, 400, "INVALID_PARAMETER_VALUE", fragment)
        assert len(message) < 500, message
    # 18-digit integers stay integers, longer ones compare as doubles
    assert (
        translate.run_filter("metrics.a > 123456789012345678") == "metrics.a > 123456789012345678"
    )
    assert translate.run_filter(f"metrics.a > 1{'0' * 30}") == "metrics.a > 1e+30"


# ---------------------------------------------------------------------- hostile input


def _served_routes(gateway: Gateway) -> list[tuple[str, str]]:
    """(method, path template) of every route the MLflow layer serves (one prefix each)."""
    from services.gateway import mlflow as layer
    from services.gateway.backends import Backends

    settings = gateway.server.settings
    served = []
    for route in layer.routes(Backends(settings), settings):
        path = getattr(route, "path", "")
        catch_all = path.endswith("/{rest:path}") and "/mpu/" not in path
        if path.startswith("/ajax-api/") or catch_all:
            continue
        served += [(method, path) for method in sorted(getattr(route, "methods", set()) - {"HEAD"})]
    return served


def _mlflow_messages() -> dict[str, Any]:
    """MLflow's request message for each tracking path (its fields are what a route reads)."""
    from mlflow.protos.service_pb2 import MlflowService
    from mlflow.utils.rest_utils import _REST_API_PATH_PREFIX, extract_api_info_for_service

    messages: dict[str, Any] = {}
    for message, (path, _method) in extract_api_info_for_service(
        MlflowService, _REST_API_PATH_PREFIX
    ).items():
        messages.setdefault(path, message)
    return messages


HOSTILE_VALUES: list[Any] = [
    10**400,  # an integer literal beyond every double
    2**63,  # one past int64
    "9" * 5000,  # past Python's int() digit limit
    True,
    None,
    "nul\x00byte",
    "x" * 20_000,  # past every length limit
    [[1, [2, [3]]], {"a": None}],
    {"nested": {"deeper": [1.5]}},
]
# Inside the first element of a repeated message field (metrics, params, tags, models...).
NESTED_HOSTILE_VALUES: list[Any] = [10**400, 2**63, "9" * 5000, [], "nul\x00byte"]
HOSTILE_QUERY_VALUES = ["9" * 5000, "nul\x00byte", "-1", "true", "x" * 20_000, "", "\u2603" * 100]


def _valid_value(field: Any, ids: dict[str, str]) -> Any:
    """A plausible value for an MLflow request field (ids of real resources)."""
    from google.protobuf.descriptor import FieldDescriptor

    by_name = {
        "experiment_id": ids["experiment"],
        "run_id": ids["run"],
        "run_uuid": ids["run"],
        "source_run_id": ids["run"],
        "model_id": ids["model"],
    }
    if field.name in by_name:
        value: Any = by_name[field.name]
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        value = {f.name: _valid_value(f, ids) for f in field.message_type.fields}
    elif field.type == FieldDescriptor.TYPE_ENUM:
        value = field.enum_type.values[-1].name
    elif field.type == FieldDescriptor.TYPE_BOOL:
        value = False
    elif field.type == FieldDescriptor.TYPE_STRING:
        value = {"experiment_ids": ids["experiment"], "run_ids": ids["run"]}.get(field.name, "k")
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        value = 0.5
    else:
        value = 1
    if field.is_repeated:
        return [value]
    return value


def _hostile_bodies(message: Any, ids: dict[str, str]) -> list[dict[str, Any]]:
    """For each field of the request (and of its repeated messages' first element), the
    valid body with that one field hostile."""
    from google.protobuf.descriptor import FieldDescriptor

    valid = {f.name: _valid_value(f, ids) for f in message.DESCRIPTOR.fields}
    bodies = []
    for descriptor in message.DESCRIPTOR.fields:
        name, repeated = descriptor.name, isinstance(valid[descriptor.name], list)
        bodies += [{**valid, name: value} for value in HOSTILE_VALUES]
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            element = valid[name][0] if repeated else valid[name]
            for inner in element:
                for value in NESTED_HOSTILE_VALUES:
                    nested = {**element, inner: value}
                    bodies.append({**valid, name: [nested] if repeated else nested})
    return bodies


RAW_BODIES: list[tuple[bytes, str]] = [
    (b'{"a":' * 5000, "application/json"),  # unterminated and nested beyond the parser
    (b"[" * 5000 + b"]" * 5000, "application/json"),  # valid, nested beyond the parser
    (b'{"experiment_id": "' + b"\xff\xfe" * 10 + b'"}', "application/json"),  # not UTF-8
    (b"", "application/json"),
    (b"   ", "text/plain"),
    (b'{"name": "x"}', "text/plain"),  # not declared as JSON
    (b"experiment_id=1&name=x", "application/x-www-form-urlencoded"),
    (b'{"name": "\\ud800", "key": "\\udfff"}', "application/json"),  # lone surrogates
    (b'{"value": 1' + b"0" * 400 + b', "timestamp": 1' + b"0" * 5000 + b"}", "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'"{\\"name\\": 7}"', "application/json"),  # double-encoded
    (b"\x00\x01\x02", "application/octet-stream"),
]
OVERSIZED_BODY = b'{"name": "' + b"n" * 9_000_000 + b'"}'  # over the 8 MiB JSON body limit
# Routes that answer NOT_IMPLEMENTED (501) whatever they are sent.
UNIMPLEMENTED_PATHS = ("/api/2.0/mlflow-artifacts/mpu/", "/api/2.0/mlflow-artifacts/presigned/")


def _check_answer(method: str, path: str, response: httpx.Response, sent: str) -> None:
    where = f"{method} {path} with {sent[:120]!r}"
    if path.startswith(UNIMPLEMENTED_PATHS) or (method == "DELETE" and path.startswith(ARTIFACTS)):
        assert response.status_code == 501, where
    else:
        assert response.status_code < 500, (where, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error_code", "message"}, (where, body)
        assert len(body["message"]) <= 600, (where, body["message"][:300])
        assert "Traceback" not in body["message"]


def test_hostile_input_never_fails_the_server(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Every served MLflow route, sent a table of hostile bodies (and query strings): no 5xx,
    always MLflow's error shape, never an echoed huge input."""
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "hostile")
    model = gateway.ok(
        gateway.post("/logged-models", {"experiment_id": experiment_id, "source_run_id": run_id})
    )["model"]["info"]["model_id"]
    ids = {"experiment": experiment_id, "run": run_id, "model": model}
    messages = _mlflow_messages()
    requests: list[tuple[str, str, str, dict[str, Any]]] = []  # method, path, sent, httpx kwargs
    for method, template in _served_routes(gateway):
        path = (
            template.replace("{model_id}", model)
            .replace("{tag_key:path}", "k")
            .replace("{location:path}", f"{experiment_id}/{run_id}/artifacts/hostile.txt")
            .replace("{rest:path}", "x")
        )
        reads_body = method not in ("GET", "DELETE") and not path.startswith(UNIMPLEMENTED_PATHS)
        for raw, media_type in RAW_BODIES if reads_body else [(b"{}", "application/json")]:
            requests.append(
                (
                    method,
                    path,
                    raw[:60].decode("latin-1"),
                    {"content": raw, "headers": {"content-type": media_type}},
                )
            )
        message = messages.get(template.replace("{tag_key:path}", "{tag_key}"))
        if method == "GET":
            fields = [f.name for f in message.DESCRIPTOR.fields] if message else ["path", "run_id"]
            for name in fields:
                for value in HOSTILE_QUERY_VALUES:
                    requests.append((method, path, f"?{name}={value}", {"params": {name: value}}))
        elif message is not None:
            for body in _hostile_bodies(message, ids):
                sent = json.dumps(body)
                requests.append(
                    (
                        method,
                        path,
                        sent,
                        {"content": sent.encode(), "headers": {"content-type": "application/json"}},
                    )
                )
    hostile_ids = ("m-" + "x" * 5000, "m-%00-0123abcd", f"m-{run_id}-%ff%fe", "m-..%2F..")
    for model_id in hostile_ids:
        for method in ("GET", "PATCH", "DELETE"):
            requests.append((method, f"{API}/logged-models/{model_id}", model_id, {"json": {}}))
        requests.append(("POST", f"{API}/logged-models/{model_id}/params", model_id, {"json": {}}))
    for path in (f"{API}/runs/log-batch", f"{API}/logged-models"):
        requests.append(("POST", path, "9 MB", {"content": OVERSIZED_BODY}))
    for attempt in ("%00", "a" * 5000, "%ff%fe", "x/" * 300 + "y", "%2e%2e/%2e%2e"):
        location = f"{experiment_id}/{run_id}/artifacts/{attempt}"
        requests += [
            ("PUT", f"{ARTIFACTS}/{location}", attempt, {"content": b"x"}),
            ("GET", f"{ARTIFACTS}/{location}", attempt, {}),
            ("GET", ARTIFACTS, attempt, {"params": {"path": location}}),
        ]

    # One after the other: faster here than concurrent requests (one process, one GIL).
    answers = [
        (method, path, sent, gateway.http.request(method, path, **kwargs))
        for method, path, sent, kwargs in requests
    ]
    failures = []
    for method, path, sent, response in answers:
        try:
            _check_answer(method, path, response, sent)
        except AssertionError as error:
            failures.append(str(error)[:400])
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(sorted(set(failures))[:40])
    assert len(requests) > 1200
    assert "Exception in ASGI application" not in caplog.text


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=()), max_size=30)  # NUL, lone surrogates too
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FUZZED_ROUTES = [
    "/runs/create",
    "/runs/log-batch",
    "/runs/search",
    "/experiments/create",
    "/runs/update",
]


@pytest.mark.parametrize("path", FUZZED_ROUTES)
def test_arbitrary_json_objects_never_fail_the_server(gateway: Gateway, path: str) -> None:
    """Hypothesis: JSON objects over the route's MLflow field names (plus any other keys),
    with arbitrary JSON values, are never answered with a 5xx."""
    messages = _mlflow_messages()
    names = [f.name for f in messages[API + path].DESCRIPTOR.fields]
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "fuzzed")
    known = st.sampled_from([*names, "experiment_id", "run_id"])
    bodies = st.dictionaries(known | st.text(max_size=12), JSON_VALUES, max_size=8)

    @hypothesis.settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
    )
    @hypothesis.given(body=bodies, ids=st.booleans())
    def check(body: dict[str, Any], ids: bool) -> None:
        if ids:  # real ids, so that the other fields are what is checked
            body = {"experiment_id": experiment_id, "run_id": run_id, **body}
        sent = json.dumps(body)  # ASCII: lone surrogates travel as \u escapes
        response = gateway.http.post(
            API + path, content=sent, headers={"content-type": "application/json"}
        )
        _check_answer("POST", API + path, response, sent)

    check()


# ---------------------------------------------------------------------- upload disconnects


def _counter(gateway: Gateway, method: str, route: str, status: int) -> float:
    """The gateway's request counter for one route template and status."""
    text = gateway.http.get("/metrics").text
    wanted = f'cairn_gateway_requests_total{{method="{method}",route="{route}",status="{status}"}}'
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_client_disconnect_mid_upload_is_499_and_stores_nothing(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "cut")
    route = "/api/2.0/mlflow-artifacts/artifacts/{location:path}"
    before = {status: _counter(gateway, "PUT", route, status) for status in (499, 500)}
    host, port = gateway.server.address("gateway").rsplit(":", 1)
    location = f"{experiment_id}/{run_id}/artifacts/cut/partial.bin"
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            f"PUT {ARTIFACTS}/{location} HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 5000000\r\n\r\n".encode()
            + b"z" * 3_000_000
        )
    # The request is over when the gateway counted it: 499, the client closed the request.
    for _ in range(600):
        if _counter(gateway, "PUT", route, 499) > before[499]:
            break
        time.sleep(0.05)
    assert _counter(gateway, "PUT", route, 499) == before[499] + 1
    assert _counter(gateway, "PUT", route, 500) == before[500]
    assert "Exception in ASGI application" not in caplog.text
    listed = gateway.ok(
        gateway.http.get(ARTIFACTS, params={"path": f"{experiment_id}/{run_id}/artifacts/cut"})
    )
    assert listed == {"files": []}
    tracker = gateway.tracker()
    try:
        assert tracker.list_artifacts(run_id) == []
    finally:
        tracker.close()


def _read_response(connection: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(65536)
        if not piece:
            break
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        piece = connection.recv(65536)
        if not piece:
            break
        rest += piece
    return int(head.split(b" ")[1]), rest


def test_uploads_keep_going_while_they_move_and_end_when_they_stall(tmp_path: Path) -> None:
    """No overall deadline for an artifact upload: a trickle that takes longer than the
    gateway timeout succeeds; a client silent for longer is 408 and nothing is stored."""
    url = sqlite_url(tmp_path)
    with migrated_database(url):
        pass
    server = _start(tmp_path / "data", url, gateway_timeout_seconds=1.0)
    try:
        gateway = Gateway(
            server,
            httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=30),
            tmp_path / "data",
        )
        experiment_id = gateway.experiment()
        run_id = gateway.run(experiment_id, "slow")
        host, port = server.address("gateway").rsplit(":", 1)
        root = f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts"
        head = "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(head.format(f"{root}/trickle.bin", 5 * 1000).encode())
            for _ in range(5):  # 5 x 0.4 s: twice the timeout in all, never idle for it
                connection.sendall(b"t" * 1000)
                time.sleep(0.4)
            status, _ = _read_response(connection)
        assert status == 200
        assert gateway.http.get(f"{root}/trickle.bin").content == b"t" * 5000

        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(head.format(f"{root}/stalled.bin", 5000).encode() + b"s" * 1000)
            status, body = _read_response(connection)  # the client now sends nothing
        assert status == 408
        assert json.loads(body)["error_code"] == "DEADLINE_EXCEEDED"
        _error(gateway.http.get(f"{root}/stalled.bin"), 404, "RESOURCE_DOES_NOT_EXIST")
        gateway.http.close()
    finally:
        server.stop()


def test_run_inputs_and_outputs(gateway: Gateway) -> None:
    experiment_id = gateway.experiment()
    run_id = gateway.run(experiment_id, "io")
    model = gateway.ok(
        gateway.post("/logged-models", {"experiment_id": experiment_id, "source_run_id": run_id})
    )["model"]["info"]
    assert model["status"] == "LOGGED_MODEL_PENDING"
    dataset = {
        "name": "wide",
        "digest": "abc123",
        "source_type": "code",
        "source": "{}",
        "schema": "s" * 9000,  # beyond a tag: dropped
        "profile": '{"num_rows": 2}',
    }
    inputs = {
        "run_id": run_id,
        "datasets": [
            {"tags": [{"key": "mlflow.data.context", "value": "eval"}], "dataset": dataset}
        ],
        "models": [{"model_id": model["model_id"]}],
    }
    gateway.ok(gateway.post("/runs/log-inputs", inputs))
    gateway.ok(gateway.post("/runs/log-inputs", inputs))  # again: the same one input
    outputs = {"run_id": run_id, "models": [{"model_id": model["model_id"], "step": 7}]}
    gateway.ok(gateway.post("/runs/outputs", outputs))
    run = gateway.ok(gateway.get("/runs/get", {"run_id": run_id}))["run"]
    assert run["outputs"] == {"model_outputs": [{"model_id": model["model_id"], "step": 7}]}
    assert run["inputs"]["model_inputs"] == [{"model_id": model["model_id"]}]
    [recorded] = run["inputs"]["dataset_inputs"]
    assert recorded["tags"] == [{"key": "mlflow.data.context", "value": "eval"}]
    assert recorded["dataset"] == {**dataset, "schema": ""}
    assert all(not t["key"].startswith("cairn.") for t in run["data"]["tags"])
    searched = gateway.ok(gateway.post("/runs/search", {"experiment_ids": [experiment_id]}))
    assert searched["runs"][0]["outputs"] == run["outputs"]

    for path, body, fragment in (
        ("/runs/outputs", {"run_id": run_id}, "models"),
        ("/runs/outputs", {"run_id": run_id, "models": [{"model_id": "m-x"}]}, "not found"),
        ("/runs/log-inputs", {"run_id": run_id, "datasets": [{"tags": []}]}, "dataset"),
        (
            "/runs/log-inputs",
            {"run_id": run_id, "datasets": [{"dataset": {"name": "n"}}]},
            "digest",
        ),
    ):
        response = gateway.post(path, body)
        assert response.status_code in (400, 404), response.text
        assert fragment in response.json()["message"]
    _error(
        gateway.post("/runs/outputs", {"run_id": "f" * 32, "models": [outputs["models"][0]]}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )
