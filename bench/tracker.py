"""Tracker throughput and latency, measured against a real server process on loopback.

    python -m bench                       # SQLite, default sizes
    python -m bench --database postgres   # a fresh PostgreSQL database (127.0.0.1:5432)
    python -m bench --smoke               # tiny sizes: checks the script works (CI)
    python -m bench analytics ...         # the analytics benchmarks (bench/analytics.py)

Prints a readable table and, with --json, the figures as JSON. Workloads:
  runs      create runs, each with 10 params and 5 metrics, through the SDK (runs/s)
  ingest    bulk-ingest points into one run through StreamMetrics (points/s)
  log       single-point LogMetrics calls (calls/s, p50/p99 latency)
  search    metrics.accuracy > 0.5 AND params.model = 'xgb' ORDER BY metrics.accuracy DESC,
            100 results (p50/p99)
  history   the full history of the ingested metric (p50)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cairn
from bench.common import free_port, percentile, postgres_database, rss_mb, service_process, timed
from cairn.tracker.v1 import metric_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb


@contextmanager
def tracker_process(database_url: str | None, data_dir: Path) -> Iterator[tuple[str, int]]:
    environment = {"CAIRN_DATABASE_URL": database_url} if database_url else {}
    with service_process("tracker", free_port(), data_dir, environment) as server:
        yield server


def run_benchmarks(address: str, pid: int, sizes: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with cairn.Tracker(address) as tracker:
        experiment = f"bench-{uuid.uuid4().hex[:6]}"
        rng = random.Random(7)

        began = time.perf_counter()
        for i in range(sizes["runs"]):
            tracker.start_run(experiment, run_name=f"r{i}", capture_environment=False)
            tracker.log_params(
                {
                    "model": rng.choice(["xgb", "rf", "lr"]),
                    **{f"p{j}": rng.random() for j in range(9)},
                }
            )
            tracker.log_metrics(
                {"accuracy": rng.random(), **{f"m{j}": rng.random() for j in range(4)}}
            )
            tracker.end_run()
        elapsed = time.perf_counter() - began
        figures["runs_per_s"] = sizes["runs"] / elapsed

        run = tracker.start_run(experiment, run_name="ingest", capture_environment=False)
        points = [("loss", rng.random(), step) for step in range(sizes["points"])]
        began = time.perf_counter()
        stored = tracker.stream_metrics(points, batch_size=10_000)
        figures["ingest_points_per_s"] = stored / (time.perf_counter() - began)

        stub, metadata = tracker.stub, tracker.metadata
        counter = iter(range(10**9))

        def log_one() -> None:
            step = next(counter)
            stub.LogMetrics(
                pb.LogMetricsRequest(
                    run=run.name,
                    batch_id=uuid.uuid4().hex,
                    metrics=[metric_pb2.Metric(key="single", value=1.0, step=step)],
                ),
                metadata=metadata,
            )

        samples = timed(log_one, sizes["log_calls"])
        figures["log_metric_calls_per_s"] = len(samples) / sum(samples)
        figures["log_metric_p50_ms"] = statistics.median(samples) * 1000
        figures["log_metric_p99_ms"] = percentile(samples, 0.99) * 1000

        experiment_id = tracker.get_experiment(experiment).experiment_id

        def search() -> None:
            stub.SearchRuns(
                pb.SearchRunsRequest(
                    experiment_ids=[experiment_id],
                    filter="metrics.accuracy > 0.5 AND params.model = 'xgb'",
                    order_by="metrics.accuracy DESC",
                    page_size=100,
                ),
                metadata=metadata,
            )

        samples = timed(search, sizes["searches"])
        figures["search_p50_ms"] = statistics.median(samples) * 1000
        figures["search_p99_ms"] = percentile(samples, 0.99) * 1000

        def history() -> None:
            token = ""
            while True:
                response = stub.ListMetricHistory(
                    pb.ListMetricHistoryRequest(
                        run=run.name, metric_key="loss", page_size=100_000, page_token=token
                    ),
                    metadata=metadata,
                )
                token = response.next_page_token
                if not token:
                    return

        samples = timed(history, sizes["histories"])
        figures["history_p50_ms"] = statistics.median(samples) * 1000
    figures["server_rss_mb"] = rss_mb(pid)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Cairn tracker benchmarks",
        epilog="The analytics benchmarks: python -m bench analytics --help",
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args(argv)
    sizes = (
        {"runs": 20, "points": 2_000, "log_calls": 50, "searches": 5, "histories": 2}
        if options.smoke
        else {"runs": 1_000, "points": 100_000, "log_calls": 2_000, "searches": 50, "histories": 10}
    )
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as scratch:
        if options.database == "postgres":
            with postgres_database() as url, tracker_process(url, Path(scratch)) as (address, pid):
                figures = run_benchmarks(address, pid, sizes)
        else:
            with tracker_process(None, Path(scratch)) as (address, pid):
                figures = run_benchmarks(address, pid, sizes)
    result = {"database": options.database, "sizes": sizes, "figures": figures}
    if options.json:
        print(json.dumps(result, indent=2))
        return
    mode = "smoke" if options.smoke else "full"
    print(f"Cairn tracker on {options.database} ({mode} sizes: {sizes})")
    for name, value in figures.items():
        print(f"  {name:28s} {value:12.2f}")


if __name__ == "__main__":
    main()
