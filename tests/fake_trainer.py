"""A stand-in for `python -m cairn_trainer run --spec X` that speaks the trainer's file
contract (progress.jsonl, training_metrics.json, outputs/manifest.json, result.json) in well
under a second, so the scheduler's reconcile loop and the real local launcher can be tested
without TensorFlow. The real trainer is exercised end to end in tests/e2e.

What it does depends on the job's sample_percent (a field every job has):
    10  succeed after `epochs` quick epochs (the normal case)
     5  fail in the Trainer stage with a result.json saying why
    25  run until it is signalled (for cancel tests)
    50  exit with code 3 without a result (a crash)
   100  ignore SIGTERM and run until killed (the launcher's SIGKILL after the grace period)
It also writes env.json with the environment it was started with.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _write(path: Path, value: object) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def _log(level: str, message: str) -> None:
    """A line as the trainer's logging writes it (its stdout is the job's log file)."""
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{now},000 {level} cairn_trainer.fake: {message}", flush=True)


def _event(
    work_dir: Path, stage: str, progress: float, epoch: int | None, loss: float | None
) -> None:
    _log("INFO", f"progress: {stage} {progress}% {stage}")
    with (work_dir / "progress.jsonl").open("a") as handle:
        handle.write(
            json.dumps(
                {
                    "time": "2026-01-01T00:00:00Z",
                    "stage": stage,
                    "progress": progress,
                    "epoch": epoch,
                    "loss": loss,
                    "message": stage,
                }
            )
            + "\n"
        )


def main() -> int:
    spec = json.loads(Path(sys.argv[-1]).read_text())
    work_dir = Path(spec["work_dir"])
    _write(work_dir / "env.json", dict(os.environ))
    mode = int(spec["sample_percent"])
    epochs = int(spec["training"]["epochs"])
    if mode == 100:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for stage, progress in (("ExampleGen", 5.0), ("Transform", 30.0)):
        _event(work_dir, stage, progress, None, None)
    _log("WARNING", "a warning from Transform\n  with a second line")
    if mode in (25, 100):
        _event(work_dir, "Trainer", 40.0, 0, None)
        beat = 0
        while True:
            beat += 1
            _log("INFO", f"still training ({beat})")
            time.sleep(0.2)
    if mode == 50:
        return 3
    if mode == 5:
        _event(work_dir, "Trainer", 40.0, 0, None)
        _log("ERROR", "loss became NaN")
        print("Traceback (most recent call last):\n  File x, line 1\nValueError: NaN", flush=True)
        _write(
            work_dir / "result.json",
            {
                "status": "failed",
                "stage": "Trainer",
                "message": "loss became NaN",
                "traceback": "Traceback: ...",
            },
        )
        return 1
    history = []
    for epoch in range(1, epochs + 1):
        loss = 1.0 / epoch
        _event(work_dir, "Trainer", 40.0 + 55.0 * epoch / epochs, epoch, loss)
        history += [
            {"key": "train/loss", "epoch": epoch, "value": loss},
            {"key": "val/loss", "epoch": epoch, "value": loss * 1.1},
        ]
    final = {"test/recall_at_10": 0.25, "test/loss": 0.5}
    history += [{"key": k, "epoch": epochs, "value": v} for k, v in final.items()]
    _write(
        work_dir / "training_metrics.json",
        {
            "epochs": list(range(1, epochs + 1)),
            "history": history,
            "final_metrics": final,
            "available": True,
        },
    )
    outputs = work_dir / "outputs"
    (outputs / "serving_model" / "variables").mkdir(parents=True, exist_ok=True)
    (outputs / "serving_model" / "saved_model.pb").write_bytes(b"model")
    (outputs / "serving_model" / "variables" / "variables.index").write_bytes(b"index")
    (outputs / "schema.pbtxt").write_text("feature { name: 'user_id' }")
    _write(
        outputs / "manifest.json",
        [
            {"path": "serving_model", "type": "model", "directory": True},
            {"path": "schema.pbtxt", "type": "data", "directory": False},
            {"path": "../escape.txt", "type": "other", "directory": False},
        ],
    )
    _event(work_dir, "Evaluation", 100.0, epochs, 1.0 / epochs)
    _write(work_dir / "result.json", {"status": "succeeded"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
