"""Schemathesis against the live gateway, driven by the gateway's own /openapi.json.

For every documented operation (one test each), Schemathesis generates requests from the
document, positive (valid per the schema) and then negative (each violating it somewhere),
and every response must not be a 5xx and must conform to the document: status code,
Content-Type and JSON schema. One tracker + gateway on SQLite serves the whole module: what
is tested here is the REST edge, not the stores (tests/service runs both databases).

Data is seeded first (an experiment, a run with a param, metrics and an artifact, plus a
scratch experiment and run for the operations that change or delete), and about half of the
generated requests name those real resources (a Hypothesis draw, so a failure shrinks and
replays), so successful responses are checked too, not only 404s.

Schemathesis's own pytest integration (`schemathesis.pytest.from_fixture`) does not run on
pytest 9 (it reads the removed `Node._nodeid`), so the tests use its Hypothesis strategies
(`APIOperation.as_strategy`) and `Case.call_and_validate` directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.gateway.bindings import all_bindings, registered_services
from services.gateway.openapi import build_openapi
from services.scheduler import app as scheduler_app

from cairn_testing import ServerThread, make_settings, migrated_database, sqlite_url


def ndjson_lines_conform(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis validates JSON bodies and server-sent events but reads no NDJSON: check
    each line of a streamed response against the documented (per-line) schema."""
    media_type = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if response.status_code != 200 or media_type != "application/x-ndjson":
        return None
    operation = DOCUMENT["paths"][case.operation.path][case.method.lower()]
    schema = operation["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": DOCUMENT["components"]})
    for number, line in enumerate(response.content.decode().splitlines(), 1):
        errors = [e.message for e in validator.iter_errors(json.loads(line))]
        assert not errors, f"NDJSON line {number} violates the schema: {errors[:3]}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ndjson_lines_conform,
]
POSITIVE_EXAMPLES = 20
NEGATIVE_EXAMPLES = 10

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {
            "deterministic": True,
            # Header values (a generated bearer token) with NUL cannot be sent over HTTP.
            "allow-x00": False,
        },
    }
)

DOCUMENT = build_openapi(all_bindings(registered_services()))
# "METHOD /path" of every operation, from the same generator the gateway serves.
OPERATIONS = [
    f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items() for method in item
]
# Operations with something a negative case can break besides the path (whose parameters
# only exclude "/", which no URL segment can carry anyway).
NEGATABLE = {
    f"{method.upper()} {path}"
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
    if "requestBody" in op or any(p["in"] != "path" for p in op.get("parameters", []))
}


@pytest.fixture(scope="module", params=["sqlite"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A tracker and the gateway on a fresh SQLite database, for the whole module (the
    parameter names the database in test ids, as everywhere: `pytest -k sqlite`)."""
    assert request.param == "sqlite"
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    url = sqlite_url(data_dir)
    with migrated_database(url):
        pass
    server = ServerThread(
        make_settings(url, data_dir / "data"),
        ("tracker", "scheduler", "analytics", "logproxy", "gateway"),
        # Generated jobs must not start training: the scheduler serves without its loop.
        specs={"scheduler": partial(scheduler_app.build_spec, reconcile=False)},
    ).start()
    try:
        yield f"http://{server.address('gateway')}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def seeded(gateway: str) -> dict[str, str]:
    """Real resources for generated requests to hit, created through the REST API."""
    with httpx.Client(base_url=gateway, timeout=30) as client:

        def ok(response: httpx.Response) -> Any:
            assert response.status_code == 200, response.text
            return response.json()

        display_name = f"fuzz-{uuid.uuid4().hex[:8]}"
        experiment = ok(client.post("/v1/experiments", json={"displayName": display_name}))
        experiment_id = experiment["experimentId"]
        run = ok(client.post(f"/v1/experiments/{experiment_id}/runs", json={"runName": "seed"}))
        run_path = f"/v1/experiments/{experiment_id}/runs/{run['runId']}"
        ok(client.post(f"{run_path}:logParams", json={"params": {"lr": "0.1"}}))
        points = [{"key": "loss", "value": 1.0 / (step + 1), "step": step} for step in range(5)]
        points.append({"key": "loss", "value": "NaN", "step": 5})
        ok(client.post(f"{run_path}:logMetrics", json={"metrics": points}))
        ok(
            client.post(
                f"{run_path}/artifacts:upload",
                params={"metadata.path": "model/weights.bin"},
                content=b"\x00\x01weights",
                headers={"content-type": "application/octet-stream"},
            )
        )
        scratch = ok(client.post("/v1/experiments", json={"displayName": f"{display_name}-x"}))
        scratch_run = ok(client.post(f"/v1/experiments/{scratch['experimentId']}/runs", json={}))
    return {
        "experiment": experiment_id,
        "run": str(run["runId"]),
        "display_name": display_name,
        "metric_key": "loss",
        "path": "model/weights.bin",
        "scratch_experiment": scratch["experimentId"],
        "scratch_run": str(scratch_run["runId"]),
    }


@pytest.fixture(scope="module")
def api_schema(gateway: str, seeded: dict[str, str]) -> Any:
    """The live gateway's own document, as Schemathesis loads it."""
    return schemathesis.openapi.from_url(f"{gateway}/openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def choose_stream_format(case: Any, data: st.DataObject) -> None:
    """Server-streaming operations answer NDJSON or, when asked, server-sent events: draw the
    Accept header so both documented content types are checked."""
    if case.path.endswith("artifacts:download"):
        accept = data.draw(
            st.sampled_from([None, "application/x-ndjson", "text/event-stream"]), label="accept"
        )
        if accept is not None:
            case.headers = {**(case.headers or {}), "Accept": accept}


def use_seeded_resources(case: Any, data: st.DataObject, seeded: dict[str, str]) -> None:
    """Point about half of the generated requests at the seeded resources. Operations that
    change names or lifecycle (PATCH, DELETE, :restore) get the scratch experiment and run,
    so the others keep finding theirs."""
    if not data.draw(st.booleans(), label="seeded"):
        return
    mutating = case.method.upper() in ("PATCH", "DELETE") or case.path.endswith(":restore")
    path_parameters = case.path_parameters
    if path_parameters:
        for name in ("experiment", "run"):
            if name in path_parameters:
                path_parameters[name] = seeded[f"scratch_{name}" if mutating else name]
    query = case.query
    if query:
        for name in ("display_name", "metric_key", "path"):
            if name in query:
                query[name] = seeded[name]
    if case.path.endswith("artifacts:upload") and case.media_type == "application/octet-stream":
        # A raw upload that can succeed: a valid path, no random expected digest.
        case.query = {k: v for k, v in (query or {}).items() if k != "metadata.expected_sha256"}
        case.query["metadata.path"] = "fuzz/upload.bin"


HYPOTHESIS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def test_every_operation_is_tested(api_schema: Any) -> None:
    labels = sorted(op.ok().label for op in api_schema.get_all_operations())
    assert labels == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_the_document(
    label: str, api_schema: Any, seeded: dict[str, str], session: requests.Session
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    def run(case: Any, data: st.DataObject) -> None:
        choose_stream_format(case, data)
        use_seeded_resources(case, data, seeded)
        case.call_and_validate(session=session, checks=CHECKS, timeout=30)

    positive = given(case=operation.as_strategy(GenerationMode.POSITIVE), data=st.data())(run)
    settings(HYPOTHESIS, max_examples=POSITIVE_EXAMPLES)(positive)()
    if label in NEGATABLE:
        negative = given(case=operation.as_strategy(GenerationMode.NEGATIVE), data=st.data())(run)
        settings(HYPOTHESIS, max_examples=NEGATIVE_EXAMPLES)(negative)()
