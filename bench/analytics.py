"""Analytics latency at dashboard scale, against real tracker and analytics server processes.

    python -m bench analytics                        # SQLite, 10,000 runs
    python -m bench analytics --database postgres    # a fresh PostgreSQL database (127.0.0.1:5432)
    python -m bench analytics --runs 50000           # another experiment size
    python -m bench analytics --smoke                # 200 runs, 2 repetitions: checks the script

Seeds one experiment of N runs shaped like a recommender team's sweep: 3 model types
(retrieval, ranking, multitask) in the run lineage, 4 datasets, 8 params (learning_rate
log-uniform, embedding_dim, batch_size, optimizer, ...), 10 epochs of `loss` history,
`val_recall` (the primary metric) and `val_ndcg`, mostly FINISHED runs with some FAILED,
KILLED and RUNNING ones. Seeding goes through the tracker's own TrackerService (validation,
store, SQL: the code path behind CreateRun, LogParams, LogMetrics and UpdateRun), without a
gRPC hop per call, in worker processes (one per CPU on PostgreSQL) of a few threads each.
That path is CPU-bound Python (about 26 statements and 4 commits per run), so 10,000 runs
take minutes on a small machine; the seeding rate is printed too.

Then `cairn serve tracker` and `cairn serve analytics` start as child processes, and each call
below is timed over gRPC after one warm-up call (p50 and p95 in ms; with 10 samples the p95
is the slowest one):
  dashboard                  GetDashboard, metric val_recall, all runs
  dashboard_retrieval        GetDashboard, model_type retrieval
  leaderboard                GetLeaderboard, top 10
  leaderboard_by_model_type  GetLeaderboard, top 10 per model type
  insights                   GetHyperparameterInsights (PED-ANOVA)
  suggest                    SuggestExperiments, 3 suggestions
  query_run_table            the tracker's QueryRunTable, every run x 5 columns
Prints a readable table and, with --json, the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from bench.common import free_port, percentile, postgres_database, rss_mb, service_process, timed
from cairn.analysis import Analytics
from cairn.common.v1 import lineage_pb2
from cairn.tracker.v1 import (
    experiment_pb2,
    metric_pb2,
    run_pb2,
    run_table_pb2,
    tracker_service_pb2_grpc,
)
from cairn.tracker.v1 import tracker_service_pb2 as tracker_pb
from services.common.settings import Settings, load_settings
from services.tracker.app import build_service
from services.tracker.service import TrackerService

METRIC = "val_recall"
EPOCHS = 10
MODEL_TYPES = {"retrieval": 0.42, "ranking": 0.55, "multitask": 0.50}  # base val_recall
DATASETS = {  # dataset_id: (dataset_name, val_recall shift)
    "ds-clicks-v3": ("clicks", 0.0),
    "ds-purchases-v2": ("purchases", -0.04),
    "ds-views-v5": ("views", 0.03),
    "ds-search-v1": ("search", -0.02),
}
OPTIMIZERS = {"adam": 0.02, "adagrad": 0.01, "sgd": -0.02}
STATUSES = (("FINISHED", 0.85), ("FAILED", 0.07), ("KILLED", 0.04), ("RUNNING", 0.04))
TERMINAL = {
    "FINISHED": run_pb2.RUN_STATUS_FINISHED,
    "FAILED": run_pb2.RUN_STATUS_FAILED,
    "KILLED": run_pb2.RUN_STATUS_KILLED,
}
TABLE_COLUMNS = [
    "run_name",
    "status",
    "params.learning_rate",
    "params.optimizer",
    f"metrics.{METRIC}",
]
DAY_MS = 86_400_000
# The timed calls, in the order they run and print.
LABELS = {
    "dashboard": "GetDashboard (all runs)",
    "dashboard_retrieval": "GetDashboard (model_type=retrieval)",
    "leaderboard": "GetLeaderboard (top 10)",
    "leaderboard_by_model_type": "GetLeaderboard (top 10 per model type)",
    "insights": "GetHyperparameterInsights",
    "suggest": "SuggestExperiments (3)",
    "query_run_table": f"QueryRunTable (all runs x {len(TABLE_COLUMNS)} columns)",
}


@dataclass
class RunPlan:
    """One seeded run: everything it logs, decided up front from its index alone."""

    name: str
    model_type: str
    dataset_id: str
    status: str
    start_ms: int
    end_ms: int
    params: dict[str, str]
    losses: list[float]
    finals: dict[str, float] = field(default_factory=dict)


def plan_run(index: int, runs: int, now_ms: int) -> RunPlan:
    """A run whose val_recall follows its params (best near learning_rate 3e-3, bigger
    embeddings, adam, some dropout), its model type and dataset, plus noise; so insights and
    suggestions have real structure to find."""
    rng = random.Random(index)
    model_type = rng.choice(list(MODEL_TYPES))
    dataset_id = rng.choice(list(DATASETS))
    learning_rate = 10 ** rng.uniform(-4, -1)
    embedding_dim = rng.choice([32, 64, 128, 256])
    optimizer = rng.choice(list(OPTIMIZERS))
    dropout = rng.uniform(0.0, 0.5)
    recall = (
        MODEL_TYPES[model_type]
        + DATASETS[dataset_id][1]
        - 0.03 * (math.log10(learning_rate) + 2.5) ** 2
        + 0.015 * math.log2(embedding_dim / 32)
        + OPTIMIZERS[optimizer]
        - 0.1 * (dropout - 0.2) ** 2
        + rng.gauss(0, 0.015)
    )
    recall = min(max(recall, 0.01), 0.99)
    params = {
        "learning_rate": f"{learning_rate:.6g}",
        "embedding_dim": str(embedding_dim),
        "batch_size": str(rng.choice([256, 512, 1024, 2048])),
        "optimizer": optimizer,
        "epochs": str(EPOCHS),
        "dropout": f"{dropout:.3f}",
        "num_layers": str(rng.choice([1, 2, 3, 4])),
        "weight_decay": f"{10 ** rng.uniform(-6, -3):.3g}",
    }
    draw, status = rng.random(), STATUSES[-1][0]
    for name, share in STATUSES:
        if draw < share:
            status = name
            break
        draw -= share
    # Runs start in index order over the 90 days before yesterday and last 20 to 180 minutes.
    start_ms = now_ms - 91 * DAY_MS + index * (90 * DAY_MS // max(runs, 1))
    start_ms += rng.randrange(60_000)
    end_ms = start_ms + rng.randrange(20, 180) * 60_000
    final_loss = max(0.05, 0.9 - recall + rng.gauss(0, 0.02))
    epochs = EPOCHS if status == "FINISHED" else rng.randrange(1, EPOCHS)
    losses = [
        final_loss + (2.5 - final_loss) * math.exp(-epoch / 2.5) + rng.gauss(0, 0.01)
        for epoch in range(epochs)
    ]
    finals = (
        {METRIC: recall, "val_ndcg": min(0.99, 0.8 * recall + rng.gauss(0, 0.01))}
        if status == "FINISHED"
        else {}
    )
    return RunPlan(
        f"{model_type}-{index:06d}",
        model_type,
        dataset_id,
        status,
        start_ms,
        end_ms,
        params,
        losses,
        finals,
    )


def _timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def seed_run(service: TrackerService, parent: str, plan: RunPlan) -> None:
    """The calls a training job makes, in its order: create, params, metrics, final status."""
    run = service.create_run(
        parent,
        run_pb2.Run(
            run_name=plan.name,
            start_time=_timestamp(plan.start_ms),
            user="bench",
            lineage=lineage_pb2.Lineage(
                model_type=plan.model_type,
                dataset_id=plan.dataset_id,
                dataset_name=DATASETS[plan.dataset_id][0],
            ),
        ),
        request_id="",
    )
    service.log_params(run.name, plan.params)
    epoch_ms = (plan.end_ms - plan.start_ms) // EPOCHS
    points = [
        metric_pb2.Metric(
            key="loss", value=loss, step=step, timestamp=_timestamp(plan.start_ms + step * epoch_ms)
        )
        for step, loss in enumerate(plan.losses)
    ]
    points += [
        metric_pb2.Metric(key=key, value=value, step=EPOCHS - 1, timestamp=_timestamp(plan.end_ms))
        for key, value in plan.finals.items()
    ]
    service.log_metrics(run.name, uuid.uuid4().hex, points)
    if plan.status != "RUNNING":
        service.update_run(
            run_pb2.Run(
                name=run.name,
                status=TERMINAL[plan.status],
                end_time=_timestamp(plan.end_ms),
            ),
            ["status", "end_time"],
        )


def _settings(database_url: str | None, data_dir: Path, **overrides: Any) -> Settings:
    if database_url:
        overrides["database_url"] = database_url
    return load_settings(data_dir=data_dir, **overrides)


# One seeding process's TrackerService and threads (set by _start_seeder).
_seeder: tuple[TrackerService, ThreadPoolExecutor] | None = None
SEED_CHUNK = 250


def _start_seeder(database_url: str | None, data_dir: Path, threads: int) -> None:
    global _seeder
    settings = _settings(database_url, data_dir, auto_migrate=False, worker_threads=threads)
    service, _ = build_service(settings)  # its pool goes when the process exits
    _seeder = service, ThreadPoolExecutor(threads)


def _seed_chunk(parent: str, indices: range, runs: int, now_ms: int) -> int:
    assert _seeder is not None, "runs in a seeding process"
    service, pool = _seeder
    # list(): re-raises the first failure instead of dropping it.
    list(pool.map(lambda i: seed_run(service, parent, plan_run(i, runs, now_ms)), indices))
    return len(indices)


def seed(
    database_url: str | None, data_dir: Path, runs: int, processes: int, threads: int
) -> dict[str, Any]:
    """Seeds the experiment through TrackerService in `processes` processes of `threads`
    threads each; returns its id and the seeding figures.

    The write path is CPU-bound Python (SQLAlchemy, about 26 statements and 4 transactions
    per run), so threads alone stop scaling at one core: processes use the others. SQLite
    takes one writer at a time, and its busy handler's back-off makes concurrent writers
    slower than one."""
    service, database = build_service(_settings(database_url, data_dir))  # migrates
    try:
        experiment = service.create_experiment(
            experiment_pb2.Experiment(
                display_name=f"recsys-sweep-{uuid.uuid4().hex[:6]}",
                description="analytics benchmark: retrieval, ranking and multitask sweeps",
            ),
            request_id="",
        )
        now_ms = int(time.time() * 1000)
        began = time.perf_counter()
        # spawn, not fork: a forked child would inherit this process's connection pool.
        with ProcessPoolExecutor(
            processes,
            mp_context=get_context("spawn"),
            initializer=_start_seeder,
            initargs=(database_url, data_dir, threads),
        ) as pool:
            chunks = [
                pool.submit(
                    _seed_chunk,
                    experiment.name,
                    range(start, min(start + SEED_CHUNK, runs)),
                    runs,
                    now_ms,
                )
                for start in range(0, runs, SEED_CHUNK)
            ]
            seeded = 0
            for chunk in as_completed(chunks):
                seeded += chunk.result()
                if sys.stderr.isatty():
                    print(
                        f"\rseeding: {seeded:,} of {runs:,} runs, "
                        f"{seeded / (time.perf_counter() - began):.0f} runs/s",
                        end="\n" if seeded == runs else "",
                        file=sys.stderr,
                        flush=True,
                    )
        seconds = time.perf_counter() - began
        assert seeded == runs
        seeding: dict[str, Any] = {
            "runs": runs,
            "processes": processes,
            "threads": threads,
            "seconds": seconds,
            "runs_per_s": runs / seconds,
        }
        if database.dialect == "postgresql":
            # Planner statistics. The tables were empty a few minutes ago: until
            # autovacuum's ANALYZE catches up (asynchronously, once enough rows changed)
            # the planner estimates from stale or default statistics, e.g. a handful of
            # rows per table, and may pick nested loops where a hash join over 10k runs is
            # right. A long-lived database has current statistics; so should the
            # benchmark, or it measures a transient plan instead of the steady state.
            began = time.perf_counter()
            with database.engine.begin() as connection:
                connection.execute(text("ANALYZE"))
            seeding["analyze_s"] = time.perf_counter() - began
        seeding["experiment_id"] = experiment.experiment_id
        return seeding
    finally:
        database.dispose()


@contextmanager
def servers(database_url: str | None, data_dir: Path) -> Iterator[dict[str, tuple[str, int]]]:
    """The tracker and analytics, each in its own process, analytics reading the tracker."""
    environment = {"CAIRN_DATABASE_URL": database_url} if database_url else {}
    with (
        service_process("tracker", free_port(), data_dir, environment) as tracker,
        service_process(
            "analytics", free_port(), data_dir, {"CAIRN_TRACKER_ADDRESS": tracker[0]}
        ) as analytics,
    ):
        yield {"tracker": tracker, "analytics": analytics}


@dataclass(frozen=True)
class Workload:
    name: str
    call: Callable[[], Any]
    check: Callable[[Any], bool]
    slow: bool = False


def workloads(
    analytics: Analytics,
    tracker: tracker_service_pb2_grpc.TrackerServiceStub,
    experiment: str,
    runs: int,
) -> list[Workload]:
    """Each timed call, with a check that its answer covers the seeded runs (a benchmark of
    empty answers would be fast and worthless)."""
    scope = [experiment]

    def table() -> run_table_pb2.RunTable:
        request = tracker_pb.QueryRunTableRequest(
            experiment_ids=scope, columns=TABLE_COLUMNS, limit=100_000
        )
        response: run_table_pb2.RunTable = tracker.QueryRunTable(request, timeout=120)
        return response

    return [
        Workload(
            "dashboard",
            lambda: analytics.dashboard(scope, metric=METRIC),
            lambda d: d.kpis[0].run_count == runs and len(d.top_configurations) == 10,
        ),
        Workload(
            "dashboard_retrieval",
            lambda: analytics.dashboard(scope, metric=METRIC, model_type="retrieval"),
            lambda d: 0 < d.kpis[0].run_count < runs and len(d.top_configurations) == 10,
        ),
        Workload(
            "leaderboard",
            lambda: analytics.leaderboard(scope, metric=METRIC, top_k=10),
            lambda b: len(b.groups[0].entries) == 10,
        ),
        Workload(
            "leaderboard_by_model_type",
            lambda: analytics.leaderboard(scope, metric=METRIC, top_k=10, group_by="model_type"),
            lambda b: len(b.groups) == len(MODEL_TYPES),
        ),
        Workload(
            "insights",
            lambda: analytics.insights(scope, metric=METRIC),
            lambda i: i.run_count > 0 and len(i.params) > 0,
            slow=True,
        ),
        Workload(
            "suggest",
            lambda: analytics.suggest(scope, metric=METRIC, count=3, seed=1),
            lambda s: len(s.suggestions) > 0,
            slow=True,
        ),
        Workload(
            "query_run_table",
            table,
            lambda t: len(t.run_ids) == runs and len(t.columns) == len(TABLE_COLUMNS),
        ),
    ]


def run_benchmarks(
    processes: dict[str, tuple[str, int]], experiment: str, runs: int, sizes: dict[str, int]
) -> tuple[dict[str, float], dict[str, int]]:
    figures: dict[str, float] = {}
    samples_taken: dict[str, int] = {}
    with (
        Analytics(processes["analytics"][0]) as analytics,
        grpc.insecure_channel(
            processes["tracker"][0], options=[("grpc.max_receive_message_length", 256 << 20)]
        ) as channel,
    ):
        tracker = tracker_service_pb2_grpc.TrackerServiceStub(channel)  # type: ignore[no-untyped-call]
        for workload in workloads(analytics, tracker, experiment, runs):
            answer = workload.call()  # the warm-up
            if not workload.check(answer):
                raise RuntimeError(f"{workload.name}: unexpected answer over {runs} runs")
            repeat = sizes["slow_repeats"] if workload.slow else sizes["repeats"]
            samples = timed(workload.call, repeat)
            figures[f"{workload.name}_p50_ms"] = statistics.median(samples) * 1000
            figures[f"{workload.name}_p95_ms"] = percentile(samples, 0.95) * 1000
            samples_taken[workload.name] = repeat
    for name, (_, pid) in processes.items():
        figures[f"{name}_rss_mb"] = rss_mb(pid)
    return figures, samples_taken


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench analytics", description="Cairn analytics benchmarks"
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs to seed (default 10,000; 200 with --smoke)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed calls of each (default 10, half as many of insights and suggestions)",
    )
    parser.add_argument(
        "--seed-processes",
        type=int,
        default=None,
        help="seeding processes (default: one per CPU on PostgreSQL, 1 on SQLite)",
    )
    parser.add_argument(
        "--seed-threads",
        type=int,
        default=None,
        help="threads per seeding process (default: 4 on PostgreSQL, 1 on SQLite)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args(argv)
    sizes = (
        {"runs": 200, "repeats": 2, "slow_repeats": 2}
        if options.smoke
        else {"runs": 10_000, "repeats": 10, "slow_repeats": 5}
    )
    if options.runs is not None:
        if options.runs < 20:
            parser.error("--runs: at least 20 (the leaderboards show 10 finished runs)")
        sizes["runs"] = options.runs
    if options.repeat is not None:
        sizes["repeats"] = max(options.repeat, 1)
        sizes["slow_repeats"] = max(options.repeat // 2, 1)
    postgres = options.database == "postgres"
    seed_processes = options.seed_processes or ((os.cpu_count() or 1) if postgres else 1)
    seed_threads = options.seed_threads or (4 if postgres else 1)
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as scratch:
        data_dir = Path(scratch)
        database = postgres_database() if postgres else _no_database()
        with database as url:
            seeding = seed(url, data_dir, sizes["runs"], seed_processes, seed_threads)
            with servers(url, data_dir) as running:
                figures, samples = run_benchmarks(
                    running, seeding["experiment_id"], sizes["runs"], sizes
                )
    figures = {"seed_runs_per_s": seeding["runs_per_s"], **figures}
    result = {
        "database": options.database,
        "sizes": sizes,
        "seeding": seeding,
        "samples": samples,
        "figures": figures,
    }
    if options.json:
        print(json.dumps(result, indent=2))
        return
    _print_report(options.database, "smoke" if options.smoke else "full", result)


@contextmanager
def _no_database() -> Iterator[None]:
    """SQLite: the servers' default database in the data directory."""
    yield None


def _print_report(database: str, mode: str, result: dict[str, Any]) -> None:
    seeding, figures, samples = result["seeding"], result["figures"], result["samples"]
    print(f"Cairn analytics on {database}, {seeding['runs']:,} runs ({mode} sizes)")
    analyzed = f"; ANALYZE {seeding['analyze_s']:.1f} s" if "analyze_s" in seeding else ""
    print(
        f"  seeding   {seeding['seconds']:.1f} s, {seeding['runs_per_s']:.0f} runs/s "
        f"(TrackerService, {_count(seeding['processes'], 'process', 'processes')} x "
        f"{_count(seeding['threads'], 'thread', 'threads')})"
        f"{analyzed}"
    )
    print(f"  {'call':44s} {'n':>4s} {'p50 ms':>10s} {'p95 ms':>10s}")
    for name, label in LABELS.items():
        print(
            f"  {label:44s} {samples[name]:4d} {figures[f'{name}_p50_ms']:10.1f} "
            f"{figures[f'{name}_p95_ms']:10.1f}"
        )
    print(
        f"  server RSS  tracker {figures['tracker_rss_mb']:.0f} MiB, "
        f"analytics {figures['analytics_rss_mb']:.0f} MiB"
    )


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


if __name__ == "__main__":
    main()
