"""The reconcile loop: the one owner of job state after creation.

Each pass, in order:
1. terminal jobs whose run status is not in the tracker yet get it (a cancel of a queued
   job, or a tracker that was down);
2. active jobs are polled through their launcher: progress is recorded, CANCELLING jobs
   are stopped, ended workloads are finalized (their training_metrics.json ingested with
   deterministic batch ids, their outputs uploaded as artifacts, their run's final status
   set) and only then move to SUCCEEDED, FAILED or CANCELLED;
3. queued jobs are claimed atomically up to the concurrency limit and launched.
At start-up, before the first pass, jobs left active by a previous scheduler are adopted:
the launcher finds their workloads (launch is idempotent per job id), so none is started
twice; a workload that is gone without a result ends FAILED with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

from cairn.tracker.v1 import run_pb2
from services.common.timeutil import now_ms
from services.scheduler.launchers import MACHINE_TYPES, Handle, Launcher, LaunchSpec
from services.scheduler.service import RUN_STATUS_OF, SchedulerService, trainer_spec
from services.scheduler.store.models import DatasetRow, FeatureConfigRow, JobRow, ModelConfigRow
from services.scheduler.store.store import ACTIVE_STATES, SchedulerStore
from services.scheduler.tracker_client import MetricBatch, artifact_type

log = logging.getLogger(__name__)

TRAINING_METRICS_FILE = "training_metrics.json"
OUTPUTS_DIR = "outputs"
MANIFEST_FILE = "manifest.json"
_TERMINAL_OF_PHASE = {"succeeded": "SUCCEEDED", "failed": "FAILED", "lost": "FAILED"}


class Reconciler:
    def __init__(
        self,
        service: SchedulerService,
        launcher: Launcher,
        *,
        max_running: int,
        poll_seconds: float,
        reporting_url: str,
        run_token: Any,
    ) -> None:
        self.service = service
        self.store: SchedulerStore = service.store
        self.launcher = launcher
        self.max_running = max_running
        self.poll_seconds = poll_seconds
        self.reporting_url = reporting_url
        self._mint_token = run_token
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._launching: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        service.on_change(self._wake.set)

    async def _blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.service.runner.run(fn, *args, **kwargs)

    # ------------------------------------------------------------------ the loop

    async def run_forever(self) -> None:
        await self.adopt()
        while not self._stopping:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def adopt(self) -> None:
        """Pick up the jobs a previous scheduler left active."""
        for row in await self._blocking(self.store.jobs_in, ACTIVE_STATES):
            if row.workload_json:
                continue  # polled like any running job
            handle = await self._blocking(self.launcher.adopt, row.job_id, self._work_dir(row))
            if handle is not None:
                log.info("adopted the workload of job %s", row.job_id)
                await self._record_launch(row, handle, "adopted after a scheduler restart")
            # else: claimed but never launched; the next pass launches it.

    async def reconcile_once(self) -> None:
        for row in await self._blocking(self.store.unfinalized_terminal_jobs):
            await self.service.finish_run(row)
        for row in await self._blocking(self.store.jobs_in, ACTIVE_STATES):
            if row.job_id in self._launching:
                continue
            try:
                await self._reconcile_active(row)
            except Exception:
                log.exception("job %s: reconcile failed; retrying next pass", row.job_id)
        for row in await self._blocking(self.store.claim_queued, self.owner, self.max_running):
            self._start_launch(row)

    def _start_launch(self, row: JobRow) -> None:
        self._launching.add(row.job_id)
        task = asyncio.create_task(self._launch(row), name=f"launch-{row.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconcile_active(self, row: JobRow) -> None:
        if not row.workload_json:
            if row.state == "CANCELLING":
                await self._end(row, "CANCELLED", "cancelled before its workload started")
            elif row.state == "SUBMITTING":
                self._start_launch(row)  # claimed earlier, launch never recorded
            return
        handle: Handle = json.loads(row.workload_json)
        if row.state == "CANCELLING":
            await self._blocking(self.launcher.cancel, handle)
        status = await self._blocking(self.launcher.status, handle)
        if status.phase in ("pending", "running"):
            if row.state == "RUNNING":
                await self._blocking(
                    self.store.update_job,
                    row.job_id,
                    only_in=["RUNNING"],
                    stage=status.stage or row.stage,
                    progress_percent=max(row.progress_percent, status.progress_percent),
                    # The trainer's last event may carry no epoch (an Evaluation step).
                    current_epoch=max(row.current_epoch, status.epoch),
                    latest_loss=status.loss
                    if status.loss is not None and math.isfinite(status.loss)
                    else row.latest_loss,
                )
                self.service.notify()
            return
        # The workload has ended.
        if row.state == "CANCELLING" and status.phase != "succeeded":
            await self._finalize(row, handle, "CANCELLED", "cancelled by the user", status)
            return
        terminal = _TERMINAL_OF_PHASE[status.phase]
        message = "the pipeline finished" if terminal == "SUCCEEDED" else status.message
        await self._finalize(row, handle, terminal, message, status)

    # ------------------------------------------------------------------ launching

    async def _launch(self, row: JobRow) -> None:
        try:
            await self.service.ensure_run(row)
            spec = await self._launch_spec(row)
            handle = await self._blocking(self.launcher.launch, spec)
            await self._record_launch(row, handle, f"started by the {self.launcher.name} launcher")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("job %s: launch failed", row.job_id)
            await self._end(
                row,
                "FAILED",
                f"the launch failed: {_first_line(error)}",
                error_message=f"the launch failed: {_first_line(error)}",
                error_details=str(error),
            )
        finally:
            self._launching.discard(row.job_id)
            self._wake.set()

    async def _record_launch(self, row: JobRow, handle: Handle, message: str) -> None:
        await self._blocking(
            self.store.update_job,
            row.job_id,
            workload_json=json.dumps(handle, sort_keys=True),
            launcher=self.launcher.name,
        )
        moved = await self._blocking(
            self.store.transition,
            row.job_id,
            ["SUBMITTING"],
            "RUNNING",
            message,
            stage="EXAMPLE_GEN",
        )
        if moved is not None and moved.run:
            await self.service.tracker.set_status(
                moved.run, run_pb2.RUN_STATUS_RUNNING, start_ms=moved.start_time or now_ms()
            )
        self.service.notify()

    async def _launch_spec(self, row: JobRow) -> LaunchSpec:
        features = await self._blocking(
            self.store.get, FeatureConfigRow, row.feature_config_id, "feature config"
        )
        model = await self._blocking(
            self.store.get, ModelConfigRow, row.model_config_id, "model config"
        )
        dataset = await self._blocking(self.store.get, DatasetRow, row.dataset_id, "dataset")
        fresh = await self._blocking(self.store.get, JobRow, row.job_id, "job")
        reporting = {
            "gateway_url": self.reporting_url,
            "run": fresh.run,
            "token": self._mint_token(fresh.run) if fresh.run else "",
            "timeout_seconds": 5,
        }
        work_dir = self._work_dir(row)
        return LaunchSpec(
            job_id=row.job_id,
            work_dir=work_dir,
            trainer_spec=trainer_spec(fresh, features, model, dataset, work_dir, reporting),
            machine=MACHINE_TYPES[row.hardware_tier],
        )

    def _work_dir(self, row: JobRow) -> Path:
        return self.service.work_root / row.job_id

    # ------------------------------------------------------------------ ending

    async def _finalize(
        self, row: JobRow, handle: Handle, terminal: str, message: str, status: Any
    ) -> None:
        """Put the workload's results into the tracker, then end the job."""
        results = await self._blocking(self.launcher.results_dir, handle)
        history = await self._blocking(_read_json, results / TRAINING_METRICS_FILE)
        final_metrics: dict[str, float] = {}
        if row.run and history is not None:
            batches = _history_batches(row.job_id, history)
            stored, duplicates = await self.service.tracker.log_metric_batches(row.run, batches)
            log.info(
                "job %s: ingested %d points (%d batches were already reported live)",
                row.job_id,
                stored,
                duplicates,
            )
            # How the history arrived, for whoever wonders whether live reporting works.
            await self.service.tracker.set_tags(
                row.run,
                {
                    "cairn.metrics_reported_live": str(duplicates),
                    "cairn.metrics_from_file": str(stored),
                },
            )
            final_metrics = {
                str(k): float(v)
                for k, v in dict(history.get("final_metrics") or {}).items()
                if isinstance(v, int | float) and math.isfinite(v)
            }
        if row.run:
            await self._upload_outputs(row, results)
        error: dict[str, str] = {}
        if terminal == "FAILED":
            error = {
                "error_message": status.message or "the workload failed",
                "error_details": status.details,
                "error_stage": status.error_stage or status.stage or row.stage,
            }
        await self._end(
            row,
            terminal,
            message,
            final_metrics_json=json.dumps(final_metrics, sort_keys=True),
            progress_percent=100.0 if terminal == "SUCCEEDED" else row.progress_percent,
            stage=status.stage or row.stage,
            current_epoch=max(status.epoch, row.current_epoch, _epochs_done(history)),
            **error,
        )
        forget = getattr(self.launcher, "forget", None)
        if forget is not None:
            forget(handle)

    async def _upload_outputs(self, row: JobRow, results: Path) -> None:
        outputs = results / OUTPUTS_DIR
        manifest = await self._blocking(_read_json_list, outputs / MANIFEST_FILE)
        uploads: list[tuple[str, Path, int]] = []
        for entry in manifest:
            source = outputs / str(entry.get("path", ""))
            kind = artifact_type(str(entry.get("type", "other")))
            if not source.resolve().is_relative_to(outputs.resolve()):
                continue  # a manifest never makes us upload files outside outputs/
            if source.is_dir():
                uploads += [
                    (str(f.relative_to(outputs)), f, kind)
                    for f in sorted(source.rglob("*"))
                    if f.is_file()
                ]
            elif source.is_file():
                uploads.append((str(source.relative_to(outputs)), source, kind))
        metrics_file = results / TRAINING_METRICS_FILE
        if metrics_file.is_file():
            uploads.append((TRAINING_METRICS_FILE, metrics_file, artifact_type("report")))
        for path, source, kind in uploads:
            await self.service.tracker.upload_file(row.run, path, source, kind)

    async def _end(self, row: JobRow, terminal: str, message: str, **fields: Any) -> None:
        """The run's final status first, then the job's: whoever sees the job ended sees its
        run ended too. A tracker failure leaves the job active; the next pass retries."""
        if row.run:
            await self.service.tracker.set_status(row.run, RUN_STATUS_OF[terminal], end_ms=now_ms())
        await self._blocking(
            self.store.transition,
            row.job_id,
            ACTIVE_STATES,
            terminal,
            message,
            finalized=1,
            **fields,
        )
        self.service.notify()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _history_batches(job_id: str, history: dict[str, Any]) -> list[MetricBatch]:
    """training_metrics.json's points as batches with the ids the trainer used live."""
    batches: list[MetricBatch] = []
    for point in history.get("history") or []:
        if not isinstance(point, dict):
            continue
        key, epoch, value = point.get("key"), point.get("epoch"), point.get("value")
        if not isinstance(key, str) or not isinstance(epoch, int):
            continue
        number = _number(value)
        if number is None:
            continue
        batches.append(MetricBatch(f"{job_id}/{key}/{epoch}", key, number, epoch))
    return batches


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _epochs_done(history: dict[str, Any] | None) -> int:
    """The last epoch training_metrics.json has (the progress poll may have missed it)."""
    epochs = (history or {}).get("epochs") or []
    return max((e for e in epochs if isinstance(e, int)), default=0)
