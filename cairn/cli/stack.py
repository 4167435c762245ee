"""Running Cairn: `up` (the embedded stack), `down`, `serve` (one service), `db upgrade`,
and `example` (the main job until the scheduler exists)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cairn.cli.output import console, emit, errors, json_option, print_table

PID_FILE = "cairn.pid"
LOG_FILE = "cairn.log"

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the embedded stack keeps its SQLite database and artifacts "
    "(default ./.cairn, or CAIRN_DATA_DIR).",
)


def _settings(data_dir: Path | None, **overrides: Any) -> Any:
    from services.common.errors import ConfigurationError
    from services.common.settings import load_settings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_settings(**overrides)
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None


def display_url(url: str) -> str:
    """A database URL as it may be printed: with its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: show no more than the scheme
        scheme, separator, _ = url.partition("://")
        return f"{scheme}://..." if separator else "(an unparsable URL)"


@contextmanager
def startup_errors(database_urls: Iterable[str] = ()) -> Iterator[None]:
    """Bad settings and an unreachable database end a command with one clear line and exit
    code 1, not a traceback."""
    from sqlalchemy import exc

    from services.common.errors import ConfigurationError, Unavailable

    try:
        yield
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None
    except (exc.OperationalError, exc.InterfaceError, Unavailable) as error:
        cause: BaseException = error
        if isinstance(error, Unavailable) and error.__cause__ is not None:
            cause = error.__cause__
        if isinstance(cause, exc.DBAPIError) and cause.orig is not None:
            cause = cause.orig
        detail = " ".join(str(cause).split())  # psycopg's messages span lines
        where = ", ".join(dict.fromkeys(display_url(u) for u in database_urls))
        raise click.ClickException(
            f"cannot use the database{f' {where}' if where else ''}: {detail}"
        ) from None


def _pid_alive(pid: int) -> bool:
    # A stack this process started is its child: reap it, or a zombie looks alive forever.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_cairn_stack(pid: int, address: str | None) -> bool:
    """Whether `pid` runs a Cairn stack (`cairn up`), not some process that was given the pid
    of a stack that died without removing its pid file."""
    if sys.platform.startswith("linux"):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        words = [w.decode(errors="replace") for w in raw.split(b"\0")]
        return "up" in words and any("cairn" in w for w in words)
    # No /proc: the stack is there if its tracker answers.
    return address is not None and tracker_healthy(address)


def _running_pid(data_dir: Path, address: str | None = None) -> int | None:
    """The pid of the stack running for data_dir. A pid file whose process is gone or is not
    a Cairn stack is stale: it is removed (with a message), and nothing is signalled."""
    pid_file = data_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        problem = "is not running"
    elif not _is_cairn_stack(pid, address):
        problem = "is not a Cairn stack"
    else:
        return pid
    pid_file.unlink(missing_ok=True)
    click.echo(
        f"Removed the stale pid file {pid_file}: process {pid} {problem} (left untouched).",
        err=True,
    )
    return None


def tracker_healthy(address: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_healthy(address: str, process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tracker_healthy(address):
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _loopback_address(settings: Any, port: int | None = None) -> str:
    """Where this machine reaches a service bound to settings.host (the tracker unless
    `port` says): the host itself, or loopback when it binds every interface."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{settings.tracker_port if port is None else port}"


def start_detached(settings: Any, timeout: float = 120.0) -> int:
    """Start `cairn up` in the background for settings.data_dir; return its pid."""
    data_dir = settings.resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / LOG_FILE
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "cairn.cli", "up"),
                *("--data-dir", str(data_dir), "--host", settings.host),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "CAIRN_DATA_DIR": str(data_dir)},
        )
    if not wait_healthy(_loopback_address(settings), process, timeout):
        process.terminate()
        tail = log_path.read_text(errors="replace").splitlines()[-20:]
        raise click.ClickException(
            "the stack did not become healthy; last log lines:\n  " + "\n  ".join(tail)
        )
    return process.pid


def stop_stack(data_dir: Path, timeout: float = 30.0, address: str | None = None) -> bool:
    """SIGTERM the stack of data_dir (SIGKILL after `timeout`); False when none runs.
    `address` (its tracker) identifies the stack where /proc cannot."""
    pid = _running_pid(data_dir, address)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    if _pid_alive(pid) and _is_cairn_stack(pid, address):
        os.kill(pid, signal.SIGKILL)
    (data_dir / PID_FILE).unlink(missing_ok=True)
    return True


@click.command()
@data_dir_option
@click.option("--host", default=None, help="Bind address (default 127.0.0.1, CAIRN_HOST).")
@click.option("--detach", is_flag=True, help="Run in the background; stop with `cairn down`.")
def up(data_dir: Path | None, host: str | None, detach: bool) -> None:
    """Run the embedded stack: every Cairn service, on SQLite and a local artifact folder
    (or CAIRN_DATABASE_URL / CAIRN_ARTIFACT_ROOT)."""
    overrides = {"host": host} if host else {}
    settings = _settings(data_dir, **overrides)
    directory = settings.resolved_data_dir()
    running = _running_pid(directory, _loopback_address(settings))
    if running is not None:
        console.print(f"Cairn is already running for {directory} (pid {running}).")
        return
    if detach:
        pid = start_detached(settings)
        console.print(
            f"Cairn is up in the background (pid {pid}): tracker {_loopback_address(settings)}, "
            f"data {directory}.\nStop it with: cairn down"
            + (f" --data-dir {data_dir}" if data_dir else "")
        )
        return
    from services.common.logs import configure_logging
    from services.embedded import MIGRATORS, SERVICES, serve

    configure_logging(settings.log_level, settings.log_format)
    directory.mkdir(parents=True, exist_ok=True)
    pid_file = directory / PID_FILE
    pid_file.write_text(str(os.getpid()))

    def ready() -> None:
        metrics = settings.tracker_metrics_port
        metrics_host = settings.metrics_host or settings.host
        database = display_url(settings.database_url_for("tracker"))
        console.print(
            f"[bold green]Cairn is up[/]: tracker gRPC {settings.host}:{settings.tracker_port}, "
            f"scheduler gRPC {settings.host}:{settings.scheduler_port}, "
            f"analytics gRPC {settings.host}:{settings.analytics_port}, "
            f"logproxy gRPC {settings.host}:{settings.logproxy_port}, "
            f"REST gateway http://{settings.host}:{settings.gateway_port} (docs at /docs)"
            + (f", metrics http://{metrics_host}:{metrics}/metrics" if metrics else "")
            + f"\n  data: {directory}  (database {database})"
            + "\n  Ctrl-C to stop."
        )

    try:
        with startup_errors(settings.database_url_for(n) for n in MIGRATORS):  # type: ignore[arg-type]
            serve(settings, list(SERVICES), ready=ready)
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()


@click.command()
@data_dir_option
def down(data_dir: Path | None) -> None:
    """Stop a stack started with `cairn up --detach` (or `cairn example --keep`)."""
    settings = _settings(data_dir)
    if stop_stack(settings.resolved_data_dir(), address=_loopback_address(settings)):
        console.print("Cairn stopped.")
    else:
        console.print(f"No Cairn stack is running for {settings.resolved_data_dir()}.")


@click.command()
@click.argument(
    "service", type=click.Choice(["tracker", "scheduler", "analytics", "logproxy", "gateway"])
)
def serve(service: str) -> None:
    """Run one service (the container command on Kubernetes). Configured by CAIRN_* vars."""
    from services.common.logs import configure_logging
    from services.embedded import MIGRATORS
    from services.embedded import serve as serve_services

    settings = _settings(None)
    configure_logging(settings.log_level, settings.log_format)
    # The tracker and the scheduler own databases; the others start without one.
    urls = [settings.database_url_for(service)] if service in MIGRATORS else []  # type: ignore[arg-type]
    with startup_errors(urls):
        serve_services(settings, [service])  # type: ignore[list-item]


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@data_dir_option
@click.argument("services", nargs=-1, type=click.Choice(["tracker", "scheduler"]))
def db_upgrade(data_dir: Path | None, services: tuple[str, ...]) -> None:
    """Apply migrations (every service's, or the named ones) to CAIRN_DATABASE_URL."""
    from services.embedded import MIGRATORS, migrate

    settings = _settings(data_dir)
    names = list(services) or list(MIGRATORS)
    with startup_errors(settings.database_url_for(n) for n in names):  # type: ignore[arg-type]
        done = migrate(settings, names)
    for name in done:
        url = display_url(settings.database_url_for(name))  # type: ignore[arg-type]
        console.print(f"{name}: schema at head ({url})")


@click.command()
@data_dir_option
@click.option("--keep", is_flag=True, help="Leave the stack running afterwards.")
@click.option("--experiment", default="example-sweep", show_default=True)
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1, 500))
@json_option
def example(data_dir: Path | None, keep: bool, experiment: str, epochs: int, as_json: bool) -> None:
    """The main job: start the stack, track a real scikit-learn sweep, print a leaderboard."""
    from cairn.client import Tracker

    try:
        import sklearn  # noqa: F401

        from cairn.examples.sklearn_sweep import run_sweep
    except ImportError:
        raise click.ClickException(
            "the example needs scikit-learn: pip install 'cairn[examples]'"
        ) from None
    settings = _settings(data_dir)
    address = _loopback_address(settings)
    started = False
    if not tracker_healthy(address):
        if not as_json:
            console.print(
                f"Starting the embedded stack (data in {settings.resolved_data_dir()})..."
            )
        start_detached(settings)
        started = True
    began = time.monotonic()
    try:
        with Tracker(address) as tracker:
            result = run_sweep(tracker, experiment, epochs)
            board = tracker.search_runs(
                experiment,
                filter_string=f"tags.sweep = '{result.sweep_id}'",
                order_by=["metrics.accuracy DESC", "metrics.val_loss ASC"],
                max_results=10,
            )
            board = [tracker.get_run(r.run_id) for r in board]  # with artifacts
            best = board[0]
            tracker.set_note("BEST: top accuracy of its sweep", run_id=best.run_id)
        analysis = _sweep_analysis(settings, result.sweep_id)
        elapsed = time.monotonic() - began
        rows = [
            [
                i + 1,
                r.run_name,
                r.params.get("learning_rate"),
                r.metrics.get("accuracy"),
                r.metrics.get("f1"),
                r.metrics.get("val_loss"),
                r.version,
            ]
            for i, r in enumerate(board)
        ]

        def render() -> None:
            print_table(
                f"Leaderboard: {experiment}, sweep {result.sweep_id} "
                f"({len(result.runs)} runs, {epochs} epochs each, {elapsed:.1f}s)",
                ["#", "run", "lr", "accuracy", "f1", "val_loss", "version"],
                rows,
            )
            if analysis.get("insights"):
                insights = analysis["insights"]
                print_table(
                    f"What matters for accuracy (analytics, {insights['run_count']} runs)",
                    ["param", "importance", "best values"],
                    [[p["key"], p["importance"], p["best_label"]] for p in insights["params"]],
                )
            for suggestion in analysis.get("suggestions", []):
                changes = ", ".join(f"{k}={v}" for k, v in suggestion["changed_params"].items())
                console.print(f"Suggested next: {changes}\n  ({suggestion['reason']})")
            if analysis.get("unavailable"):
                errors.print(f"(analytics skipped: {analysis['unavailable']})")
            console.print(
                f"Best: [bold]{best.run_name}[/] (marked BEST). Next:\n"
                f"  cairn runs list {experiment} --order-by 'metrics.accuracy DESC'\n"
                f"  cairn runs show {best.run_id[:8]}\n"
                f"  cairn runs compare {board[0].run_id[:8]} {board[1].run_id[:8]}"
            )

        emit(
            as_json,
            {
                "experiment": experiment,
                "sweep_id": result.sweep_id,
                "seconds": round(elapsed, 2),
                "leaderboard": [r.to_dict() for r in board],
                "analytics": analysis,
            },
            render,
        )
    finally:
        if started and not keep:
            stop_stack(settings.resolved_data_dir(), address=address)
        elif started and not as_json:
            hint = f" --data-dir {data_dir}" if data_dir else ""
            errors.print(f"The stack keeps running ({address}); stop it with: cairn down{hint}")


def _sweep_analysis(settings: Any, sweep_id: str) -> dict[str, Any]:
    """Hyperparameter insight and one suggestion for the sweep, from the analytics service
    of the stack (a tracker started on its own has none: then the example says so)."""
    from cairn.analysis import Analytics
    from cairn.cli.output import message_data
    from cairn.errors import CairnError

    sweep = f"tags.sweep = '{sweep_id}'"
    address = _loopback_address(settings, settings.analytics_port)
    try:
        with Analytics(address, timeout=60) as analytics:
            insights = analytics.insights(metric="accuracy", filter=sweep)
            suggestions = analytics.suggest(metric="accuracy", filter=sweep, count=1)
    except CairnError as error:
        return {"unavailable": str(error)}
    return {
        "insights": message_data(insights),
        "suggestions": [message_data(s) for s in suggestions.suggestions],
    }


COMMANDS: list[click.Command] = [up, down, serve, db, example]
