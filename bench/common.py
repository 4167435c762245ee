"""What every benchmark shares: a throw-away PostgreSQL database, server processes on free
loopback ports, timing and percentiles, and a process's resident memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

POSTGRES_ADMIN = os.environ.get("CAIRN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the benchmark's PostgreSQL server, dropped afterwards; yields its
    SQLAlchemy URL."""
    name = f"cairn_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            + f"/{name}"
        )
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def service_process(
    service: str, port: int, data_dir: Path, environment: Mapping[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """`cairn serve <service>` in a child process on 127.0.0.1:port until the block ends;
    yields its address and pid once gRPC health reports SERVING."""
    env = {
        **os.environ,
        "CAIRN_DATA_DIR": str(data_dir),
        f"CAIRN_{service.upper()}_PORT": str(port),
        f"CAIRN_{service.upper()}_METRICS_PORT": "0",
        "CAIRN_LOG_LEVEL": "WARNING",
        **(environment or {}),
    }
    log_path = data_dir / f"{service}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    # A file, not a pipe: a full pipe would stall the server mid-benchmark.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "serve", service], env=env, stderr=log
        )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _serving(address):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{service} did not start:\n" + log_path.read_text(errors="replace")
                )
            time.sleep(0.1)
        try:
            yield address, process.pid
        except BaseException:
            # The server's side of a failed call (an INTERNAL carries only a request id).
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            print(f"--- last lines of the {service} log:", *tail, sep="\n", file=sys.stderr)
            raise
    finally:
        process.terminate()
        process.wait(timeout=30)


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile (with 10 samples, p95 is the slowest one)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(
    fn: Callable[[], Any], repeat: int, *, budget_s: float | None = None, least: int = 3
) -> list[float]:
    """Seconds taken by each of `repeat` calls of fn; with `budget_s`, fewer once that much
    time has gone, but at least `least` (a slow system is measured, not waited on for ever)."""
    samples: list[float] = []
    began_all = time.perf_counter()
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
        spent = time.perf_counter() - began_all
        if budget_s is not None and len(samples) >= least and spent > budget_s:
            break
    return samples


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (NaN where /proc is not available)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def checkpoint() -> None:
    """Flush PostgreSQL's dirty pages now (CHECKPOINT), so the next timed round does not pay
    for the WAL an earlier one wrote: with the default max_wal_size a checkpoint started by
    the seeding or another system's ingest made the next writes log whole pages again."""
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute("CHECKPOINT")
