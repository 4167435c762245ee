"""The scheduler over REST: resources and jobs through the gateway's transcoding, with the
HTTP status of each error (the scheduler runs without its reconcile loop: jobs stay
QUEUED)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.settings import Settings
from services.scheduler import app as scheduler_app

from cairn_testing import ServerThread


@pytest.fixture
def http(settings: Settings) -> Iterator[httpx.Client]:
    server = ServerThread(
        settings,
        ("tracker", "scheduler", "gateway"),
        specs={"scheduler": partial(scheduler_app.build_spec, reconcile=False)},
    ).start()
    try:
        with httpx.Client(base_url=f"http://{server.address('gateway')}", timeout=30) as client:
            yield client
    finally:
        server.stop()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_datasets_configs_and_jobs_over_rest(http: httpx.Client, sample_csv: Path) -> None:
    dataset = ok(
        http.post(
            "/v1/datasets",
            json={
                "displayName": "interactions",
                "uri": str(sample_csv),
                "userColumn": "user_id",
                "itemColumn": "item_id",
                "timestampColumn": "timestamp",
            },
        )
    )
    assert dataset["rowCount"] == "100000" and dataset["format"] == "DATA_FORMAT_CSV"
    assert [c["name"] for c in dataset["columns"]] == [
        "user_id",
        "item_id",
        "item_category",
        "rating",
        "timestamp",
    ]
    taken = http.post(
        "/v1/datasets",
        json={
            "displayName": "interactions",
            "uri": str(sample_csv),
            "userColumn": "user_id",
            "itemColumn": "item_id",
        },
    )
    assert taken.status_code == 409
    missing_column = http.post(
        "/v1/datasets",
        json={
            "displayName": "other",
            "uri": str(sample_csv),
            "userColumn": "nope",
            "itemColumn": "item_id",
        },
    )
    assert missing_column.status_code == 400 and "nope" in missing_column.json()["message"]

    features = ok(
        http.post(
            "/v1/featureConfigs",
            json={
                "displayName": "ids",
                "dataset": dataset["name"],
                "queryFeatures": [{"column": "user_id", "embeddingDim": 16}],
                "candidateFeatures": [
                    {"column": "item_id"},
                    {"column": "rating", "kind": "FEATURE_KIND_NUMERIC"},
                ],
            },
        )
    )
    assert features["queryTensorDim"] == 16 and features["candidateTensorDim"] == 33
    model = ok(
        http.post(
            "/v1/modelConfigs",
            json={"displayName": "ranker", "modelType": "MODEL_TYPE_RANKING"},
        )
    )
    assert model["queryLayers"] == [64, 32] and model["learningRate"] == 0.1

    # A ranking model needs a target column, and this feature config has none.
    no_target = http.post(
        "/v1/jobs", json={"featureConfig": features["name"], "modelConfig": model["name"]}
    )
    assert no_target.status_code == 400 and "target column" in no_target.json()["message"]
    retrieval = ok(
        http.post(
            "/v1/modelConfigs", json={"displayName": "r", "modelType": "MODEL_TYPE_RETRIEVAL"}
        )
    )
    body = {
        "featureConfig": features["name"],
        "modelConfig": retrieval["name"],
        "description": "first look at the sample",
        "training": {"epochs": 5, "splitStrategy": "SPLIT_STRATEGY_STRICT_TIME"},
    }
    job = ok(http.post("/v1/jobs?requestId=rest-1", json=body))
    assert ok(http.post("/v1/jobs?requestId=rest-1", json=body))["name"] == job["name"]
    assert job["state"] == "JOB_STATE_QUEUED" and job["training"]["samplePercent"] == 10
    assert job["run"].startswith("experiments/")
    too_many = http.post("/v1/jobs", json={**body, "training": {"epochs": 51}})
    assert too_many.status_code == 400 and too_many.json()["details"][0]["metadata"]["field"] == (
        "job.training.epochs"
    )

    listed = ok(http.get("/v1/jobs", params={"search": "FIRST LOOK", "filter": "state = 'QUEUED'"}))
    assert [j["name"] for j in listed["jobs"]] == [job["name"]]
    assert ok(http.get("/v1/jobs", params={"search": "nothing like it"})) == {}
    assert http.get("/v1/jobs", params={"filter": "colour = 'red'"}).status_code == 400

    busy = http.delete(f"/v1/{job['name']}")
    assert busy.status_code == 400 and busy.json()["code"] == 9  # FAILED_PRECONDITION
    cancelled = ok(http.post(f"/v1/{job['name']}:cancel", json={}))
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    watched = http.get(f"/v1/{job['name']}:watch")
    lines = [json.loads(line) for line in watched.text.splitlines()]
    assert lines[-1]["state"] == "JOB_STATE_CANCELLED"
    assert http.post(f"/v1/{job['name']}:cancel", json={}).status_code == 400
    assert http.delete(f"/v1/{dataset['name']}").status_code == 400  # still used
    assert http.get("/v1/jobs/unknown").status_code == 404
