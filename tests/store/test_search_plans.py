"""The query plans behind a search whose filter constrains its sort key (`metrics.accuracy >
0.5 ... ORDER BY metrics.accuracy DESC`, the most common leaderboard query): the database
reads the sort key's (key, value) index in order and stops at the page's end instead of
sorting every match. SQLite's planner is deterministic, so its plan is checked here;
PostgreSQL's depends on statistics and is measured by bench/compare.py instead."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert

from cairn.tracker.v1 import run_pb2
from services.common.db import Database
from services.common.filtering import parse_filter, parse_order_by
from services.common.migrations import upgrade
from services.tracker.app import MIGRATIONS
from services.tracker.store.models import ExperimentRow, LatestMetricRow, ParamRow, RunRow
from services.tracker.store.store import RunQuery, TrackerStore

RUNS = 300


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TrackerStore]:
    database = Database(f"sqlite:///{tmp_path / 'plans.db'}")
    upgrade("tracker", database, MIGRATIONS)
    rng = random.Random(3)
    with database.write() as session:
        session.execute(
            insert(ExperimentRow),
            [{"experiment_id": "e1", "display_name": "plans", "create_time": 0, "update_time": 0}],
        )
        session.execute(
            insert(RunRow),
            [
                {
                    "run_id": f"{i:032x}",
                    "experiment_id": "e1",
                    "run_name": f"r{i}",
                    "status": "FINISHED",
                    "start_time": i,
                    "create_time": i,
                    "update_time": i,
                }
                for i in range(RUNS)
            ],
        )
        session.execute(
            insert(ParamRow),
            [
                {"run_id": f"{i:032x}", "key": "model", "value": rng.choice(["xgb", "rf"])}
                for i in range(RUNS)
            ],
        )
        session.execute(
            insert(LatestMetricRow),
            [
                {"run_id": f"{i:032x}", "key": "accuracy", "value": rng.random(), "step": 0}
                | {"timestamp": 0}
                for i in range(RUNS)
                if i % 10  # every tenth run has no accuracy
            ],
        )
    yield TrackerStore(database, lambda experiment_id, run_id: "")
    database.dispose()


def _plan_of_search(
    store: TrackerStore, filter_text: str, order_by: str, page_size: int = 10
) -> tuple[list[str], Any]:
    statements: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    engine = store.db.engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        page = store.search_runs(
            RunQuery(
                experiment_ids=["e1"],
                filter=parse_filter(filter_text),
                order=parse_order_by(order_by),
                lifecycle="ACTIVE",
                page_size=page_size,
                after=None,
                view=run_pb2.RUN_VIEW_STANDARD,
            )
        )
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    picking = next(s for s in statements if "ORDER BY" in s[0])
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        plan = [row[3] for row in cursor.execute("EXPLAIN QUERY PLAN " + picking[0], picking[1])]
    return plan, page


def test_a_filtered_sort_key_is_read_from_its_index_in_order(store: TrackerStore) -> None:
    plan, page = _plan_of_search(
        store, "metrics.accuracy > 0.5 AND params.model = 'xgb'", "metrics.accuracy DESC"
    )
    assert any("sort_0 USING INDEX ix_latest_metrics_key_value" in step for step in plan), plan
    # Only ties on the value are sorted (by run id); never the whole match.
    assert not any(step == "USE TEMP B-TREE FOR ORDER BY" for step in plan), plan
    values = [next(m.value for m in run.metrics) for run in page.items]
    assert len(values) == 10
    assert values == sorted(values, reverse=True)
    assert all(
        v > 0.5 and run.params["model"] == "xgb" for v, run in zip(values, page.items, strict=True)
    )


def test_an_unconstrained_sort_key_keeps_the_general_plan(store: TrackerStore) -> None:
    """Without a condition on the key, runs lacking it must still come (last): the key is
    outer-joined (looked up per run by its primary key, not walked in index order) and the
    matches are sorted."""
    plan, page = _plan_of_search(
        store, "params.model = 'xgb'", "metrics.accuracy DESC", page_size=RUNS
    )
    assert not any("ix_latest_metrics_key_value" in step for step in plan), plan
    assert any("TEMP B-TREE FOR ORDER BY" in step for step in plan), plan
    values = [[m.value for m in run.metrics] for run in page.items]
    present = [v[0] for v in values if v]
    assert present == sorted(present, reverse=True)
    missing = [run.run_id for run, v in zip(page.items, values, strict=True) if not v]
    assert missing, "some matching runs lack the metric"
    assert [run.run_id for run in page.items[-len(missing) :]] == sorted(missing)
