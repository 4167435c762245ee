"""Analytics through the REST gateway: the routes come from the analytics protos' http
annotations, the answers are the service's, errors keep their HTTP mapping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cairn_testing import ServerThread


def seed_small(client: httpx.Client) -> tuple[str, list[str]]:
    """Six finished runs through the REST API: acc rises with the run's index, lr decides
    it, and even runs are retrieval models, odd ones ranking."""
    experiment = ok(client.post("/v1/experiments", json={"displayName": f"rest-{id(client)}"}))
    run_ids = []
    for i in range(6):
        run = ok(
            client.post(
                f"/v1/experiments/{experiment['experimentId']}/runs",
                json={"lineage": {"modelType": "retrieval" if i % 2 == 0 else "ranking"}},
            )
        )
        name = run["name"]
        ok(
            client.post(
                f"/v1/{name}:logParams",
                json={"params": {"lr": str(0.001 * (i + 1)), "width": str(32 * (i % 2 + 1))}},
            )
        )
        points = [{"key": "loss", "value": 1.0 / (i + 1) / (e + 1), "step": e} for e in (0, 1)]
        points.append({"key": "acc", "value": i / 10, "step": 1})
        ok(client.post(f"/v1/{name}:logMetrics", json={"metrics": points}))
        ok(client.patch(f"/v1/{name}", json={"status": "RUN_STATUS_FINISHED"}))
        run_ids.append(run["runId"])
    return experiment["experimentId"], run_ids


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=60) as http:
        yield http


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return response.json()


def test_leaderboard_dashboard_insights_and_suggestions_over_rest(
    client: httpx.Client, gateway_server: ServerThread
) -> None:
    experiment_id, runs = seed_small(client)
    board = ok(
        client.get(
            "/v1/analytics/leaderboard",
            params={"experimentIds": experiment_id, "metric": "acc", "topK": 2},
        )
    )
    assert board["direction"] == "DIRECTION_MAXIMIZE"
    entries = board["groups"][0]["entries"]
    assert [e["run"]["runId"] for e in entries] == [runs[5], runs[4]]
    assert [e["rank"] for e in entries] == [1, 2]

    grouped = ok(
        client.get(
            "/v1/analytics/leaderboard",
            params={
                "experiment_ids": experiment_id,
                "metric": "acc",
                "group_by": "GROUP_BY_MODEL_TYPE",
            },
        )
    )
    assert [g["group"] for g in grouped["groups"]] == ["ranking", "retrieval"]

    dashboard = ok(
        client.get(
            "/v1/analytics/dashboard",
            params={"experimentIds": experiment_id, "metric": "acc", "modelType": "retrieval"},
        )
    )
    assert dashboard["states"] == {"finished": "3", "total": "3"}  # int64 as JSON strings
    assert {k.get("modelType", "") for k in dashboard["kpis"]} == {"", "ranking", "retrieval"}
    assert dashboard["epochHeatmap"]["columnLabels"] == ["0", "1"]

    insights = ok(
        client.get(
            "/v1/analytics/insights", params={"experimentIds": experiment_id, "metric": "acc"}
        )
    )
    assert insights["runCount"] == "6"
    assert insights["params"][0]["key"] == "lr"

    suggestions = ok(
        client.post(
            "/v1/analytics:suggestExperiments",
            json={"experimentIds": [experiment_id], "metric": "acc", "count": 2},
        )
    )
    assert len(suggestions["suggestions"]) == 2
    assert all("reason" in s and "lr" in s["params"] for s in suggestions["suggestions"])

    comparison = ok(client.post("/v1/analytics:compareRuns", json={"runs": [runs[0], runs[5]]}))
    assert [r["runId"] for r in comparison["runs"]] == [runs[0], runs[5]]
    acc = next(m for m in comparison["metrics"] if m["key"] == "acc")
    assert acc["bestRunId"] == runs[5]
    loss = next(h for h in comparison["histories"] if h["metricKey"] == "loss")
    assert loss["steps"] == ["0", "1"]


def test_analytics_errors_over_rest(client: httpx.Client) -> None:
    missing = client.get("/v1/analytics/leaderboard")
    assert missing.status_code == 400
    body = missing.json()
    assert body["code"] == 3 and "metric is required" in body["message"]
    assert body["details"][0]["metadata"]["field"] == "metric"

    bad_filter = client.get(
        "/v1/analytics/dashboard", params={"metric": "acc", "filter": "params.lr >"}
    )
    assert bad_filter.status_code == 400
    assert bad_filter.json()["details"][0]["metadata"]["field"] == "filter"

    unknown = client.post("/v1/analytics:compareRuns", json={"runs": ["0" * 32]})
    assert unknown.status_code == 404

    wrong_type = client.post("/v1/analytics:compareRuns", json={"runs": "not-a-list"})
    assert wrong_type.status_code == 400


def test_healthz_reports_analytics(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    assert "analytics" in health.text
