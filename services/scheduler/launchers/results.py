"""Results a remote trainer uploaded (cairn_trainer.remote.finish_remote): training_metrics.json,
progress.jsonl and outputs/ under `<results uri>/`, on Cloud Storage. The launchers whose
workloads cannot write the scheduler's disk (Vertex AI, Kubernetes without shared storage)
download them into the job's work_dir, where the reconciler reads them as it reads a local
run's."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from services.common.gcs import storage_client

log = logging.getLogger(__name__)

RESULTS_DIR = "results"


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def download_results(results_uri: str, work_dir: Path, client: Any | None = None) -> Path:
    """Everything under results_uri into <work_dir>/results (afresh each time: the reconciler
    may finalize a job again after a restart); returns that directory."""
    target = work_dir / RESULTS_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    bucket, prefix = split_gcs_uri(results_uri)
    prefix = f"{prefix}/" if prefix else ""
    client = client or storage_client("downloading a job's results")
    count = 0
    for blob in client.list_blobs(bucket, prefix=prefix):
        relative = blob.name[len(prefix) :]
        parts = relative.split("/")
        # Objects only (no "directory" placeholders), and never outside the target: an
        # object name may hold "..", empty segments ("a//b", "/etc/x") or anything else.
        if not relative or any(part in ("", ".", "..") for part in parts):
            log.warning("skipped the result object %r: not a plain relative path", blob.name)
            continue
        path = target.joinpath(*parts)
        if not path.resolve().is_relative_to(target.resolve()):
            log.warning("skipped the result object %r: outside the results", blob.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(path))
        count += 1
    log.info("%d result files from %s", count, results_uri)
    return target
