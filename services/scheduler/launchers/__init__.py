"""Launchers run a job's workload and report on it, behind one interface.

The reconcile loop (services.scheduler.reconciler) is the only caller. Every method is
blocking (it runs on a worker thread) and idempotent per job id:
- `launch` starts the workload, or returns the handle of the one already started for this
  job (a crash between launch and recording the handle must not launch twice);
- `status` polls it (phase, stage, progress, epoch, loss, error);
- `cancel` stops it (again and again until it has stopped);
- `adopt` finds the workload of a job after a scheduler restart, without launching;
- `log_location` says where its logs can be read (for the log proxy);
- `results_dir` is where the trainer's files are (training_metrics.json, outputs/).
A launcher may also have `watch(on_change, stop)`: blocking, it calls `on_change(job id)`
whenever a workload changes, until `stop` (a threading.Event) is set; the reconcile loop
then wakes up at once instead of at its next poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Phase = Literal["pending", "running", "succeeded", "failed", "lost"]
Handle = dict[str, Any]


@dataclass(frozen=True)
class MachineType:
    """What a hardware tier means: the machine type clouds are asked for, and its size."""

    tier: str
    machine_type: str
    cpus: int
    memory_gb: int


MACHINE_TYPES: dict[str, MachineType] = {
    "SMALL": MachineType("SMALL", "e2-standard-4", 4, 16),
    "MEDIUM": MachineType("MEDIUM", "e2-standard-8", 8, 32),
    "LARGE": MachineType("LARGE", "e2-standard-16", 16, 64),
}


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launcher needs to start one job's workload."""

    job_id: str
    work_dir: Path
    # The trainer's spec.json (the cairn_trainer contract), hardware included.
    trainer_spec: dict[str, Any]
    machine: MachineType


@dataclass(frozen=True)
class WorkloadStatus:
    phase: Phase
    # A PipelineStage name without its prefix ("TRAINER"), or "" when unknown.
    stage: str = ""
    progress_percent: float = 0.0
    epoch: int = 0
    loss: float | None = None
    message: str = ""
    details: str = ""
    error_stage: str = ""


@dataclass(frozen=True)
class LogLocation:
    """Where a workload's logs are: a local file, a Kubernetes pod, a Cloud Logging filter."""

    kind: Literal["file", "kubernetes", "cloud_logging"]
    attributes: dict[str, str] = field(default_factory=dict)


class Launcher(Protocol):
    name: str

    def launch(self, spec: LaunchSpec) -> Handle: ...

    def status(self, handle: Handle) -> WorkloadStatus: ...

    def cancel(self, handle: Handle) -> None: ...

    def adopt(self, job_id: str, work_dir: Path) -> Handle | None: ...

    def log_location(self, handle: Handle) -> LogLocation: ...

    def results_dir(self, handle: Handle) -> Path: ...
