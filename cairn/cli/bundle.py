"""Portable experiment bundles: `cairn runs export` and `cairn runs import`.

A bundle is ONE gzip-compressed tar file (conventionally `*.tar.gz`) with this layout:

    manifest.json                  format "cairn-bundle/1", the source experiment and every run
    metrics/<run_id>.jsonl         every point of every metric of the run, one JSON object a line
    artifacts/<run_id>/<path>      the content of each artifact (absent with --no-artifacts)

manifest.json (keys are stable; times are ISO-8601 UTC with milliseconds):

    {"format": "cairn-bundle/1", "created_time": ..., "cairn_version": ...,
     "experiment": {"experiment_id", "name", "description", "tags"},
     "filter": "...", "artifacts_included": true,
     "runs": [{"run_id", "run_name", "status", "start_time", "end_time", "note", "user",
               "tags", "params", "lineage": {"dataset_id", "dataset_name", "pipeline_id",
               "node_id", "job_id", "model_type"}, "version", "environment": {...} | null,
               "metrics_file": "metrics/<run_id>.jsonl", "metrics": {"<key>": <point count>},
               "artifacts": [{"path", "artifact_type", "size_bytes", "sha256"}]}]}

A metrics line is {"key": "val_loss", "step": 3, "value": 0.25, "timestamp_ms": 1767225600000};
NaN and infinities, which JSON numbers cannot hold, are the strings "NaN", "Infinity" and
"-Infinity".

Export streams: runs are listed a page at a time, metric histories are paged into the JSONL
file, artifacts are downloaded one at a time to a temporary directory and appended to the
archive. The archive is written next to its destination and renamed when complete.

Import validates the whole bundle before it changes anything (format, member names, missing
files, sizes and SHA-256 digests, metrics lines and counts), extracting only regular files and
only below a private temporary directory. It is idempotent: a run is created with a request_id
derived from (source run id, target experiment id), so importing again finds the run instead of
duplicating it. For such a run, params accept the same values again, tags and the note are only
added where missing (changes made in the target are kept), the metric points it already holds
are skipped and the rest go in batches whose ids derive from (source run id, metric key, point
range), artifacts with the same content are skipped, and a terminal status is left alone. A
newer bundle of a run that has grown since therefore adds just what is new. Version numbers are
assigned anew by the target tracker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shutil
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, TextIO, TypeVar

import click
import grpc
from google.protobuf import field_mask_pb2

from cairn import __version__
from cairn.client import ARTIFACT_TYPES, Tracker
from cairn.common.v1 import environment_pb2, lineage_pb2
from cairn.errors import (
    AlreadyExistsError,
    CairnError,
    InvalidArgumentError,
    NotFoundError,
    from_rpc_error,
)
from cairn.tracker.v1 import (
    experiment_pb2,
    lifecycle_pb2,
    run_pb2,
)
from cairn.tracker.v1 import (
    tracker_service_pb2 as pb,
)
from cairn.types import Experiment

FORMAT = "cairn-bundle/1"
MANIFEST = "manifest.json"
METRICS_DIR = "metrics"
ARTIFACTS_DIR = "artifacts"
HISTORY_PAGE = 10_000
METRIC_CHUNK = 5_000  # points per imported batch (part of the batch id: do not change lightly)
MAX_ENTRIES = 1_000  # params/tags per call (the tracker's limit)
TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED"})
LINEAGE_FIELDS = ("dataset_id", "dataset_name", "pipeline_id", "node_id", "job_id", "model_type")
_RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

T = TypeVar("T")

# main.py registers every module's COMMANDS; export/import live in tracking.py's `runs` group.
COMMANDS: list[click.Command] = []


class BundleError(InvalidArgumentError):
    """A bundle that cannot be read or imported (bad format, missing or corrupt content)."""


# ---------------------------------------------------------------------- shared helpers


def rpc(tracker: Tracker, method: Callable[..., T], request: Any, timeout: float = 60.0) -> T:
    """Call a raw stub method with the tracker's credentials, raising CairnError subclasses."""
    try:
        return method(request, timeout=timeout, metadata=tracker.metadata)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def ms_to_iso(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def iso_to_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise BundleError(f"bad time {text!r} in the bundle manifest") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def resolve_experiment(tracker: Tracker, name_or_id: str) -> Experiment:
    """By display name first, then by id (deleted experiments included)."""
    return tracker.get_experiment(name_or_id)


def encode_value(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def decode_value(value: object) -> float:
    if isinstance(value, str):
        if value in _NON_FINITE:
            return _NON_FINITE[value]
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


# ---------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    path: Path
    experiment: Experiment
    run_ids: list[str] = field(default_factory=list)
    metric_points: int = 0
    artifact_count: int = 0
    artifact_bytes: int = 0
    artifacts_included: bool = True
    file_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "format": FORMAT,
            "experiment": {
                "experiment_id": self.experiment.experiment_id,
                "name": self.experiment.name,
            },
            "run_count": len(self.run_ids),
            "run_ids": self.run_ids,
            "metric_points": self.metric_points,
            "artifact_count": self.artifact_count,
            "artifact_bytes": self.artifact_bytes,
            "artifacts_included": self.artifacts_included,
            "file_bytes": self.file_bytes,
        }


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    info.type = tarfile.REGTYPE
    return info


def _add_file(archive: tarfile.TarFile, name: str, source: Path) -> None:
    with source.open("rb") as handle:
        archive.addfile(_tar_info(name, source.stat().st_size), handle)


def _search_run_ids(tracker: Tracker, experiment_id: str, filter_text: str) -> Iterator[str]:
    token = ""
    while True:
        response = rpc(
            tracker,
            tracker.stub.SearchRuns,
            pb.SearchRunsRequest(
                experiment_ids=[experiment_id],
                filter=filter_text,
                order_by="start_time ASC",
                page_size=500,
                page_token=token,
                view=run_pb2.RUN_VIEW_BASIC,
            ),
        )
        for run in response.runs:
            yield run.run_id
        token = response.next_page_token
        if not token:
            return


def _write_metric_history(tracker: Tracker, run: run_pb2.Run, key: str, out: TextIO) -> int:
    """Page through one metric's full history into `out`; return the point count."""
    count = 0
    token = ""
    while True:
        response = rpc(
            tracker,
            tracker.stub.ListMetricHistory,
            pb.ListMetricHistoryRequest(
                run=run.name, metric_key=key, page_size=HISTORY_PAGE, page_token=token
            ),
        )
        for point in response.points:
            line = {
                "key": key,
                "step": point.step,
                "value": encode_value(point.value),
                "timestamp_ms": point.timestamp.ToMilliseconds(),
            }
            out.write(json.dumps(line, allow_nan=False) + "\n")
            count += 1
        token = response.next_page_token
        if not token:
            return count


def _artifact_type_word(value: int) -> str:
    for word, number in ARTIFACT_TYPES.items():
        if number == value:
            return word
    return "other"


def _run_manifest(run: run_pb2.Run) -> dict[str, Any]:
    environment: dict[str, Any] | None = None
    if run.HasField("environment"):
        environment = {
            f.name: getattr(run.environment, f.name)
            for f in environment_pb2.Environment.DESCRIPTOR.fields
        }
    return {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "status": run_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_"),
        "start_time": ms_to_iso(run.start_time.ToMilliseconds()),
        "end_time": ms_to_iso(run.end_time.ToMilliseconds()) if run.HasField("end_time") else None,
        "note": run.note,
        "user": run.user,
        "tags": dict(sorted(run.tags.items())),
        "params": dict(sorted(run.params.items())),
        "lineage": {f: getattr(run.lineage, f) for f in LINEAGE_FIELDS},
        "version": run.version,
        "environment": environment,
        "metrics_file": f"{METRICS_DIR}/{run.run_id}.jsonl",
        "metrics": {},
        "artifacts": [
            {
                "path": a.path,
                "artifact_type": _artifact_type_word(a.artifact_type),
                "size_bytes": a.size_bytes,
                "sha256": a.sha256,
            }
            for a in run.artifacts
        ],
    }


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _export_run(
    tracker: Tracker, archive: tarfile.TarFile, work: Path, run_id: str, summary: ExportSummary
) -> dict[str, Any]:
    """Append one run's metrics (and artifacts) to the archive; return its manifest entry."""
    run: run_pb2.Run = rpc(
        tracker,
        tracker.stub.GetRun,
        pb.GetRunRequest(name=f"experiments/-/runs/{run_id}", view=run_pb2.RUN_VIEW_FULL),
    )
    entry = _run_manifest(run)
    metrics_path = work / "metrics.jsonl"
    with metrics_path.open("w", encoding="utf-8") as handle:
        for key in sorted({m.key for m in run.metrics}):
            count = _write_metric_history(tracker, run, key, handle)
            entry["metrics"][key] = count
            summary.metric_points += count
    _add_file(archive, entry["metrics_file"], metrics_path)
    metrics_path.unlink()
    for artifact in entry["artifacts"]:
        summary.artifact_count += 1
        summary.artifact_bytes += artifact["size_bytes"]
        if not summary.artifacts_included:
            continue
        blob = work / "artifact.bin"
        # Checks the content against the tracker's SHA-256 while it streams in.
        tracker.download_artifact(run.name, artifact["path"], blob)
        _add_file(archive, f"{ARTIFACTS_DIR}/{run.run_id}/{artifact['path']}", blob)
        blob.unlink()
    summary.run_ids.append(run.run_id)
    return entry


def export_bundle(
    tracker: Tracker,
    experiment_ref: str,
    out: Path,
    *,
    filter_text: str = "",
    include_artifacts: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write the experiment's runs (those matching `filter_text`) to a bundle at `out`."""
    experiment = resolve_experiment(tracker, experiment_ref)
    summary = ExportSummary(out, experiment, artifacts_included=include_artifacts)
    partial = out.with_name(out.name + ".partial")
    header = {
        "format": FORMAT,
        "created_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "cairn_version": __version__,
        "experiment": {
            "experiment_id": experiment.experiment_id,
            "name": experiment.name,
            "description": experiment.description,
            "tags": experiment.tags,
        },
        "filter": filter_text,
        "artifacts_included": include_artifacts,
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="cairn-export-") as scratch,
            tarfile.open(partial, "w:gz") as archive,
        ):
            work = Path(scratch)
            manifest_path = work / MANIFEST
            # The manifest is written run by run (environments with git diffs can be large)
            # and added to the archive last, when it is complete.
            with manifest_path.open("w", encoding="utf-8") as manifest:
                opening = json.dumps(header, indent=2, allow_nan=False)
                manifest.write(opening.removesuffix("\n}") + ',\n  "runs": [')
                for run_id in _search_run_ids(tracker, experiment.experiment_id, filter_text):
                    entry = _export_run(tracker, archive, work, run_id, summary)
                    text = json.dumps(entry, indent=2, allow_nan=False).replace("\n", "\n    ")
                    manifest.write(("\n    " if len(summary.run_ids) == 1 else ",\n    ") + text)
                    if progress is not None:
                        progress(f"exported run {run_id[:8]} ({entry['run_name']})")
                manifest.write("\n  ]\n}\n" if summary.run_ids else "]\n}\n")
            _add_file(archive, MANIFEST, manifest_path)
        partial.replace(out)
    except CairnError:  # (UnavailableError is an OSError too: keep it as it is)
        _discard(partial)
        raise
    except OSError as error:
        _discard(partial)
        raise CairnError(f"cannot write the bundle {out}: {error}") from None
    except BaseException:
        _discard(partial)
        raise
    summary.file_bytes = out.stat().st_size
    return summary


# ---------------------------------------------------------------------- reading bundles


def _member_path(name: str) -> PurePosixPath:
    """The safe relative path of an archive member, or BundleError."""
    if not name or "\x00" in name or "\\" in name:
        raise BundleError(f"unsafe member {name!r} in the bundle")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"unsafe member {name!r} in the bundle: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BundleError(f"unsafe member {name!r} in the bundle: path traversal ('..')")
    if not parts:
        raise BundleError(f"unsafe member {name!r} in the bundle")
    return PurePosixPath(*parts)


def _check_artifact_path(run_id: str, path: object) -> str:
    if not isinstance(path, str) or not path:
        raise BundleError(f"run {run_id}: an artifact has no path")
    segments = path.split("/")
    if (
        path.startswith("/")
        or "\\" in path
        or any(s in ("", ".", "..") for s in segments)
        or any(not c.isprintable() for c in path)
    ):
        raise BundleError(f"run {run_id}: unsafe artifact path {path!r} in the manifest")
    return path


def _extract(bundle: Path, target: Path) -> None:
    """Extract regular files (only) below `target`, refusing anything that could escape it."""
    root = target.resolve()
    if not bundle.is_file():
        raise BundleError(f"no such bundle: {bundle}")
    try:
        with tarfile.open(bundle, "r:gz") as archive:
            for member in archive:
                relative = _member_path(member.name)
                if member.isdir():
                    continue
                if not member.isreg():
                    raise BundleError(
                        f"unsafe member {member.name!r} in the bundle: only regular files are "
                        "allowed (no links or devices)"
                    )
                destination = (root / relative).resolve()
                if not destination.is_relative_to(root):
                    raise BundleError(f"unsafe member {member.name!r} in the bundle")
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    raise BundleError(f"cannot read member {member.name!r} of the bundle")
                with source, destination.open("wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise BundleError(
            f"{bundle} is not a readable cairn bundle (a gzip-compressed tar file): {error}"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _iter_metrics(path: Path, run_id: str) -> Iterator[tuple[str, float, int, int]]:
    """(key, value, step, timestamp_ms) of each line, or BundleError naming the bad line."""
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                key = data["key"]
                step = data["step"]
                stamp = data["timestamp_ms"]
                if not isinstance(key, str) or not key:
                    raise ValueError("key must be a non-empty string")
                if isinstance(step, bool) or not isinstance(step, int):
                    raise ValueError("step must be an integer")
                if isinstance(stamp, bool) or not isinstance(stamp, int):
                    raise ValueError("timestamp_ms must be an integer")
                value = decode_value(data["value"])
            except (ValueError, KeyError, TypeError) as error:
                raise BundleError(
                    f"bad metrics line {number} of {METRICS_DIR}/{run_id}.jsonl: {error}"
                ) from None
            yield key, value, step, stamp


@dataclass
class Bundle:
    """An extracted, validated bundle."""

    root: Path
    manifest: dict[str, Any]

    @property
    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.manifest["runs"]
        return runs

    @property
    def artifacts_included(self) -> bool:
        return bool(self.manifest.get("artifacts_included", True))

    def metrics_file(self, run: Mapping[str, Any]) -> Path:
        return self.root / METRICS_DIR / f"{run['run_id']}.jsonl"

    def artifact_file(self, run: Mapping[str, Any], path: str) -> Path:
        return self.root / ARTIFACTS_DIR / str(run["run_id"]) / path


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise BundleError(f"the manifest lacks {where}{key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise BundleError(f"the manifest's {where}{key!r} has the wrong type")
    return value


def _validate(root: Path) -> Bundle:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"not a cairn bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"{MANIFEST} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST} is not a JSON object")
    found = manifest.get("format")
    if found != FORMAT:
        raise BundleError(
            f"unsupported bundle format {found!r}: this version of cairn reads {FORMAT!r}"
        )
    experiment = _require(manifest, "experiment", dict, "")
    _require(experiment, "name", str, "experiment.")
    runs = _require(manifest, "runs", list, "")
    bundle = Bundle(root, manifest)
    seen: set[str] = set()
    for index, run in enumerate(runs):
        if not isinstance(run, dict):
            raise BundleError(f"run #{index} of the manifest is not an object")
        run_id = _require(run, "run_id", str, f"run #{index}: ")
        if not _RUN_ID.fullmatch(run_id):
            raise BundleError(f"run #{index} has an unsafe run_id {run_id!r}")
        if run_id in seen:
            raise BundleError(f"run {run_id} appears twice in the manifest")
        seen.add(run_id)
        where = f"run {run_id}: "
        for key in ("run_name", "status", "start_time"):
            _require(run, key, str, where)
        for key in ("tags", "params", "metrics", "lineage"):
            _require(run, key, dict, where)
        artifacts = _require(run, "artifacts", list, where)
        if run["status"] not in ("QUEUED", "RUNNING", *TERMINAL):
            raise BundleError(f"run {run_id}: unknown status {run['status']!r}")
        iso_to_ms(run["start_time"])
        if run.get("end_time") is not None:
            iso_to_ms(run["end_time"])
        expected: dict[str, int] = run["metrics"]
        metrics_file = bundle.metrics_file(run)
        if expected and not metrics_file.is_file():
            raise BundleError(f"the bundle is missing {METRICS_DIR}/{run_id}.jsonl")
        if metrics_file.is_file():
            counts: dict[str, int] = {}
            for key, *_ in _iter_metrics(metrics_file, run_id):
                counts[key] = counts.get(key, 0) + 1
            if counts != {k: v for k, v in expected.items() if v}:
                raise BundleError(
                    f"{METRICS_DIR}/{run_id}.jsonl does not hold the points the manifest lists "
                    f"(found {sum(counts.values())}, expected {sum(expected.values())})"
                )
        for artifact in artifacts:
            if not isinstance(artifact, dict):
                raise BundleError(f"run {run_id}: an artifact entry is not an object")
            path = _check_artifact_path(run_id, artifact.get("path"))
            kind = artifact.get("artifact_type", "other")
            if kind not in ARTIFACT_TYPES:
                raise BundleError(f"run {run_id}: artifact {path!r} has unknown type {kind!r}")
            sha = _require(artifact, "sha256", str, f"{where}artifact {path!r}: ")
            if not bundle.artifacts_included:
                continue
            content = bundle.artifact_file(run, path)
            if not content.is_file():
                raise BundleError(f"the bundle is missing {ARTIFACTS_DIR}/{run_id}/{path}")
            size = artifact.get("size_bytes")
            if isinstance(size, int) and content.stat().st_size != size:
                raise BundleError(
                    f"artifact {path!r} of run {run_id} is {content.stat().st_size} bytes; "
                    f"the manifest says {size}"
                )
            actual = _sha256(content)
            if actual != sha.lower():
                raise BundleError(
                    f"artifact {path!r} of run {run_id} is corrupt: sha256 {actual} does not "
                    f"match the manifest's {sha}"
                )
    return bundle


def open_bundle(bundle: Path, workdir: Path) -> Bundle:
    """Extract `bundle` below `workdir` and validate it completely."""
    _extract(bundle, workdir)
    return _validate(workdir)


# ---------------------------------------------------------------------- import


@dataclass
class RunImport:
    source_run_id: str
    run_id: str
    run_name: str
    result: str  # created | reused | skipped
    status: str
    source_version: int
    version: int
    new_params: int = 0
    stored_points: int = 0
    duplicate_batches: int = 0
    uploaded_artifacts: int = 0
    skipped_artifacts: int = 0
    status_set: bool = False
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ImportSummary:
    path: Path
    experiment_id: str
    experiment_name: str
    experiment_created: bool
    runs: list[RunImport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "format": FORMAT,
            "experiment": {
                "experiment_id": self.experiment_id,
                "name": self.experiment_name,
                "created": self.experiment_created,
            },
            "runs": [r.to_dict() for r in self.runs],
        }


def _target_experiment(
    tracker: Tracker, name: str, source: Mapping[str, Any]
) -> tuple[experiment_pb2.Experiment, bool]:
    try:
        found = rpc(
            tracker,
            tracker.stub.GetExperimentByName,
            pb.GetExperimentByNameRequest(display_name=name),
        )
    except NotFoundError:
        found = None
    if found is not None:
        if found.lifecycle_state == lifecycle_pb2.LIFECYCLE_STATE_DELETED:
            raise CairnError(
                f"experiment {name!r} is deleted in the target; restore it first "
                f"(cairn experiments restore {name!r}) or import with --experiment OTHER"
            )
        return found, False
    reuse_source = name == source.get("name")
    tags = source.get("tags") if reuse_source else None
    if not isinstance(tags, dict):
        tags = {}
    request = pb.CreateExperimentRequest(
        experiment=experiment_pb2.Experiment(
            display_name=name,
            description=str(source.get("description") or "") if reuse_source else "",
            tags={str(k): str(v) for k, v in tags.items()},
        ),
        request_id=uuid.uuid4().hex,
    )
    try:
        return rpc(tracker, tracker.stub.CreateExperiment, request), True
    except AlreadyExistsError:  # created concurrently
        found = rpc(
            tracker,
            tracker.stub.GetExperimentByName,
            pb.GetExperimentByNameRequest(display_name=name),
        )
        return found, False


def _chunks(entries: Mapping[str, str], size: int = MAX_ENTRIES) -> Iterator[dict[str, str]]:
    items = list(entries.items())
    for start in range(0, len(items), size):
        yield dict(items[start : start + size])


def _create_request(
    run: Mapping[str, Any], experiment_id: str
) -> tuple[pb.CreateRunRequest, dict[str, str]]:
    """The CreateRun request (idempotent per source run and target experiment) and the run's
    tags.

    The request carries only what a run cannot change later (start time, lineage, environment,
    user): the tracker refuses a request_id reused with another request, and a newer bundle of
    the same run may have a new name, note or tags, which are applied after creation."""
    tags = {str(k): str(v) for k, v in run["tags"].items()}
    message = run_pb2.Run(
        status=run_pb2.RUN_STATUS_QUEUED
        if run["status"] == "QUEUED"
        else run_pb2.RUN_STATUS_RUNNING,
        user=str(run.get("user") or ""),
        lineage=lineage_pb2.Lineage(
            **{f: str(run["lineage"].get(f) or "") for f in LINEAGE_FIELDS}
        ),
    )
    message.start_time.FromMilliseconds(iso_to_ms(run["start_time"]))
    environment = run.get("environment")
    if isinstance(environment, dict):
        known = {f.name for f in environment_pb2.Environment.DESCRIPTOR.fields}
        message.environment.CopyFrom(
            environment_pb2.Environment(**{k: v for k, v in environment.items() if k in known})
        )
    request_id = (
        "cairn-import-"
        + hashlib.sha256(f"run\0{run['run_id']}\0{experiment_id}".encode()).hexdigest()
    )
    return (
        pb.CreateRunRequest(
            parent=f"experiments/{experiment_id}", run=message, request_id=request_id
        ),
        tags,
    )


def batch_id(source_run_id: str, key: str, first: int, last: int) -> str:
    """The id of the batch holding points first..last (0-based, inclusive) of a key's history
    in the bundle: the same bundle always yields the same batches, which the tracker stores
    once."""
    text = f"{source_run_id}\0{key}\0{first}\0{last}"
    return "imp-" + hashlib.sha256(text.encode()).hexdigest()[:48]


def _metric_batches(
    run_name: str, source_run_id: str, path: Path, skip: Mapping[str, int]
) -> Iterator[pb.StreamMetricsRequest]:
    """StreamMetrics messages of at most METRIC_CHUNK points of one key, read lazily, leaving
    out the first skip[key] points of each key (already in the target)."""
    open_batches: dict[str, tuple[int, pb.StreamMetricsRequest]] = {}
    seen: dict[str, int] = {}

    def sealed(key: str, first: int, request: pb.StreamMetricsRequest) -> pb.StreamMetricsRequest:
        request.batch_id = batch_id(source_run_id, key, first, first + len(request.metrics) - 1)
        return request

    for key, value, step, stamp in _iter_metrics(path, source_run_id):
        index = seen.get(key, 0)
        seen[key] = index + 1
        if index < skip.get(key, 0):
            continue
        if key not in open_batches:
            open_batches[key] = (index, pb.StreamMetricsRequest(run=run_name))
        first, request = open_batches[key]
        point = request.metrics.add(key=key, value=value, step=step)
        point.timestamp.FromMilliseconds(stamp)
        if len(request.metrics) >= METRIC_CHUNK:
            del open_batches[key]
            yield sealed(key, first, request)
    for key, (first, request) in open_batches.items():
        yield sealed(key, first, request)


def _stored_points(tracker: Tracker, run_name: str, key: str) -> int:
    response = rpc(
        tracker,
        tracker.stub.ListMetricHistory,
        pb.ListMetricHistoryRequest(run=run_name, metric_key=key, page_size=1),
    )
    return int(response.total_point_count)


def _import_run(
    tracker: Tracker, bundle: Bundle, run: Mapping[str, Any], experiment_id: str
) -> RunImport:
    request, tags = _create_request(run, experiment_id)
    target = rpc(tracker, tracker.stub.CreateRun, request)
    result = RunImport(
        source_run_id=run["run_id"],
        run_id=target.run_id,
        run_name=target.run_name,
        result="reused",
        status=run_pb2.RunStatus.Name(target.status).removeprefix("RUN_STATUS_"),
        source_version=run["version"] if isinstance(run.get("version"), int) else 0,
        version=target.version,
    )
    if target.lifecycle_state == lifecycle_pb2.LIFECYCLE_STATE_DELETED:
        result.result = "skipped"
        result.message = (
            "imported before and since deleted in the target: restore it "
            f"(cairn runs restore {target.run_id}) or purge it (cairn gc) to import again"
        )
        return result
    # CreateRun answers a repeated request_id with the earlier run, indistinguishable from a
    # new one. An empty metric batch with a deterministic id tells them apart without any
    # visible trace: only the first import claims it.
    marker = rpc(
        tracker,
        tracker.stub.LogMetrics,
        pb.LogMetricsRequest(run=target.name, batch_id=batch_id(run["run_id"], "", 0, 0)),
    )
    created = not marker.duplicate
    if created:
        result.result = "created"
        if run["run_name"]:
            target = rpc(
                tracker,
                tracker.stub.UpdateRun,
                pb.UpdateRunRequest(
                    run=run_pb2.Run(name=target.name, run_name=run["run_name"]),
                    update_mask=field_mask_pb2.FieldMask(paths=["run_name"]),
                ),
            )
            result.run_name = target.run_name
    # A run imported before only gains the tags and note it lacks: changes made in the
    # target since are kept.
    missing_tags = {k: v for k, v in tags.items() if k not in target.tags}
    for chunk in _chunks(missing_tags):
        rpc(tracker, tracker.stub.SetRunTags, pb.SetRunTagsRequest(run=target.name, tags=chunk))
    note = str(run.get("note") or "")
    if not target.note and note:
        tracker.set_note(note, run_id=target.name)
    params = {str(k): str(v) for k, v in run["params"].items()}
    for chunk in _chunks(params):
        try:
            response = rpc(
                tracker, tracker.stub.LogParams, pb.LogParamsRequest(run=target.name, params=chunk)
            )
        except AlreadyExistsError as error:
            raise CairnError(
                f"run {target.run_id} in the target already has different params than source "
                f"run {run['run_id']}: {error.message}",
                reason=error.reason,
            ) from None
        result.new_params += response.new_param_count
    metrics_file = bundle.metrics_file(run)
    if run["metrics"] and metrics_file.is_file():
        # Histories are append-only in step order and batches are stored in stream order, so
        # the points a run imported before already holds are the first ones of each key in
        # the bundle: an interrupted import resumes, a newer bundle of a grown run adds only
        # the new points, and the batch ids make any overlap harmless.
        skip = (
            {} if created else {k: _stored_points(tracker, target.name, k) for k in run["metrics"]}
        )
        streamed = rpc(
            tracker,
            tracker.stub.StreamMetrics,
            _metric_batches(target.name, run["run_id"], metrics_file, skip),
            timeout=600.0,
        )
        result.stored_points = int(streamed.stored_point_count)
        result.duplicate_batches = int(streamed.duplicate_batch_count)
    if bundle.artifacts_included and run["artifacts"]:
        existing = {a.path: a.sha256 for a in tracker.list_artifacts(target.name)}
        for artifact in run["artifacts"]:
            path = artifact["path"]
            if existing.get(path) == artifact["sha256"].lower():
                result.skipped_artifacts += 1
                continue
            try:
                tracker.log_artifact(
                    bundle.artifact_file(run, path),
                    artifact.get("artifact_type", "other"),
                    artifact_path=path,
                    run_id=target.name,
                )
            except AlreadyExistsError as error:
                raise CairnError(
                    f"run {target.run_id} in the target already has artifact {path!r} with "
                    f"other content: {error.message}",
                    reason=error.reason,
                ) from None
            result.uploaded_artifacts += 1
    status = run["status"]
    if status in TERMINAL and result.status not in TERMINAL:
        update = run_pb2.Run(name=target.name, status=f"RUN_STATUS_{status}")
        paths = ["status"]
        if run.get("end_time"):
            update.end_time.FromMilliseconds(iso_to_ms(run["end_time"]))
            paths.append("end_time")
        updated = rpc(
            tracker,
            tracker.stub.UpdateRun,
            pb.UpdateRunRequest(run=update, update_mask=field_mask_pb2.FieldMask(paths=paths)),
        )
        result.status = run_pb2.RunStatus.Name(updated.status).removeprefix("RUN_STATUS_")
        result.status_set = True
    return result


def import_bundle(
    tracker: Tracker,
    path: Path,
    *,
    experiment_name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ImportSummary:
    """Import a bundle into the tracker; safe to repeat (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="cairn-import-") as scratch:
        bundle = open_bundle(path, Path(scratch))
        source = bundle.manifest["experiment"]
        name = (experiment_name or source["name"]).strip()
        if not name:
            raise InvalidArgumentError("the target experiment name must not be empty")
        experiment, created = _target_experiment(tracker, name, source)
        summary = ImportSummary(path, experiment.experiment_id, experiment.display_name, created)
        for run in bundle.runs:
            imported = _import_run(tracker, bundle, run, experiment.experiment_id)
            summary.runs.append(imported)
            if progress is not None:
                progress(f"{imported.result} run {imported.run_id[:8]} ({imported.run_name})")
        return summary
