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
import threading
import uuid
from pathlib import Path
from typing import Any

from cairn.tracker.v1 import run_pb2
from services.common.clients import RETRYABLE_CODES, BackendError
from services.common.errors import CairnError
from services.common.timeutil import now_ms
from services.scheduler.launchers import MACHINE_TYPES, Handle, Launcher, LaunchSpec
from services.scheduler.leader import AlwaysLeader, Leadership
from services.scheduler.service import (
    RUN_STATUS_OF,
    SchedulerService,
    trainer_spec,
)
from services.scheduler.store.models import DatasetRow, FeatureConfigRow, JobRow, ModelConfigRow
from services.scheduler.store.store import ACTIVE_STATES, SchedulerStore
from services.scheduler.tracker_client import MetricBatch, artifact_type

log = logging.getLogger(__name__)

TRAINING_METRICS_FILE = "training_metrics.json"
OUTPUTS_DIR = "outputs"
MANIFEST_FILE = "manifest.json"
# Pauses before each retry of collecting a finished workload's results; then it gives up.
RESULTS_RETRY_SECONDS = (2.0, 5.0)
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
        leadership: Leadership | None = None,
    ) -> None:
        self.service = service
        self.store: SchedulerStore = service.store
        self.launcher = launcher
        self.max_running = max_running
        self.poll_seconds = poll_seconds
        self.reporting_url = reporting_url
        self._mint_token = run_token
        self.leadership: Leadership = leadership or AlwaysLeader()
        # Unique per reconciler (a restart or a second scheduler in one process is another).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Jobs with a launch or a finalization in progress in this process.
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._watch_stop = threading.Event()
        service.on_change(self._wake.set)

    async def _blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.service.runner.run(fn, *args, **kwargs)

    # ------------------------------------------------------------------ the loop

    async def run_forever(self) -> None:
        self._start_watch()
        adopted = False
        while not self._stopping:
            # Cleared before the pass, so a change made during it triggers the next one.
            self._wake.clear()
            try:
                if not await self._blocking(self.leadership.hold):
                    adopted = False  # a standby; on becoming the leader it adopts first
                else:
                    if not adopted:
                        await self.adopt()
                        adopted = True
                    await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    def _start_watch(self) -> None:
        """A launcher that can watch its workloads (the Kubernetes launcher) wakes the loop
        up when one changes, so a job's end is seen at once instead of at the next poll;
        polling stays the source of truth (a watch may miss events, or fail)."""
        watch = getattr(self.launcher, "watch", None)
        if watch is None:
            return
        loop = asyncio.get_running_loop()

        def changed(job_id: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                loop.call_soon_threadsafe(self._wake.set)

        def follow() -> None:
            while not self._watch_stop.is_set():
                try:
                    watch(changed, self._watch_stop)
                except Exception as error:
                    log.warning("the %s launcher's watch failed: %s", self.launcher.name, error)
                    self._watch_stop.wait(5.0)

        threading.Thread(target=follow, name="launcher-watch", daemon=True).start()

    async def stop(self) -> None:
        self._stopping = True
        self._watch_stop.set()
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A standby takes over at its next poll instead of when this process exits.
        await self._blocking(self.leadership.release)

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
        # Taken before the rows are read: a job whose launch or finalization ends after this
        # point was skipped, one that ended before is read with what that task recorded.
        busy = set(self._busy)
        for row in await self._blocking(self.store.jobs_in, ACTIVE_STATES):
            if row.job_id in busy:
                continue
            try:
                await self._reconcile_active(row)
            except Exception:
                log.exception("job %s: reconcile failed; retrying next pass", row.job_id)
        for row in await self._blocking(self.store.claim_queued, self.owner, self.max_running):
            self._start_launch(row)

    def _start_launch(self, row: JobRow) -> None:
        self._start_task(row, self._launch(row), "launch")

    def _start_task(self, row: JobRow, work: Any, what: str) -> None:
        """Run a job's slow step (a launch, which may build the runtime; a finalization,
        which uploads the model) as its own task, so it never holds up the other jobs."""

        async def guarded() -> None:
            try:
                await work
            finally:
                self._busy.discard(row.job_id)
                self._wake.set()

        self._busy.add(row.job_id)
        task = asyncio.create_task(guarded(), name=f"{what}-{row.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconcile_active(self, row: JobRow) -> None:
        if not row.workload_json:
            # Claimed, but no workload recorded: its launch failed before starting one, or
            # this scheduler restarted in between. The launcher knows whether one exists.
            found = await self._blocking(self.launcher.adopt, row.job_id, self._work_dir(row))
            if found is not None:
                await self._record_launch(row, found, "its workload was found and adopted")
            elif row.state == "CANCELLING":
                await self._end(row, "CANCELLED", "cancelled before its workload started")
            elif row.state == "SUBMITTING":
                self._start_launch(row)
            return
        handle: Handle = json.loads(row.workload_json)
        if row.state == "CANCELLING":
            await self._blocking(self.launcher.cancel, handle)
        status = await self._blocking(self.launcher.status, handle)
        if status.phase in ("pending", "running"):
            if row.state == "RUNNING":
                progress = {
                    "stage": status.stage or row.stage,
                    "progress_percent": max(row.progress_percent, status.progress_percent),
                    # The trainer's last event may carry no epoch (an Evaluation step).
                    "current_epoch": max(row.current_epoch, status.epoch),
                    "latest_loss": status.loss
                    if status.loss is not None and math.isfinite(status.loss)
                    else row.latest_loss,
                }
                # Only news is written and announced: an announcement wakes this loop up
                # too, so announcing every poll would make it spin while a job runs.
                if any(getattr(row, field) != value for field, value in progress.items()):
                    await self._blocking(
                        self.store.update_job, row.job_id, only_in=["RUNNING"], **progress
                    )
                    self.service.notify()
            return
        # The workload has ended.
        if row.state == "CANCELLING" and status.phase != "succeeded":
            terminal, message = "CANCELLED", "cancelled by the user"
        else:
            terminal = _TERMINAL_OF_PHASE[status.phase]
            message = "the pipeline finished" if terminal == "SUCCEEDED" else status.message
        self._start_task(row, self._finalize(row, handle, terminal, message, status), "finalize")

    # ------------------------------------------------------------------ launching

    async def _launch(self, row: JobRow) -> None:
        try:
            await self.service.ensure_run(row)
            spec = await self._launch_spec(row)
            handle = await self._blocking(self.launcher.launch, spec)
        except asyncio.CancelledError:
            raise
        except BackendError as error:
            if error.code not in RETRYABLE_CODES:
                await self._fail_launch(row, error)
                return
            # The tracker is unreachable: the job stays SUBMITTING, the next pass retries.
            log.warning("job %s: launch postponed: %s", row.job_id, error)
            return
        except Exception as error:
            await self._fail_launch(row, error)
            return
        # A workload exists from here on: a failure to record it is retried by the next
        # pass (which adopts it), never turned into a failed job with a trainer still running.
        try:
            await self._record_launch(row, handle, f"started by the {self.launcher.name} launcher")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "job %s: launched, but not recorded yet; the next pass adopts it", row.job_id
            )

    async def _fail_launch(self, row: JobRow, error: Exception) -> None:
        """Nothing was started (a launcher cleans up a workload it could not record)."""
        log.error("job %s: launch failed: %s", row.job_id, error, exc_info=error)
        with contextlib.suppress(Exception):
            await self._end(
                row,
                "FAILED",
                f"the launch failed: {_first_line(error)}",
                error_message=f"the launch failed: {_first_line(error)}",
                error_details=str(error),
            )

    async def _record_launch(self, row: JobRow, handle: Handle, message: str) -> None:
        location = await self._blocking(self.launcher.log_location, handle)
        await self._blocking(
            self.store.update_job,
            row.job_id,
            workload_json=json.dumps(handle, sort_keys=True),
            launcher=self.launcher.name,
            log_source_json=json.dumps(
                {"kind": location.kind, "attributes": location.attributes}, sort_keys=True
            ),
        )
        moved = await self._blocking(
            self.store.transition,
            row.job_id,
            ["SUBMITTING"],
            "RUNNING",
            message,
            stage="EXAMPLE_GEN",
        )
        self.service.notify()
        if moved is not None and moved.run:
            # Best effort: _end sets RUNNING again before a final FINISHED if this failed.
            await self._tracker_step(
                row,
                "mark the run RUNNING",
                self.service.tracker.set_status(
                    moved.run, run_pb2.RUN_STATUS_RUNNING, start_ms=moved.start_time or now_ms()
                ),
                transient_too=True,
            )

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
        """Put the workload's results into the tracker, then end the job. A tracker that is
        unreachable leaves the job as it is (the next pass retries: every step is
        idempotent); a run that can no longer take them (deleted meanwhile) is noted and
        skipped, so the job still ends."""
        notes: list[str] = []
        results = await self._results(row, handle, notes)
        history = await self._blocking(_read_json, results / TRAINING_METRICS_FILE)
        final_metrics: dict[str, float] = {}
        if history is not None:
            final_metrics = {
                str(k): float(v)
                for k, v in dict(history.get("final_metrics") or {}).items()
                if isinstance(v, int | float) and math.isfinite(v)
            }
        if row.run and history is not None:
            notes += await self._tracker_step(row, "ingest the history", self._ingest(row, history))
        if row.run:
            uploads = await self._blocking(_outputs_to_upload, results)
            notes += await self._tracker_step(row, "upload the outputs", self._upload(row, uploads))
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
            "; ".join([message, *notes]),
            final_metrics_json=json.dumps(final_metrics, sort_keys=True),
            progress_percent=100.0 if terminal == "SUCCEEDED" else row.progress_percent,
            stage=status.stage or row.stage,
            current_epoch=max(status.epoch, row.current_epoch, _epochs_done(history)),
            **error,
        )
        forget = getattr(self.launcher, "forget", None)
        if forget is not None:
            forget(handle)

    async def _results(self, row: JobRow, handle: Handle, notes: list[str]) -> Path:
        """Where the workload's files are. A remote launcher downloads them first (from
        Cloud Storage); a download that keeps failing (no access, the bucket is gone) is
        retried a few times, then the job ends without them and says why, instead of
        finalizing again and again."""
        attempt = 0
        while True:
            attempt += 1
            try:
                results: Path = await self._blocking(self.launcher.results_dir, handle)
                return results
            except Exception as error:
                log.warning(
                    "job %s: could not collect the results (attempt %d): %s",
                    row.job_id,
                    attempt,
                    error,
                )
                if attempt > len(RESULTS_RETRY_SECONDS):
                    notes.append(f"could not collect the results: {_first_line(error)}")
                    return self._work_dir(row) / "results-unavailable"
                await asyncio.sleep(RESULTS_RETRY_SECONDS[attempt - 1])

    async def _ingest(self, row: JobRow, history: dict[str, Any]) -> None:
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

    async def _upload(self, row: JobRow, uploads: list[tuple[str, Path, str]]) -> None:
        for path, source, kind in uploads:
            await self.service.tracker.upload_file(row.run, path, source, artifact_type(kind))

    async def _tracker_step(
        self, row: JobRow, what: str, step: Any, *, transient_too: bool = False
    ) -> list[str]:
        """Run one tracker step of a job. A permanent refusal (the run was deleted, or can
        no longer change) is logged and returned as a note; a transient failure (the
        tracker is unreachable) is raised, so the pass retries, unless `transient_too`."""
        try:
            await step
        except CairnError as error:
            transient = isinstance(error, BackendError) and error.code in RETRYABLE_CODES
            if transient and not transient_too:
                raise
            log.warning("job %s: could not %s: %s", row.job_id, what, error)
            return [f"could not {what}: {error}"]
        return []

    async def _end(self, row: JobRow, terminal: str, message: str, **fields: Any) -> None:
        """The run's final status first, then the job's: whoever sees the job ended sees its
        run ended too. An unreachable tracker leaves the job active (the next pass
        retries); a run that cannot take the status is noted and the job ends anyway."""
        notes: list[str] = []
        if row.run:
            notes = await self._tracker_step(row, "end the run", self._end_run(row, terminal))
        await self._blocking(
            self.store.transition,
            row.job_id,
            ACTIVE_STATES,
            terminal,
            "; ".join([message, *notes]),
            finalized=1,
            **fields,
        )
        self.service.notify()

    async def _end_run(self, row: JobRow, terminal: str) -> None:
        tracker = self.service.tracker
        if terminal == "SUCCEEDED":
            # FINISHED is reached from RUNNING only, and a run whose RUNNING status was
            # never recorded is still QUEUED.
            await tracker.set_status(row.run, run_pb2.RUN_STATUS_RUNNING)
        await tracker.set_status(row.run, RUN_STATUS_OF[terminal], end_ms=now_ms())


def _outputs_to_upload(results: Path) -> list[tuple[str, Path, str]]:
    """(artifact path, file, artifact type) of what the trainer's manifest lists, plus
    training_metrics.json. Only regular files inside outputs/ (no symbolic links): a
    manifest never makes the scheduler upload anything else."""
    outputs = (results / OUTPUTS_DIR).resolve()
    uploads: list[tuple[str, Path, str]] = []

    def add(file: Path, kind: str) -> None:
        if file.is_symlink() or not file.is_file():
            return
        resolved = file.resolve()
        if resolved.is_relative_to(outputs):
            uploads.append((resolved.relative_to(outputs).as_posix(), resolved, kind))

    for entry in _read_json_list(outputs / MANIFEST_FILE):
        source = outputs / str(entry.get("path", ""))
        kind = str(entry.get("type", "other"))
        if source.is_symlink() or not source.resolve().is_relative_to(outputs):
            continue
        if source.is_dir():
            for file in sorted(source.rglob("*")):
                add(file, kind)
        else:
            add(source, kind)
    metrics_file = results / TRAINING_METRICS_FILE
    if metrics_file.is_file() and not metrics_file.is_symlink():
        uploads.append((TRAINING_METRICS_FILE, metrics_file, "report"))
    return uploads


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
