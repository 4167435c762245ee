"""The local launcher: each job is a subprocess in the trainer runtime (`cairn trainer-env`).

The process runs in its own session (process group), so cancel stops the trainer and
anything it started with one signal: SIGTERM, then SIGKILL after a grace period. Before
`launch` returns, the workload's identity (pid + the process's start time, which tells it
from a recycled pid) is written to workload.json in the job's directory: a scheduler that
restarts adopts the process from there instead of starting a second one. The trainer writes
progress.jsonl as it goes and result.json when it ends; a process that is gone without a
result is lost.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from services.scheduler.launchers import Handle, LaunchSpec, LogLocation, WorkloadStatus

log = logging.getLogger(__name__)

WORKLOAD_FILE = "workload.json"
SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.jsonl"
LOG_FILE = "logs/trainer.log"
# The trainer's stage names (TFX component names) -> PipelineStage names.
STAGES = {
    "ExampleGen": "EXAMPLE_GEN",
    "StatisticsGen": "STATISTICS_GEN",
    "SchemaGen": "SCHEMA_GEN",
    "Transform": "TRANSFORM",
    "Trainer": "TRAINER",
    "Evaluation": "EVALUATION",
}
# How many bytes of the progress file's end are read to find its last event.
_PROGRESS_TAIL_BYTES = 16_384
_LOG_TAIL_BYTES = 4_096

RuntimeProvider = Callable[[], tuple[str, dict[str, str]]]


def default_runtime() -> tuple[str, dict[str, str]]:
    """The trainer runtime's python and environment, built on first use."""
    from cairn.trainer_runtime import ensure_trainer_runtime

    runtime = ensure_trainer_runtime(lambda line: log.info("trainer runtime: %s", line))
    return str(runtime.python), runtime.env()


class LocalLauncher:
    name = "local"

    def __init__(
        self,
        runtime: RuntimeProvider = default_runtime,
        *,
        cancel_grace_seconds: float = 10.0,
        command: list[str] | None = None,
    ) -> None:
        self._runtime = runtime
        self._grace = cancel_grace_seconds
        # The trainer's command after the python executable (tests may run another program).
        self._command = command or ["-m", "cairn_trainer", "run", "--spec"]
        # Our own children, so their exit codes are known and they never linger as zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ launch

    def launch(self, spec: LaunchSpec) -> Handle:
        existing = self.adopt(spec.job_id, spec.work_dir)
        if existing is not None:
            log.info("job %s already has a workload (pid %s)", spec.job_id, existing["pid"])
            return existing
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        (spec.work_dir / "logs").mkdir(exist_ok=True)
        spec_path = spec.work_dir / SPEC_FILE
        # Owner-only: the spec carries the job's run token.
        _write_json(spec_path, spec.trainer_spec, mode=0o600)
        python, environment = self._runtime()
        environment = {
            **environment,
            "CAIRN_JOB_ID": spec.job_id,
            "CAIRN_HARDWARE_TIER": spec.machine.tier,
            "CAIRN_MACHINE_TYPE": spec.machine.machine_type,
            # The tier's vCPUs bound the trainer's threads (never more than this machine has).
            "TF_NUM_INTRAOP_THREADS": str(min(spec.machine.cpus, os.cpu_count() or 1)),
            "TF_NUM_INTEROP_THREADS": "2",
        }
        with (spec.work_dir / LOG_FILE).open("ab") as log_file:
            process = subprocess.Popen(
                [python, *self._command, str(spec_path)],
                cwd=spec.work_dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self._children[process.pid] = process
        handle: Handle = {
            "launcher": self.name,
            "job_id": spec.job_id,
            "pid": process.pid,
            "create_time": _create_time(process.pid),
            "spec": str(spec_path),
            "work_dir": str(spec.work_dir),
            "machine_type": spec.machine.machine_type,
        }
        try:
            _write_json(spec.work_dir / WORKLOAD_FILE, handle)
        except OSError:
            # An unrecorded workload could never be adopted, polled or cancelled.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            raise
        log.info("launched job %s as pid %d", spec.job_id, process.pid)
        return handle

    def adopt(self, job_id: str, work_dir: Path) -> Handle | None:
        try:
            handle: Handle = json.loads((work_dir / WORKLOAD_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("unreadable workload file of job %s: %s", job_id, error)
            return None
        if handle.get("job_id") != job_id:
            return None
        return handle

    # ------------------------------------------------------------------ status

    def status(self, handle: Handle) -> WorkloadStatus:
        work_dir = Path(handle["work_dir"])
        alive = self._alive(handle)
        progress = _last_progress(work_dir / PROGRESS_FILE)
        stage = STAGES.get(str(progress.get("stage", "")), "")
        epoch = progress.get("epoch")
        loss = progress.get("loss")
        common: dict[str, Any] = {
            "stage": stage,
            "progress_percent": float(progress.get("progress") or 0.0),
            "epoch": int(epoch) if isinstance(epoch, int) else 0,
            "loss": float(loss) if isinstance(loss, int | float) else None,
            "message": str(progress.get("message", "")),
        }
        if alive:
            return WorkloadStatus("running", **common)
        result = _read_json(work_dir / RESULT_FILE)
        if result is not None and result.get("status") == "succeeded":
            return WorkloadStatus("succeeded", **{**common, "progress_percent": 100.0})
        if result is not None:
            error_stage = STAGES.get(str(result.get("stage", "")), stage)
            return WorkloadStatus(
                "failed",
                **{**common, "message": str(result.get("message") or "the trainer failed")},
                details=str(result.get("traceback", "")),
                error_stage=error_stage,
            )
        code = self._exit_code(handle)
        tail = _tail(work_dir / LOG_FILE, _LOG_TAIL_BYTES)
        if code is not None:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return WorkloadStatus(
                "failed",
                **{**common, "message": f"the trainer process {how} without a result"},
                details=tail,
                error_stage=stage,
            )
        return WorkloadStatus(
            "lost",
            **{
                **common,
                "message": f"the trainer process (pid {handle.get('pid')}) is gone and left "
                "no result",
            },
            details=tail,
            error_stage=stage,
        )

    def _alive(self, handle: Handle) -> bool:
        pid = int(handle["pid"])
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        try:
            process = psutil.Process(pid)
            # The start time tells the trainer from a process that got its pid recycled; a
            # second of slack absorbs clock steps (psutil derives it from the boot time).
            started = abs(process.create_time() - float(handle.get("create_time") or 0)) < 1.0
            spec = str(handle.get("spec", ""))
            ours = started and (not spec or spec in process.cmdline())
            return bool(ours and process.status() != psutil.STATUS_ZOMBIE)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _exit_code(self, handle: Handle) -> int | None:
        with self._lock:
            child = self._children.get(int(handle["pid"]))
        return None if child is None else child.poll()

    # ------------------------------------------------------------------ cancel

    def cancel(self, handle: Handle) -> None:
        if not self._alive(handle):
            return
        pid = int(handle["pid"])
        log.info("stopping job %s (process group %d)", handle.get("job_id"), pid)
        _signal_group(pid, signal.SIGTERM)
        threading.Thread(
            target=self._kill_after_grace, args=(handle,), name=f"kill-{pid}", daemon=True
        ).start()

    def _kill_after_grace(self, handle: Handle) -> None:
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline:
            if not self._alive(handle):
                return
            time.sleep(0.2)
        if self._alive(handle):
            log.warning("job %s ignored SIGTERM; killing it", handle.get("job_id"))
            _signal_group(int(handle["pid"]), signal.SIGKILL)

    def forget(self, handle: Handle) -> None:
        """Drop a finished child from the bookkeeping."""
        with self._lock:
            child = self._children.pop(int(handle["pid"]), None)
        if child is not None:
            child.poll()

    # ------------------------------------------------------------------ where things are

    def log_location(self, handle: Handle) -> LogLocation:
        return LogLocation("file", {"path": str(Path(handle["work_dir"]) / LOG_FILE)})

    def results_dir(self, handle: Handle) -> Path:
        return Path(handle["work_dir"])


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the trainer leads its own session: pgid == pid
    except ProcessLookupError:
        pass
    except PermissionError as error:
        log.warning("cannot signal process group %d: %s", pid, error)


def _write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(value, indent=2, sort_keys=True))
    os.chmod(temporary, mode)  # an existing file keeps its mode through O_CREAT
    os.replace(temporary, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _tail(path: Path, size: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - size, 0))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_progress(path: Path) -> dict[str, Any]:
    """The last complete event of progress.jsonl ({} before the first)."""
    for line in reversed(_tail(path, _PROGRESS_TAIL_BYTES).splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a partial first line of the tail, or one being written
        if isinstance(event, dict):
            return event
    return {}
