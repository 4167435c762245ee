"""progress.jsonl: one JSON object per event, which the scheduler tails to show the job's
stage and progress.

The TFX components run in this same process (LocalDagRunner, in-memory Beam), but they are
instantiated by TFX from class paths, so the log is found through an environment variable
that the entry point sets rather than passed in.
"""

from __future__ import annotations

import json
import logging
import os

from cairn_trainer.fileio import json_safe, utc_now

PROGRESS_PATH_ENV = "CAIRN_TRAINER_PROGRESS_FILE"
EPOCHS_ENV = "CAIRN_TRAINER_EPOCHS"

# The share of the bar each stage owns, in pipeline order.
STAGE_RANGES: dict[str, tuple[float, float]] = {
    "ExampleGen": (0.0, 10.0),
    "StatisticsGen": (10.0, 20.0),
    "SchemaGen": (20.0, 25.0),
    "Transform": (25.0, 40.0),
    "Trainer": (40.0, 95.0),
    "Evaluation": (95.0, 100.0),
}

logger = logging.getLogger(__name__)

# The stage of the latest event written by this process, so the entry point can say where
# a failure happened even when the event came from inside a TFX executor.
_last_stage = "ExampleGen"


def last_stage() -> str:
    return _last_stage


class ProgressLog:
    """Appends events to progress.jsonl, each written with one O_APPEND write and flushed to
    disk immediately so a reader never sees half a line."""

    def __init__(self, path: str, epochs: int) -> None:
        self.path = path
        self.epochs = epochs

    @classmethod
    def from_env(cls) -> ProgressLog | None:
        path = os.environ.get(PROGRESS_PATH_ENV, "")
        if not path:
            return None
        try:
            epochs = int(os.environ.get(EPOCHS_ENV, "0"))
        except ValueError:
            epochs = 0
        return cls(path, epochs)

    def export_env(self) -> None:
        """Makes this log reachable from the TFX executors (see the module docstring)."""
        os.environ[PROGRESS_PATH_ENV] = self.path
        os.environ[EPOCHS_ENV] = str(self.epochs)

    def event(
        self,
        stage: str,
        progress: float,
        message: str,
        *,
        epoch: int | None = None,
        loss: float | None = None,
    ) -> None:
        global _last_stage
        _last_stage = stage
        record = {
            "time": utc_now(),
            "stage": stage,
            "progress": round(max(0.0, min(100.0, float(progress))), 2),
            "epoch": epoch,
            "epochs": self.epochs,
            "loss": None if loss is None else float(loss),
            "message": message,
        }
        line = json.dumps(json_safe(record), allow_nan=False) + "\n"
        logger.info("progress: %s %.1f%% %s", stage, record["progress"], message)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def stage_started(self, stage: str, message: str = "", progress: float | None = None) -> None:
        start, _ = STAGE_RANGES[stage]
        self.event(stage, start if progress is None else progress, message or f"{stage} started")

    def epoch_finished(self, epoch: int, loss: float | None) -> None:
        """Trainer's share of the bar, by epoch (epochs numbered 1..N)."""
        start, end = STAGE_RANGES["Trainer"]
        fraction = epoch / self.epochs if self.epochs else 1.0
        self.event(
            "Trainer",
            start + (end - start) * fraction,
            f"epoch {epoch}/{self.epochs} finished",
            epoch=epoch,
            loss=loss,
        )


def record_stage_start(stage: str, message: str = "", progress: float | None = None) -> None:
    """Called by the TFX executors (cairn_trainer.executors) when a component starts."""
    log = ProgressLog.from_env()
    if log is None:
        global _last_stage
        _last_stage = stage
        return
    log.stage_started(stage, message, progress)
