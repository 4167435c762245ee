"""Cairn against MLflow's tracking server, side by side, on the same machine and database kind.

    python -m bench compare                       # SQLite, default sizes; writes bench/RESULTS.md
    python -m bench compare --database postgres   # fresh PostgreSQL databases (127.0.0.1:5432)
    python -m bench compare --smoke               # tiny sizes: checks the script works
    python -m bench compare --json                # the figures as JSON

MLflow's server is installed from PyPI into its own virtual environment (.bench/mlflow-venv
at the repository root, reused when present; never the project's environment) and started
with `--workers 1`: with several workers uvicorn does not set TCP_NODELAY and each reused
connection stalls about 40 ms (uvicorn issue #3149), so one worker is MLflow at its best for
a single client. Cairn runs as `cairn up` (tracker, analytics and the REST gateway).

Three clients run the same workloads, one workload at a time, the systems taking turns (the
order rotates from one workload to the next):
  mlflow          MLflow's Python client against MLflow's server
  cairn           Cairn's SDK (cairn.Tracker) against Cairn's tracker
  cairn_mlflow    MLflow's Python client against Cairn's gateway (/api/2.0/mlflow)
Workloads:
  runs      create runs, each with 10 params and 5 metrics (runs/s)
  log       single-point log_metric calls, each stored before the next (calls/s, p50/p99)
  ingest    bulk ingest of points into one run: MLflow log_batch of 1,000 points per call,
            Cairn's SDK its streaming ingest (points/s)
  ingest-x4 the same points by 4 concurrent writers, a quarter each into a run of its own
  copy      (PostgreSQL only) the database's limit: the points COPYed by psycopg straight into
            a table shaped like Cairn's metrics; Cairn's ingest as a share of it
  search    metrics.accuracy > 0.5 AND params.model = 'xgb' ORDER BY metrics.accuracy DESC,
            100 results, over the runs created above (p50/p99)
  noop      a request that does nothing (MLflow: GET /health; Cairn's SDK: the gRPC health
            check on its channel), the round trip under every call (p50)
  history   the full history of the bulk-ingested metric, its values in hand (p50); and
            (Cairn's SDK only) with every point built as a MetricPoint object
  history-1m (Cairn's SDK only) the full history of a metric of 1,000,000 points, streamed in
            by the SDK's ingest (p50 of fewer reads)
  memory    resident memory of each server's whole process tree after the workload
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import cairn
from bench import seed
from bench.common import (
    _serving,
    checkpoint,
    free_port,
    percentile,
    postgres_database,
    timed,
)

ROOT = Path(__file__).resolve().parent.parent
MLFLOW_VENV = ROOT / ".bench" / "mlflow-venv"
# The MLflow release the comparison installs; bump deliberately (RESULTS.md records it).
MLFLOW_REQUIREMENT = "mlflow==3.17.2"
START_TIMEOUT_S = 180.0
SYSTEMS = ("mlflow", "cairn", "cairn_mlflow")
LABELS = {
    "mlflow": "MLflow",
    "cairn": "Cairn SDK",
    "cairn_mlflow": "Cairn via MLflow client",
}
SEARCH_FILTER = "metrics.accuracy > 0.5 AND params.model = 'xgb'"
SEARCH_ORDER = "metrics.accuracy DESC"
MLFLOW_BATCH = 1_000
# Searches over the bulk-seeded runs stop after this many seconds (at least one each).
SCALE_SEARCH_BUDGET_S = 60.0
# Concurrent writers of the ingest-x4 workload.
WRITERS = 4

# (figure, unit, higher is better)
FIGURES: list[tuple[str, str, bool]] = [
    ("runs_per_s", "runs/s", True),
    ("log_metric_calls_per_s", "calls/s", True),
    ("log_metric_p50_ms", "ms", False),
    ("log_metric_p99_ms", "ms", False),
    ("noop_request_p50_ms", "ms", False),
    ("ingest_points_per_s", "points/s", True),
    ("ingest_4_writers_points_per_s", "points/s", True),
    ("search_p50_ms", "ms", False),
    ("search_p99_ms", "ms", False),
    ("history_p50_ms", "ms", False),
    ("history_points_p50_ms", "ms", False),
    ("history_1m_p50_ms", "ms", False),
    ("server_rss_mb", "MiB", False),
]
# Figures only Cairn's SDK is measured on (no ratio to MLflow).
CAIRN_SDK_ONLY = frozenset({"history_points_p50_ms", "history_1m_p50_ms"})


# ---------------------------------------------------------------------------- processes


def mlflow_server_binary(postgres: bool) -> Path:
    """MLflow's `mlflow` executable in its own virtual environment, installed on first use."""
    python = MLFLOW_VENV / "bin" / "python"
    binary = MLFLOW_VENV / "bin" / "mlflow"
    if not python.exists():
        print(f"creating {MLFLOW_VENV} ...", file=sys.stderr)
        MLFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3.11", "-m", "venv", str(MLFLOW_VENV)], check=True)
    wanted = [MLFLOW_REQUIREMENT] if not binary.exists() else []
    if postgres and not _importable(python, "psycopg2"):
        wanted.append("psycopg2-binary==2.9.*")
    if wanted:
        print(f"installing {' '.join(wanted)} into {MLFLOW_VENV} ...", file=sys.stderr)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *wanted,
            ],
            check=True,
        )
    return binary


def _importable(python: Path, module: str) -> bool:
    probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def mlflow_server_version() -> str:
    result = subprocess.run(
        [str(MLFLOW_VENV / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def _process(
    name: str, command: list[str], env: dict[str, str], log_path: Path, health_urls: list[str]
) -> Iterator[int]:
    """A server in its own session (so its whole tree is stopped afterwards); yields its pid
    once every health URL answers 200."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(_http_ok(url) for url in health_urls):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not start:\n" + log_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.2)
        try:
            yield process.pid
        except BaseException:
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            print(f"--- last lines of the {name} log:", *tail, sep="\n", file=sys.stderr)
            raise
    finally:
        # The session's group: MLflow's server runs uvicorn in child processes.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def mlflow_server(database_url: str, scratch: Path, postgres: bool) -> Iterator[tuple[str, int]]:
    """MLflow's tracking server with one worker; yields its URL and pid."""
    binary = mlflow_server_binary(postgres)
    port = free_port()
    command = [
        str(binary),
        "server",
        *("--backend-store-uri", database_url),
        *("--default-artifact-root", (scratch / "mlflow-artifacts").as_uri()),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "MLFLOW_"))}
    env["PATH"] = f"{binary.parent}{os.pathsep}{env.get('PATH', '')}"
    url = f"http://127.0.0.1:{port}"
    with _process("mlflow", command, env, scratch / "mlflow.log", [f"{url}/health"]) as pid:
        yield url, pid


@contextmanager
def cairn_stack(database_url: str | None, scratch: Path) -> Iterator[tuple[str, str, int]]:
    """`cairn up` on free loopback ports; yields the tracker address, gateway URL and pid."""
    tracker_port, gateway_port = free_port(), free_port()
    data_dir = scratch / "cairn"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CAIRN_DATA_DIR": str(data_dir),
        "CAIRN_HOST": "127.0.0.1",
        "CAIRN_TRACKER_PORT": str(tracker_port),
        # Every service on a port of its own: two runs at once (CI's workers) never collide.
        "CAIRN_ANALYTICS_PORT": str(free_port()),
        "CAIRN_SCHEDULER_PORT": str(free_port()),
        "CAIRN_LOGPROXY_PORT": str(free_port()),
        "CAIRN_GATEWAY_PORT": str(gateway_port),
        "CAIRN_TRACKER_METRICS_PORT": "0",
        "CAIRN_ANALYTICS_METRICS_PORT": "0",
        "CAIRN_SCHEDULER_METRICS_PORT": "0",
        "CAIRN_LOGPROXY_METRICS_PORT": "0",
        "CAIRN_LOG_LEVEL": "WARNING",
    }
    if database_url:
        env["CAIRN_DATABASE_URL"] = database_url
    gateway = f"http://127.0.0.1:{gateway_port}"
    command = [sys.executable, "-m", "cairn.cli", "up"]
    with _process("cairn", command, env, scratch / "cairn.log", [f"{gateway}/healthz"]) as pid:
        address = f"127.0.0.1:{tracker_port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _serving(address):
            if time.monotonic() > deadline:
                raise RuntimeError("Cairn's tracker did not report SERVING")
            time.sleep(0.1)
        yield address, gateway, pid


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (psutil when installed,
    /proc otherwise; NaN where neither works)."""
    try:
        psutil: Any = importlib.import_module("psutil")
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
            return float(sum(p.memory_info().rss for p in processes)) / (1 << 20)
        except psutil.Error:
            return float("nan")
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces: fields after the last ')'.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree.add(child)
                frontier.append(child)
    total_kb = 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024 if total_kb else float("nan")


# ---------------------------------------------------------------------------- clients


class MlflowTarget:
    """MLflow's own Python client (REST) against a tracking server: MLflow's, or Cairn's
    gateway."""

    def __init__(self, url: str, experiment_id: str | None = None) -> None:
        """A client on a new experiment, or on `experiment_id`."""
        # Otherwise set_terminated prints the run's URL, after an extra GetRun request.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=url)
        self.noop_session: Any = None
        self.experiment_id = experiment_id or self.client.create_experiment(
            f"bench-{uuid.uuid4().hex[:8]}"
        )

    def create_run(self, name: str, params: dict[str, str], metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric, Param

        run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_batch(
            run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()], synchronous=True
        )
        self.client.set_terminated(run_id)

    def start_run(self, name: str) -> str:
        return str(self.client.create_run(self.experiment_id, run_name=name).info.run_id)

    def log_metric_call(self, run_id: str) -> Callable[[], None]:
        counter = iter(range(10**9))

        def call() -> None:
            self.client.log_metric(run_id, "single", 1.0, step=next(counter), synchronous=True)

        return call

    def ingest(self, run_id: str, values: list[float]) -> int:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for start in range(0, len(values), MLFLOW_BATCH):
            chunk = values[start : start + MLFLOW_BATCH]
            self.client.log_batch(
                run_id,
                metrics=[Metric("loss", v, now, start + i) for i, v in enumerate(chunk)],
                synchronous=True,
            )
        return len(values)

    def search(self) -> int:
        return self.search_in(self.experiment_id)

    def new_experiment(self) -> str:
        """An experiment for seeded runs; its id."""
        return str(self.client.create_experiment(f"bench-seeded-{uuid.uuid4().hex[:8]}"))

    def search_in(self, experiment: str) -> int:
        runs = self.client.search_runs(
            [experiment], SEARCH_FILTER, order_by=[SEARCH_ORDER], max_results=100
        )
        return len(runs)

    def history(self, run_id: str) -> int:
        return len(self.client.get_metric_history(run_id, "loss"))

    def noop_call(self) -> Callable[[], None] | None:
        """GET /health on a kept-alive connection (as the client's own requests session), or
        None against Cairn's gateway (it has no such no-op route: its /healthz asks the
        services behind it)."""
        import requests

        url = self.client.tracking_uri
        session = self.noop_session = requests.Session()
        if session.get(f"{url}/health", timeout=10).status_code != 200:
            return None

        def call() -> None:
            session.get(f"{url}/health", timeout=10).raise_for_status()

        return call

    def writer(self) -> MlflowTarget:
        """Another client on the same experiment (one per concurrent writer)."""
        return MlflowTarget(self.client.tracking_uri, self.experiment_id)

    def close(self) -> None:
        if self.noop_session is not None:
            self.noop_session.close()


class CairnTarget:
    """Cairn's own SDK against its tracker."""

    def __init__(self, address: str, experiment: str | None = None) -> None:
        """A client on a new experiment, or on `experiment` (a name)."""
        self.address = address
        self.seeded_ids: dict[str, str] = {}
        self.noop_channel: Any = None
        self.tracker = cairn.Tracker(address, capture_environment=False)
        self.experiment = experiment or f"bench-{uuid.uuid4().hex[:8]}"
        if experiment is None:
            self.tracker.create_experiment(self.experiment)

    def create_run(self, name: str, params: dict[str, str], metrics: dict[str, float]) -> None:
        self.tracker.start_run(self.experiment, run_name=name)
        self.tracker.log_params(params)
        self.tracker.log_metrics(metrics)
        self.tracker.end_run()  # flushes the metrics: they are stored when it returns

    def start_run(self, name: str) -> str:
        return self.tracker.start_run(self.experiment, run_name=name).run_id

    def log_metric_call(self, run_id: str) -> Callable[[], None]:
        # The SDK's log_metric only queues a point; the synchronous single-point call is the
        # LogMetrics RPC on the SDK's own stub (one point, stored when it returns).
        from cairn.tracker.v1 import metric_pb2
        from cairn.tracker.v1 import tracker_service_pb2 as pb

        stub, metadata = self.tracker.stub, self.tracker.metadata
        name = f"experiments/-/runs/{run_id}"
        counter = iter(range(10**9))

        def call() -> None:
            stub.LogMetrics(
                pb.LogMetricsRequest(
                    run=name,
                    batch_id=uuid.uuid4().hex,
                    metrics=[metric_pb2.Metric(key="single", value=1.0, step=next(counter))],
                ),
                metadata=metadata,
            )

        return call

    def ingest(self, run_id: str, values: list[float]) -> int:
        points = [("loss", v, step) for step, v in enumerate(values)]
        return self.tracker.stream_metrics(points, run_id=run_id, batch_size=10_000)

    def search(self) -> int:
        return self.search_in(self.experiment)

    def new_experiment(self) -> str:
        """An experiment for seeded runs; its name (the SDK searches by name)."""
        name = f"bench-seeded-{uuid.uuid4().hex[:8]}"
        self.seeded_ids[name] = self.tracker.create_experiment(name).experiment_id
        return name

    def search_in(self, experiment: str) -> int:
        runs = self.tracker.search_runs(
            experiment, SEARCH_FILTER, order_by=SEARCH_ORDER, max_results=100
        )
        return len(runs)

    def history(self, run_id: str) -> int:
        """The points' values in hand as Python floats (the SDK's history keeps the columns
        it received and builds MetricPoint objects only when they are read)."""
        return len(self.tracker.get_metric_history(run_id, "loss").values())

    def history_points(self, run_id: str) -> int:
        """The history with every point built as a MetricPoint (a datetime each)."""
        return len(list(self.tracker.get_metric_history(run_id, "loss")))

    def noop_call(self) -> Callable[[], None] | None:
        """The gRPC health check to the tracker, on a channel like the SDK's."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.noop_channel = grpc.insecure_channel(self.address)
        stub = health_pb2_grpc.HealthStub(self.noop_channel)
        request = health_pb2.HealthCheckRequest(service="")

        def call() -> None:
            stub.Check(request, timeout=10)

        return call

    def writer(self) -> CairnTarget:
        """Another SDK client on the same experiment (one per concurrent writer)."""
        return CairnTarget(self.address, self.experiment)

    def close(self) -> None:
        self.tracker.close()
        if self.noop_channel is not None:
            self.noop_channel.close()


Target = MlflowTarget | CairnTarget


# ---------------------------------------------------------------------------- workloads


def _rotations(turn: int, systems: list[str]) -> list[str]:
    """The order the systems take for the turn-th workload: each goes first in turn."""
    shift = turn % len(systems)
    return systems[shift:] + systems[:shift]


def sizes_scales(sizes: dict[str, Any]) -> list[int]:
    return [int(scale) for scale in sizes["scales"]]


def seed_all(targets: dict[str, Target], seeding: Seeding, count: int) -> dict[str, str]:
    """The same `count` runs bulk-inserted into each system's database (bench/seed.py), in
    an experiment of each; the experiment each client searches."""
    experiments: dict[str, str] = {}
    print(f"  seeding  {count:,} runs into each system", file=sys.stderr, flush=True)
    if "mlflow" in targets:
        experiments["mlflow"] = targets["mlflow"].new_experiment()
        seed.seed_mlflow(seeding.mlflow_url, experiments["mlflow"], count)
    cairn_target = targets["cairn"]
    assert isinstance(cairn_target, CairnTarget)
    name = cairn_target.new_experiment()
    seed.seed_cairn(seeding.cairn_url, cairn_target.seeded_ids[name], count)
    experiments["cairn"] = name
    # The MLflow client searches Cairn's seeded experiment through the gateway, by its id.
    experiments["cairn_mlflow"] = cairn_target.seeded_ids[name]
    return experiments


@dataclass(frozen=True)
class Seeding:
    """Where each system's database is, for bulk seeding."""

    mlflow_url: str
    cairn_url: str


def run_workloads(
    targets: dict[str, Target],
    sizes: dict[str, Any],
    seeding: Seeding | None = None,
    settle: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, float]]:
    """The workloads against each system in turns; `settle` runs before each timed write
    round (PostgreSQL: a CHECKPOINT, so every round starts from the same state)."""
    systems = [system for system in SYSTEMS if system in targets]
    figures: dict[str, dict[str, float]] = {system: {} for system in systems}
    rng = random.Random(7)
    run_specs = [
        (
            {
                "model": rng.choice(["xgb", "rf", "lr"]),
                **{f"p{j}": f"{rng.random():.6f}" for j in range(9)},
            },
            {"accuracy": rng.random(), **{f"m{j}": rng.random() for j in range(4)}},
        )
        for _ in range(sizes["runs"])
    ]
    values = [rng.random() for _ in range(sizes["points"])]
    history_runs: dict[str, str] = {}
    turn = 0

    def progress(workload: str, system: str) -> None:
        print(f"  {workload:8s} {LABELS[system]}", file=sys.stderr, flush=True)

    # Warm-up, untimed: first requests pay for lazy imports and connection set-up. The run
    # has no params or metrics, so the search never finds it.
    for system in systems:
        target = targets[system]
        target.log_metric_call(target.start_run("warm-up"))()
        target.search()

    for system in _rotations(turn, systems):
        progress("runs", system)
        target = targets[system]
        began = time.perf_counter()
        for i, (params, metrics) in enumerate(run_specs):
            target.create_run(f"r{i}", params, metrics)
        figures[system]["runs_per_s"] = len(run_specs) / (time.perf_counter() - began)
    turn += 1

    for system in _rotations(turn, systems):
        progress("log", system)
        target = targets[system]
        call = target.log_metric_call(target.start_run("log"))
        samples = timed(call, sizes["log_calls"])
        figures[system]["log_metric_calls_per_s"] = len(samples) / sum(samples)
        figures[system]["log_metric_p50_ms"] = statistics.median(samples) * 1000
        figures[system]["log_metric_p99_ms"] = percentile(samples, 0.99) * 1000
    turn += 1

    for system in _rotations(turn, systems):
        noop = targets[system].noop_call()
        if noop is not None:
            progress("noop", system)
            noop()
            samples = timed(noop, sizes["log_calls"])
            figures[system]["noop_request_p50_ms"] = statistics.median(samples) * 1000
    turn += 1

    # A single ingest lasts well under a second for Cairn: one sample swung by a third between
    # runs (a checkpoint, autovacuum), so the figure is the median of several rounds, the
    # systems alternating within each.
    rates: dict[str, list[float]] = {system: [] for system in systems}
    for round_number in range(sizes["ingests"]):
        for system in _rotations(turn + round_number, systems):
            progress("ingest", system)
            target = targets[system]
            run_id = target.start_run(f"ingest-{round_number}")
            settle()
            began = time.perf_counter()
            stored = target.ingest(run_id, values)
            rates[system].append(stored / (time.perf_counter() - began))
            history_runs[system] = run_id
    for system in systems:
        figures[system]["ingest_points_per_s"] = statistics.median(rates[system])
    turn += 1

    for system in _rotations(turn, systems):
        progress("ingest-x4", system)
        settle()
        figures[system]["ingest_4_writers_points_per_s"] = concurrent_ingest(
            targets[system], values, WRITERS
        )
    turn += 1

    for system in _rotations(turn, systems):
        progress("search", system)
        target = targets[system]
        found = target.search()
        if found == 0:
            raise RuntimeError(f"{LABELS[system]}: the search found no run")
        samples = timed(target.search, sizes["searches"])
        figures[system]["search_p50_ms"] = statistics.median(samples) * 1000
        figures[system]["search_p99_ms"] = percentile(samples, 0.99) * 1000
    turn += 1

    for scale in sizes_scales(sizes) if seeding is not None else []:
        assert seeding is not None
        experiments = seed_all(targets, seeding, scale)
        expected = min(100, seed.matching(scale))
        for system in _rotations(turn, systems):
            progress(f"search@{scale:,}", system)
            target, experiment = targets[system], experiments[system]
            found = target.search_in(experiment)
            if found != expected:
                raise RuntimeError(f"{LABELS[system]}: the search found {found} of {expected} runs")
            samples = timed(
                partial(target.search_in, experiment),
                sizes["scale_searches"],
                budget_s=SCALE_SEARCH_BUDGET_S,
                least=1,
            )
            figures[system][f"search_{scale}_p50_ms"] = statistics.median(samples) * 1000
        turn += 1

    for system in _rotations(turn, systems):
        progress("history", system)
        target = targets[system]
        run_id = history_runs[system]
        got = target.history(run_id)
        if got != len(values):
            raise RuntimeError(f"{LABELS[system]}: history holds {got} of {len(values)} points")
        samples = timed(partial(target.history, run_id), sizes["histories"])
        figures[system]["history_p50_ms"] = statistics.median(samples) * 1000
        if isinstance(target, CairnTarget):
            samples = timed(partial(target.history_points, run_id), sizes["histories"])
            figures[system]["history_points_p50_ms"] = statistics.median(samples) * 1000

    if "cairn" in targets:
        figures["cairn"]["history_1m_p50_ms"] = long_history(
            targets["cairn"], sizes["long_history_points"], sizes["long_histories"]
        )
    return figures


def long_history(target: Target, points: int, reads: int) -> float:
    """p50 ms of reading the full history of a metric of `points` points, ingested into a
    run of its own like the ingest workload."""
    print(f"  {'history-1m':8s} {LABELS['cairn']} ({points:,} points)", file=sys.stderr, flush=True)
    rng = random.Random(11)
    values = [rng.random() for _ in range(points)]
    run_id = target.start_run("long-history")
    stored = target.ingest(run_id, values)
    got = target.history(run_id)
    if stored != points or got != points:
        raise RuntimeError(f"long history: {stored} stored, {got} read of {points} points")
    return statistics.median(timed(partial(target.history, run_id), reads)) * 1000


def concurrent_ingest(target: Target, values: list[float], writers: int) -> float:
    """`writers` clients at once, each ingesting its share of the points into a run of its
    own; points stored per second over the whole (the slowest writer ends it)."""
    clients = [target.writer() for _ in range(writers)]
    runs = [client.start_run(f"ingest-writer-{i}") for i, client in enumerate(clients)]
    share = len(values) // writers
    start = threading.Barrier(writers + 1)

    def write(index: int) -> int:
        start.wait()
        return clients[index].ingest(runs[index], values[index * share : (index + 1) * share])

    with ThreadPoolExecutor(max_workers=writers) as pool:
        futures = [pool.submit(write, i) for i in range(writers)]
        start.wait()
        began = time.perf_counter()
        stored = sum(future.result() for future in futures)
        elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    return stored / elapsed


def copy_limit(database_url: str, values: list[float]) -> float:
    """The database's own limit: the same points COPYed by psycopg straight into a table
    shaped and indexed like Cairn's metrics table (no service, no client in between);
    points per second, commit included."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    now = int(time.time() * 1000)
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE copy_limit (LIKE metrics INCLUDING ALL)")
        connection.commit()
        began = time.perf_counter()
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY copy_limit (run_id, key, step, timestamp, value) FROM STDIN") as copy,
        ):
            for step, value in enumerate(values):
                copy.write_row(("copy-limit-run", "loss", step, now, value))
        connection.commit()
        elapsed = time.perf_counter() - began
        connection.execute("DROP TABLE copy_limit")
        connection.commit()
    return len(values) / elapsed


# ---------------------------------------------------------------------------- reporting


def _format(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(figure: str, higher_better: bool, figures: dict[str, dict[str, float]]) -> float | None:
    """How many times better Cairn's SDK is than MLflow on this figure (> 1: Cairn is better)."""
    mlflow, cairn_sdk = figures.get("mlflow", {}).get(figure), figures["cairn"].get(figure)
    if not mlflow or not cairn_sdk:
        return None
    return cairn_sdk / mlflow if higher_better else mlflow / cairn_sdk


def figure_list(figures: dict[str, dict[str, float]]) -> list[tuple[str, str, bool]]:
    """FIGURES plus the search-at-scale figures this run measured, in order of scale."""
    measured = {name for values in figures.values() for name in values}
    scaled = sorted(
        (
            name
            for name in measured
            if name.startswith("search_")
            and name.endswith("_p50_ms")
            and name.split("_")[1].isdigit()
        ),
        key=lambda name: int(name.split("_")[1]),
    )
    listed = list(FIGURES)
    at = next(i for i, (name, _, _) in enumerate(listed) if name == "search_p99_ms") + 1
    return listed[:at] + [(name, "ms", False) for name in scaled] + listed[at:]


def table(figures: dict[str, dict[str, float]]) -> str:
    systems = [s for s in SYSTEMS if s in figures]
    header = ["figure", "unit", *(LABELS[s] for s in systems), "Cairn SDK vs MLflow"]
    rows = [header]
    for figure, unit, higher_better in figure_list(figures):
        better = ratio(figure, higher_better, figures)
        if better is not None:
            versus = f"{better:.1f}x {'better' if better >= 1 else 'worse'}"
        else:
            versus = "" if figure in CAIRN_SDK_ONLY else "-"
        rows.append([figure, unit, *(_format(figures[s].get(figure)) for s in systems), versus])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append(
                "|"
                + "|".join(
                    "-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(lines)


def limit_line(limit: dict[str, float]) -> str:
    return (
        f"\nThe database's limit: {limit['copy_points_per_s']:,.0f} points/s COPYed by psycopg "
        f"straight into a table shaped like Cairn's metrics; Cairn SDK's ingest is "
        f"{limit['cairn_ingest_share_of_copy']:.0%} of that."
    )


def machine() -> str:
    model, cpus = platform.processor() or platform.machine(), os.cpu_count() or 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpus} CPUs, {model}, {platform.system()} {platform.release()}"


def versions(with_mlflow: bool = True) -> dict[str, str]:
    import importlib.metadata as metadata

    found = {"cairn": metadata.version("cairn") if _has("cairn") else "unknown"}
    found["mlflow_server"] = mlflow_server_version() if with_mlflow else "not run"
    found["mlflow_client"] = metadata.version("mlflow-skinny") if _has("mlflow-skinny") else "?"
    found["python"] = platform.python_version()
    return found


def _has(distribution: str) -> bool:
    import importlib.metadata as metadata

    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


RESULTS_HEADER = """# Cairn against MLflow: benchmark results

Regenerated by `python -m bench compare` (SQLite) and `python -m bench compare --database
postgres` (bench/compare.py), each run rewriting its own section; do not edit by hand.
"""
DATABASE_TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def write_results(result: dict[str, Any]) -> Path:
    """Rewrites this run's database section of RESULTS.md, keeping the other's."""
    path = Path(__file__).resolve().parent / "RESULTS.md"
    sections = {database: "" for database in DATABASE_TITLES}
    if path.exists():
        text = path.read_text()
        for database, title in DATABASE_TITLES.items():
            marker = f"\n## {title}\n"
            if marker in text:
                rest = text.split(marker, 1)[1]
                sections[database] = marker + rest.split("\n## ", 1)[0].rstrip("\n") + "\n"
    sections[result["database"]] = "\n" + section(result)
    path.write_text(RESULTS_HEADER + "".join(sections.values()))
    return path


def section(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    v = result["versions"]
    command = "python -m bench compare" + (
        " --database postgres" if result["database"] == "postgres" else ""
    )
    limit = result["limit"]
    return f"""## {DATABASE_TITLES[result["database"]]}

`{command}`

- date: {result["date"]}
- machine: {result["machine"]}
- database: {result["database"]} (each system its own fresh database)
- versions: cairn {v["cairn"]}, MLflow server {v["mlflow_server"]} (own virtual environment,
  `--workers 1`: with more workers uvicorn leaves TCP_NODELAY unset and each reused connection
  stalls about 40 ms, uvicorn issue #3149), MLflow client (mlflow-skinny) {v["mlflow_client"]},
  Python {v["python"]}
- sizes: {sizes["runs"]:,} runs created (10 params, 5 metrics each); {sizes["log_calls"]:,}
  single-point log_metric calls; {sizes["points"]:,} points bulk-ingested into one run (MLflow
  client: log_batch of {MLFLOW_BATCH:,}; Cairn SDK: streaming ingest; the median of
  {sizes["ingests"]} rounds, as is the COPY limit; on PostgreSQL each round after a
  CHECKPOINT), and again by {WRITERS}
  concurrent writers (each a client of its own, a quarter of the points into its own run);
  search over the {sizes["runs"]:,} runs repeated {sizes["searches"]} times, and over
  {" and ".join(f"{n:,}" for n in sizes["scales"])} runs bulk-seeded by SQL into each system's own
  schema (bench/seed.py) repeated {sizes["scale_searches"]} times (fewer, at least once,
  when a system has spent {SCALE_SEARCH_BUDGET_S:.0f} s on them); full history of the
  {sizes["points"]:,}-point metric read {sizes["histories"]} times, and (Cairn SDK only:
  history_1m) of a {sizes["long_history_points"]:,}-point metric streamed in by its SDK, read
  {sizes["long_histories"]} times
- systems: **MLflow** = MLflow's Python client against MLflow's server; **Cairn SDK** =
  `cairn.Tracker` against `cairn up`; **Cairn via MLflow client** = MLflow's Python client
  against Cairn's REST gateway. Memory is RSS summed over each server's process tree after
  the workload. Ratios are Cairn SDK against MLflow (> 1x: Cairn is better).

{table(result["figures"])}
{limit_line(limit) if limit else ""}
"""


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare", description="Cairn against MLflow's tracking server"
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--without-mlflow",
        action="store_true",
        help="Cairn only (its SDK and the MLflow client against its gateway): no MLflow "
        "server to install; what CI's smoke run uses",
    )
    for name in (
        *("runs", "log-calls", "points", "ingests", "searches", "histories", "scale-searches"),
        *("long-history-points", "long-histories"),
    ):
        parser.add_argument(f"--{name}", type=int, default=None, help="override a size")
    parser.add_argument(
        "--scales",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=None,
        help="bulk-seeded run counts to search over, e.g. 10000,100000 (empty: none)",
    )
    options = parser.parse_args(argv)
    sizes: dict[str, Any] = (
        {
            **{"runs": 20, "log_calls": 20, "points": 2_000, "searches": 3, "histories": 2},
            **{"ingests": 1},
            **{"scales": [300], "scale_searches": 2},
            **{"long_history_points": 5_000, "long_histories": 2},
        }
        if options.smoke
        else {
            **{"runs": 1_000, "log_calls": 1_000, "points": 100_000, "searches": 50},
            **{"ingests": 3},
            **{"histories": 5, "scales": [10_000, 100_000], "scale_searches": 10},
            **{"long_history_points": 1_000_000, "long_histories": 3},
        }
    )
    for name in sizes:
        override = getattr(options, name)
        if override is not None:
            sizes[name] = override
    postgres = options.database == "postgres"
    with tempfile.TemporaryDirectory(prefix="cairn-compare-") as tmp, ExitStack() as stack:
        scratch = Path(tmp)
        if postgres:
            mlflow_url = stack.enter_context(postgres_database()).replace(
                "postgresql+psycopg://", "postgresql+psycopg2://"
            )
            cairn_url: str | None = stack.enter_context(postgres_database())
        else:
            mlflow_url, cairn_url = f"sqlite:///{scratch / 'mlflow.db'}", None
        with_mlflow = not options.without_mlflow
        print("starting MLflow's server and Cairn ...", file=sys.stderr, flush=True)
        targets: dict[str, Target] = {}
        if with_mlflow:
            mlflow_base, mlflow_pid = stack.enter_context(
                mlflow_server(mlflow_url, scratch, postgres)
            )
            targets["mlflow"] = MlflowTarget(mlflow_base)
        address, gateway, cairn_pid = stack.enter_context(cairn_stack(cairn_url, scratch))
        targets["cairn"] = CairnTarget(address)
        targets["cairn_mlflow"] = MlflowTarget(gateway)
        try:
            seeding = Seeding(
                mlflow_url, cairn_url or f"sqlite:///{scratch / 'cairn' / 'cairn.db'}"
            )
            figures = run_workloads(
                targets, sizes, seeding, settle=checkpoint if postgres else lambda: None
            )
        finally:
            for target in targets.values():
                target.close()
        limit: dict[str, float] = {}
        if cairn_url is not None:
            print("  copy     PostgreSQL COPY", file=sys.stderr, flush=True)
            values = [random.Random(7).random() for _ in range(sizes["points"])]
            rates = []
            for _ in range(sizes["ingests"]):
                checkpoint()
                rates.append(copy_limit(cairn_url, values))
            limit["copy_points_per_s"] = statistics.median(rates)
            limit["cairn_ingest_share_of_copy"] = (
                figures["cairn"]["ingest_points_per_s"] / limit["copy_points_per_s"]
            )
        if with_mlflow:
            figures["mlflow"]["server_rss_mb"] = tree_rss_mb(mlflow_pid)
        figures["cairn"]["server_rss_mb"] = tree_rss_mb(cairn_pid)
        figures["cairn_mlflow"]["server_rss_mb"] = figures["cairn"]["server_rss_mb"]
        found_versions = versions(with_mlflow)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "database": options.database,
        "smoke": options.smoke,
        "sizes": sizes,
        "versions": found_versions,
        "mlflow_workers": 1,
        "figures": figures,
        "limit": limit,
        "ratios_cairn_sdk_vs_mlflow": {
            figure: ratio(figure, higher, figures) for figure, _, higher in figure_list(figures)
        },
    }
    if not options.smoke and not options.without_mlflow:
        written = write_results(result)
        print(f"wrote {written}", file=sys.stderr)
    if options.json:
        print(json.dumps(result, indent=2))
        return
    mode = "smoke" if options.smoke else "full"
    print(f"Cairn vs MLflow on {options.database} ({mode} sizes: {sizes}; MLflow --workers 1)")
    print(table(figures))
    if limit:
        print(limit_line(limit))
