"""``python -m cairn_trainer run --spec /abs/spec.json``: the whole job, start to result.

The job always ends with work_dir/result.json ({"status": "succeeded"} or
{"status": "failed", "stage", "message", "traceback"}) and exit code 0 or 1. SIGTERM keeps
its default action (immediate exit): everything runs in this one process, so nothing is
left behind, and the scheduler records a cancellation itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from cairn_trainer.fileio import write_json_atomic
from cairn_trainer.paths import JobPaths
from cairn_trainer.prepare import prepare_data
from cairn_trainer.progress import ProgressLog, last_stage
from cairn_trainer.spec import Spec, SpecError, load_spec, work_dir_hint

logger = logging.getLogger("cairn_trainer")

MAX_MESSAGE_CHARS = 500


def one_line(error: BaseException) -> str:
    """The error as one line for result.json. Our own errors (ValueError: SpecError,
    DataError, split errors) are written for the user and kept as they are; others get
    their type in front (a bare KeyError says only the key). TensorFlow wraps errors raised
    while tracing as "in user code:" followed by a trace: the cause is its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, KeyboardInterrupt):
        text = "interrupted"
    elif not lines:
        text = type(error).__name__
    else:
        text = lines[-1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        if not isinstance(error, ValueError):
            text = f"{type(error).__name__}: {text}"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


def failure(stage: str, error: BaseException) -> dict[str, Any]:
    return {
        "status": "failed",
        "stage": stage,
        "message": one_line(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def _fresh_start(paths: JobPaths) -> None:
    """A re-run of a job in the same work_dir starts clean: no stale result for the
    scheduler to read, no previous pipeline run or outputs mixed into this one's."""
    os.makedirs(paths.work_dir, exist_ok=True)
    for path in (paths.result, paths.training_metrics):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    # data/train and data/test only: the launcher may keep other files under data/.
    for directory in (
        paths.tfx,
        paths.outputs,
        os.path.join(paths.data, "train"),
        os.path.join(paths.data, "test"),
    ):
        shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(paths.outputs, exist_ok=True)


def run_job(spec: Spec) -> None:
    paths = JobPaths(spec.work_dir)
    progress = ProgressLog(paths.progress, spec.training.epochs)
    progress.export_env()
    progress.stage_started(
        "ExampleGen",
        f"preparing data: {spec.sample_percent:g}% sample, {spec.split.strategy} split",
    )
    started = time.monotonic()
    prepared = prepare_data(spec, paths.data)
    progress.event("ExampleGen", 3.0, prepared.summary())
    # TFX and TensorFlow load only now, so a bad spec or dataset fails in a second.
    from cairn_trainer.outputs import write_outputs
    from cairn_trainer.pipeline import run_pipeline

    run_pipeline(spec, paths)
    manifest = write_outputs(paths)
    if spec.results_uri:
        # The scheduler cannot read this pod's disk (the Kubernetes launcher with a results
        # URI): the outputs, the history and the progress go to Cloud Storage.
        from cairn_trainer.remote import upload_results

        uploaded = upload_results(paths, spec.results_uri)
        logger.info("uploaded %d result files to %s", uploaded, spec.results_uri)
    progress.event(
        "Evaluation",
        100.0,
        f"finished in {time.monotonic() - started:.0f} s; {len(manifest)} outputs",
    )


def run(spec_path: str) -> int:
    spec_path = os.path.abspath(spec_path)
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        logger.error("invalid spec: %s", error)
        work_dir = work_dir_hint(spec_path)
        if work_dir:
            os.makedirs(work_dir, exist_ok=True)
            invalid = failure("ExampleGen", error)
            invalid["message"] = f"invalid spec: {invalid['message']}"
            write_json_atomic(JobPaths(work_dir).result, invalid)
        return 1
    paths = JobPaths(spec.work_dir)
    result: dict[str, Any] = {"status": "failed", "stage": "ExampleGen", "message": "unknown"}
    try:
        _fresh_start(paths)
        run_job(spec)
        result = {"status": "succeeded"}
    except BaseException as error:  # Including KeyboardInterrupt: a result is always left.
        stage = last_stage()
        logger.error("job failed at %s: %s", stage, one_line(error), exc_info=True)
        result = failure(stage, error)
    finally:
        write_json_atomic(paths.result, result)
    return 0 if result["status"] == "succeeded" else 1


def _configure_logging() -> None:
    """The trainer's own log at INFO; TFX, Beam and TensorFlow only from WARNING (at INFO
    they write thousands of lines per job). Filtering by handler, not by logger level,
    because absl resets its logger's level when TFX parses flags."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    everything = logging.StreamHandler(sys.stderr)
    everything.setLevel(logging.WARNING)
    everything.setFormatter(formatter)
    logging.getLogger().addHandler(everything)
    ours = logging.StreamHandler(sys.stderr)
    ours.setLevel(logging.INFO)
    ours.setFormatter(formatter)
    logger.addHandler(ours)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cairn_trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run one training job")
    run_parser.add_argument("--spec", required=True, help="absolute path of spec.json")
    compile_parser = commands.add_parser(
        "compile",
        help="prepare the data on GCS and compile the pipeline for Vertex AI Pipelines",
    )
    compile_parser.add_argument("--spec", required=True, help="absolute path of spec.json")
    compile_parser.add_argument(
        "--pipeline-root", required=True, help="gs:// prefix for this job's pipeline"
    )
    compile_parser.add_argument("--image", required=True, help="the trainer image")
    compile_parser.add_argument("--output", required=True, help="where to write the JSON")
    args = parser.parse_args(argv)
    # Default SIGTERM: the process (and with it the in-memory Beam workers and TF threads)
    # ends at once, whatever a library may have installed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _configure_logging()
    if args.command == "compile":
        return compile_pipeline(args.spec, args.pipeline_root, args.image, args.output)
    return run(args.spec)


def compile_pipeline(spec_path: str, pipeline_root: str, image: str, output: str) -> int:
    """Exit code 0 with the PipelineJob JSON at `output`, or 1 with the reason on stderr
    (its last line is the message for the user)."""
    from cairn_trainer.remote import compile_for_vertex, write_pipeline_job

    try:
        spec = load_spec(os.path.abspath(spec_path))
        document = compile_for_vertex(spec, pipeline_root=pipeline_root, image=image)
        write_pipeline_job(document, output)
    except Exception as error:
        logger.error("compile failed", exc_info=True)
        print(one_line(error), file=sys.stderr)
        return 1
    logger.info("compiled the pipeline of job %s to %s", spec.job_id, output)
    return 0
