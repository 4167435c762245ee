"""Bulk-seeded runs for the search-at-scale figures: 10,000 and 100,000 runs cannot be created
through MLflow's API in a benchmark's time (about 30 runs/s), so both systems get the same
runs written by plain SQL inserts into their own schemas, each into an experiment created
through its own API (so each server knows it):

- MLflow: `runs` (+ `params`, `latest_metrics`, the tables its search reads), as its
  SqlAlchemyStore writes them;
- Cairn: `runs`, `params` (with the numeric value its search compares), `latest_metrics`,
  through Cairn's own table definitions (their column defaults included).

Then the database's statistics are refreshed (ANALYZE), as autovacuum would do soon after
such a load: without it PostgreSQL plans for the empty tables it last saw (measured: Cairn's
search over 100,000 fresh runs takes 0.99 s before and 0.25 s after).

Every run gets the workload's 10 params (`model` one of xgb/rf/lr, p0..p8) and 5 metrics
(`accuracy`, m0..m3) from one seed, so both searches see the same data.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine, insert, text

CHUNK = 5_000


def run_specs(count: int, seed: int) -> Iterator[tuple[dict[str, str], dict[str, float]]]:
    rng = random.Random(seed)
    for _ in range(count):
        params = {
            "model": rng.choice(["xgb", "rf", "lr"]),
            **{f"p{j}": f"{rng.random():.6f}" for j in range(9)},
        }
        metrics = {"accuracy": rng.random(), **{f"m{j}": rng.random() for j in range(4)}}
        yield params, metrics


def matching(count: int, seed: int = 11) -> int:
    """How many of the seeded runs the benchmark's search filter matches."""
    return sum(
        1
        for params, metrics in run_specs(count, seed)
        if metrics["accuracy"] > 0.5 and params["model"] == "xgb"
    )


def _chunks(count: int, seed: int) -> Iterator[list[tuple[str, dict[str, str], dict[str, float]]]]:
    chunk: list[tuple[str, dict[str, str], dict[str, float]]] = []
    for params, metrics in run_specs(count, seed):
        chunk.append((uuid.uuid4().hex, params, metrics))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def analyze(engine: Any) -> None:
    """Fresh planner statistics for the tables just loaded (PostgreSQL and SQLite)."""
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))


def _engine_url(url: str) -> str:
    # MLflow's server gets psycopg2 URLs; this process has psycopg (3).
    return url.replace("postgresql+psycopg2://", "postgresql+psycopg://")


def seed_mlflow(database_url: str, experiment_id: str, count: int, seed: int = 11) -> None:
    engine = create_engine(_engine_url(database_url))
    now = int(time.time() * 1000)
    runs = text(
        "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
        "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
        "artifact_uri, experiment_id) VALUES (:run_uuid, :name, 'LOCAL', '', '', 'bench', "
        "'FINISHED', :now, :now, '', 'active', :artifact_uri, :experiment_id)"
    )
    params = text("INSERT INTO params (key, value, run_uuid) VALUES (:key, :value, :run_uuid)")
    metrics = text(
        "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
        "VALUES (:key, :value, :now, 0, :is_nan, :run_uuid)"
    )
    try:
        for number, chunk in enumerate(_chunks(count, seed)):
            with engine.begin() as connection:
                connection.execute(
                    runs,
                    [
                        {
                            "run_uuid": run_id,
                            "name": f"seeded-{number}-{i}",
                            "now": now,
                            "artifact_uri": f"mlflow-artifacts:/{experiment_id}/{run_id}",
                            "experiment_id": int(experiment_id),
                        }
                        for i, (run_id, _, _) in enumerate(chunk)
                    ],
                )
                connection.execute(
                    params,
                    [
                        {"key": k, "value": v, "run_uuid": run_id}
                        for run_id, run_params, _ in chunk
                        for k, v in run_params.items()
                    ],
                )
                connection.execute(
                    metrics,
                    [
                        {"key": k, "value": v, "now": now, "is_nan": False, "run_uuid": run_id}
                        for run_id, _, run_metrics in chunk
                        for k, v in run_metrics.items()
                    ],
                )
        analyze(engine)
    finally:
        engine.dispose()


def seed_cairn(database_url: str, experiment_id: str, count: int, seed: int = 11) -> None:
    from services.tracker.store.models import LatestMetricRow, ParamRow, RunRow
    from services.tracker.store.store import _parse_number

    engine = create_engine(database_url)
    now = int(time.time() * 1000)
    tables: Any = (RunRow.__table__, ParamRow.__table__, LatestMetricRow.__table__)
    try:
        for number, chunk in enumerate(_chunks(count, seed)):
            with engine.begin() as connection:
                connection.execute(
                    insert(tables[0]),
                    [
                        {
                            "run_id": run_id,
                            "experiment_id": experiment_id,
                            "run_name": f"seeded-{number}-{i}",
                            "status": "FINISHED",
                            "start_time": now,
                            "end_time": now,
                            "create_time": now,
                            "update_time": now,
                        }
                        for i, (run_id, _, _) in enumerate(chunk)
                    ],
                )
                connection.execute(
                    insert(tables[1]),
                    [
                        {"run_id": run_id, "key": k, "value": v, "value_num": _parse_number(v)}
                        for run_id, run_params, _ in chunk
                        for k, v in run_params.items()
                    ],
                )
                connection.execute(
                    insert(tables[2]),
                    [
                        {"run_id": run_id, "key": k, "value": v, "step": 0, "timestamp": now}
                        for run_id, _, run_metrics in chunk
                        for k, v in run_metrics.items()
                    ],
                )
        analyze(engine)
    finally:
        engine.dispose()
