"""`cairn up|down|serve|db upgrade` as real processes: what they print and what they signal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cairn.cli.stack import tracker_healthy

from cairn_testing import PostgresDatabases

pytestmark = pytest.mark.slow

PASSWORD = "s3cr3t"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(**values: str) -> dict[str, str]:
    """This process's environment without any CAIRN_* setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    # The gateway gets its own free port: 8080 may be taken on a developer's machine.
    return {
        **env,
        "CAIRN_TRACKER_METRICS_PORT": "0",
        "CAIRN_GATEWAY_PORT": str(_free_port()),
        # ...and so does analytics (50053 may be taken too).
        "CAIRN_ANALYTICS_PORT": str(_free_port()),
        "CAIRN_SCHEDULER_PORT": str(_free_port()),
        "CAIRN_LOGPROXY_PORT": str(_free_port()),
        **values,
    }


def cairn(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cairn.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_clean_error(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


@pytest.fixture
def empty_postgres_url(postgres: PostgresDatabases) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, reached with a password in its URL (the test
    server's trust authentication accepts any)."""
    name = f"cairn_pw_{uuid.uuid4().hex[:10]}"
    with postgres._admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = postgres.admin_url.set(database=name, password=PASSWORD)
        yield url.render_as_string(hide_password=False)
    finally:
        with postgres._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not Cairn, for a stale pid file to point at."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def _stop(data_dir: Path, env: dict[str, str]) -> None:
    """`cairn down` as cleanup, when a test left a stack running."""
    if (data_dir / "cairn.pid").exists():
        cairn("down", "--data-dir", str(data_dir), env=env)


# ---------------------------------------------------------------------------- passwords


def test_db_upgrade_never_prints_the_database_password(empty_postgres_url: str) -> None:
    assert PASSWORD in empty_postgres_url
    result = cairn("db", "upgrade", env=_env(CAIRN_DATABASE_URL=empty_postgres_url))
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    shown = make_url(empty_postgres_url).render_as_string(hide_password=True)
    assert f"tracker: schema at head ({shown})" in " ".join(result.stdout.split())  # unwrapped
    assert ":***@" in shown


def test_up_banner_never_prints_the_database_password(
    empty_postgres_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    env = _env(CAIRN_DATABASE_URL=empty_postgres_url, CAIRN_TRACKER_PORT=str(port))
    try:
        result = cairn("up", "--detach", "--data-dir", str(data_dir), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        # `up --detach` returns once the services answer; the banner may reach the log a
        # moment later (seen under load in CI).
        deadline = time.monotonic() + 15
        log = (data_dir / "cairn.log").read_text()
        while "Cairn is up" not in log and time.monotonic() < deadline:
            time.sleep(0.2)
            log = (data_dir / "cairn.log").read_text()
        assert "Cairn is up" in log
        assert ":***@" in log
        assert PASSWORD not in log + result.stdout + result.stderr
    finally:
        _stop(data_dir, env)


def test_an_unparsable_database_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:notaport/cairn"
    result = cairn("db", "upgrade", env=_env(CAIRN_DATABASE_URL=url, CAIRN_DATA_DIR=str(tmp_path)))
    line = _one_clean_error(result)
    assert "invalid database URL" in line
    assert PASSWORD not in result.stdout + result.stderr


# ---------------------------------------------------------------------------- start-up failures


def test_db_upgrade_with_an_unsupported_database_is_one_line(tmp_path: Path) -> None:
    url = f"mysql://root:{PASSWORD}@127.0.0.1/cairn"
    result = cairn("db", "upgrade", env=_env(CAIRN_DATABASE_URL=url, CAIRN_DATA_DIR=str(tmp_path)))
    line = _one_clean_error(result)
    assert "unsupported database 'mysql'" in line
    assert PASSWORD not in line


def test_serve_with_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    closed = _free_port()  # nothing listens there
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{closed}/cairn"
    env = _env(
        CAIRN_DATABASE_URL=url,
        CAIRN_DATA_DIR=str(tmp_path),
        CAIRN_TRACKER_PORT=str(_free_port()),
    )
    result = cairn("serve", "tracker", env=env)
    line = _one_clean_error(result)
    assert f"cannot use the database postgresql+psycopg://postgres:***@127.0.0.1:{closed}" in line
    assert "Connection refused" in line or "connection failed" in line
    assert PASSWORD not in result.stdout + result.stderr


# ---------------------------------------------------------------------------- up --detach, down


def test_down_leaves_the_process_of_a_stale_pid_file_alone(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pid_file = data_dir / "cairn.pid"
    pid_file.write_text(str(sleeper.pid))

    result = cairn("down", "--data-dir", str(data_dir), env=_env())

    assert result.returncode == 0, result.stderr
    time.sleep(0.5)  # a SIGTERM would have ended `sleep` by now
    assert sleeper.poll() is None, "cairn down signalled a process that is not Cairn"
    assert not pid_file.exists()
    assert f"Removed the stale pid file {pid_file}" in result.stderr
    assert f"process {sleeper.pid} is not a Cairn stack" in result.stderr
    assert "No Cairn stack is running" in result.stdout


def test_down_removes_a_pid_file_whose_process_is_gone(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cairn.pid").write_text(str(finished.pid))
    result = cairn("down", "--data-dir", str(data_dir), env=_env())
    assert result.returncode == 0, result.stderr
    assert not (data_dir / "cairn.pid").exists()
    assert f"process {finished.pid} is not running" in result.stderr


def _loopback_alias_available() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "127.0.0.2",  # not the default: only reachable if the child really binds it
            marks=pytest.mark.skipif(
                not _loopback_alias_available(), reason="127.0.0.2 is not a loopback address here"
            ),
        ),
    ],
)
def test_up_detach_binds_the_given_host(
    host: str, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # A pid file left behind by a crashed stack whose pid now belongs to another process.
    (data_dir / "cairn.pid").write_text(str(sleeper.pid))
    port = _free_port()
    env = _env(CAIRN_TRACKER_PORT=str(port))
    try:
        began = time.monotonic()
        result = cairn("up", "--detach", "--host", host, "--data-dir", str(data_dir), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - began < 60
        assert "Removed the stale pid file" in result.stderr
        assert f"tracker {host}:{port}" in result.stdout
        assert tracker_healthy(f"{host}:{port}")

        pid = int((data_dir / "cairn.pid").read_text())
        assert pid != sleeper.pid
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert arguments[arguments.index(b"--host") + 1] == host.encode()

        stopped = cairn("down", "--data-dir", str(data_dir), env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert "Cairn stopped." in stopped.stdout
        assert not tracker_healthy(f"{host}:{port}")
        assert not (data_dir / "cairn.pid").exists()
        assert sleeper.poll() is None
    finally:
        _stop(data_dir, env)


def test_up_detach_off_loopback_without_tokens_fails_fast(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    began = time.monotonic()
    result = cairn(
        "up", "--detach", "--host", "0.0.0.0", "--data-dir", str(data_dir), env=_env(), timeout=60
    )
    assert time.monotonic() - began < 20
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "CAIRN_HOST=0.0.0.0 is not a loopback address: set CAIRN_AUTH_TOKENS" in result.stderr
    assert not (data_dir / "cairn.pid").exists()


def test_up_detach_with_tokens_polls_loopback_for_a_wildcard_host(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    env = _env(CAIRN_TRACKER_PORT=str(port), CAIRN_AUTH_TOKENS="t0ken")
    try:
        result = cairn("up", "--detach", "--host", "0.0.0.0", "--data-dir", str(data_dir), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"tracker 127.0.0.1:{port}" in result.stdout
        assert tracker_healthy(f"127.0.0.1:{port}")
    finally:
        _stop(data_dir, env)
    assert not tracker_healthy(f"127.0.0.1:{port}")
