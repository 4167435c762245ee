"""A tracker as it runs in production: its own process, configured by CAIRN_* variables."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cairn.tracker.v1 import experiment_pb2, run_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import PostgresDatabases

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "serve", "tracker"],
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _wait_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    pytest.fail("tracker did not become SERVING:\n" + log.read_text())


@pytest.fixture
def tracker_env(tmp_path: Path) -> dict[str, str]:
    return {
        "CAIRN_DATA_DIR": str(tmp_path / "data"),
        "CAIRN_TRACKER_PORT": str(_free_port()),
        "CAIRN_TRACKER_METRICS_PORT": str(_free_port()),
        "CAIRN_SHUTDOWN_GRACE_SECONDS": "20",
        "CAIRN_LOG_FORMAT": "json",
    }


@pytest.fixture
def running(
    tracker_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    log = tmp_path / "tracker.log"
    process = _start(tracker_env, log)
    address = f"127.0.0.1:{tracker_env['CAIRN_TRACKER_PORT']}"
    _wait_serving(address, process, log)
    yield process, address, log
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sigterm_drains_an_in_flight_stream_then_exits(
    tracker_env: dict[str, str], tmp_path: Path
) -> None:
    # One second between NOT_SERVING and closing the listener: the window probes see.
    log = tmp_path / "tracker.log"
    process = _start({**tracker_env, "CAIRN_DRAIN_DELAY_SECONDS": "1"}, log)
    address = f"127.0.0.1:{tracker_env['CAIRN_TRACKER_PORT']}"
    try:
        _wait_serving(address, process, log)
        _drain_an_in_flight_stream(process, address, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _drain_an_in_flight_stream(process: subprocess.Popen[bytes], address: str, log: Path) -> None:
    # Health is polled on its own channel, connected before the SIGTERM (a draining server
    # accepts no new connections) and kept apart from the stream's connection.
    probe_options = [("grpc.use_local_subchannel_pool", 1)]
    with (
        grpc.insecure_channel(address) as channel,
        grpc.insecure_channel(address, options=probe_options) as probe_channel,
    ):
        health = health_pb2_grpc.HealthStub(probe_channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        experiment = stub.CreateExperiment(
            pb.CreateExperimentRequest(experiment=experiment_pb2.Experiment(display_name="drain"))
        )
        run = stub.CreateRun(pb.CreateRunRequest(parent=experiment.name, run=run_pb2.Run()))
        signalled = threading.Event()
        seen: list[str] = []  # health statuses observed after the SIGTERM, mid-stream

        def wait_not_serving() -> None:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                except grpc.RpcError as error:
                    seen.append(str(error.code()))
                else:
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        return
                time.sleep(0.02)

        def batches() -> Iterator[pb.StreamMetricsRequest]:
            for index in range(10):
                if index == 3:
                    process.send_signal(signal.SIGTERM)  # mid-stream
                    signalled.set()
                    wait_not_serving()
                batch = pb.StreamMetricsRequest(run=run.name, batch_id=f"b{index}")
                for step in range(100):
                    batch.metrics.add(key="loss", value=1.0, step=index * 100 + step)
                yield batch
                time.sleep(0.05)

        response = stub.StreamMetrics(batches(), timeout=30)
        assert signalled.is_set()
        assert seen and seen[-1] == "NOT_SERVING", (
            f"health never reported NOT_SERVING within 2 s of the SIGTERM: {seen}"
        )
        assert response.batch_count == 10
        assert response.stored_point_count == 1000
        # The server refuses new work once draining, then exits cleanly.
        assert process.wait(timeout=30) == 0
    lines = log.read_text()
    assert '"message": "shutting down: draining in-flight calls"' in lines


def test_metrics_endpoint_counts_rpcs(
    running: tuple[subprocess.Popen[bytes], str, Path], tracker_env: dict[str, str]
) -> None:
    _process, address, _log = running
    with grpc.insecure_channel(address) as channel:
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        for _ in range(3):
            stub.ListExperiments(pb.ListExperimentsRequest())
        with pytest.raises(grpc.RpcError):
            stub.GetExperiment(pb.GetExperimentRequest(name="experiments/missing"))
    url = f"http://127.0.0.1:{tracker_env['CAIRN_TRACKER_METRICS_PORT']}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="ListExperiments",'
        'grpc_service="cairn.tracker.v1.TrackerService",grpc_type="unary"} 3.0'
    ) in body
    assert 'grpc_code="NOT_FOUND",grpc_method="GetExperiment"' in body
    assert "grpc_server_handling_seconds_bucket" in body


def test_json_logs_carry_the_request_id(running: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    _process, address, log = running
    request_id = uuid.uuid4().hex
    with grpc.insecure_channel(address) as channel:
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        stub.ListExperiments(pb.ListExperimentsRequest(), metadata=(("x-request-id", request_id),))
    deadline = time.monotonic() + 5
    while request_id not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in log.read_text().splitlines() if request_id in line)
    assert '"message": "rpc /cairn.tracker.v1.TrackerService/ListExperiments OK"' in line


def test_without_auto_migrate_a_fresh_database_is_refused_until_upgraded(
    postgres: PostgresDatabases, tmp_path: Path, tracker_env: dict[str, str]
) -> None:
    # An empty database (not the migrated template): what a new production install has.
    name = f"cairn_empty_{uuid.uuid4().hex[:8]}"
    with postgres._admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = postgres.url_for(name)
        env = {**tracker_env, "CAIRN_DATABASE_URL": url, "CAIRN_AUTO_MIGRATE": "false"}
        log = tmp_path / "refused.log"
        refused = _start(env, log)
        assert refused.wait(timeout=60) != 0
        assert "cairn db upgrade" in log.read_text()

        upgrade = subprocess.run(
            [sys.executable, "-m", "cairn.cli", "db", "upgrade"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert upgrade.returncode == 0, upgrade.stderr
        assert "tracker: schema at head" in upgrade.stdout

        log = tmp_path / "served.log"
        served = _start(env, log)
        try:
            _wait_serving(f"127.0.0.1:{tracker_env['CAIRN_TRACKER_PORT']}", served, log)
        finally:
            served.terminate()
            assert served.wait(timeout=30) == 0
    finally:
        with postgres._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_binding_beyond_loopback_without_tokens_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "serve", "tracker"],
        env={**os.environ, "CAIRN_HOST": "0.0.0.0", "CAIRN_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "CAIRN_AUTH_TOKENS" in result.stderr
