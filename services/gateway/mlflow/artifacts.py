"""MLflow's artifact proxy (``mlflow-artifacts:`` URIs) on Cairn's artifact streams.

Every run's artifact_uri is ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts``; the
MLflow client resolves it against the tracking URI to
``/api/2.0/mlflow-artifacts/artifacts/<experiment_id>/<run_id>/artifacts`` and then

* ``PUT .../<path>`` uploads a file (streamed into UploadArtifact in 1 MiB chunks; MLflow
  overwrites, so overwrite is set),
* ``GET .../<path>`` downloads one (DownloadArtifact streamed back, digest checked),
* ``GET /api/2.0/mlflow-artifacts/artifacts?path=<experiment_id>/<run_id>/artifacts/<dir>``
  lists a directory: its files and subdirectories (derived from Cairn's flat paths), with
  paths relative to the directory.

Paths are checked as MLflow's validate_path_is_safe does (decoded until stable: no "..",
no absolute paths, no backslashes, no "#") before anything is sent to the tracker, which then
applies Cairn's own path rules; a refused path is INVALID_PARAMETER_VALUE and nothing is
written.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import posixpath
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cairn.tracker.v1 import artifact_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.gateway.mlflow.context import ID_PATTERN, Call, DefaultExperiment
from services.gateway.mlflow.protocol import (
    NOT_IMPLEMENTED,
    RESOURCE_DOES_NOT_EXIST,
    MlflowError,
    does_not_exist,
    from_rpc_error,
    invalid_parameter,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Artifact streams get the call deadline plus the time to move their bytes at this rate, so
# a large artifact is never cut off and a stalled transfer still ends.
MIN_BYTES_PER_SECOND = 1 << 20
# Uploads without a Content-Length (chunked) may take this long beyond the call deadline.
UNSIZED_UPLOAD_SECONDS = 3600.0
ARTIFACTS_SEGMENT = "artifacts"
# mlflow.exceptions._UnsupportedMultipartUploadException.MESSAGE: the client falls back to a
# plain upload when a multipart upload is refused with it.
MULTIPART_UNSUPPORTED = "Multipart upload is not supported for the current artifact repository"

# Artifact types Cairn's UIs group by, guessed from the file name (everything else: OTHER).
_TYPES_BY_SUFFIX: dict[str, artifact_pb2.ArtifactType] = {
    **dict.fromkeys(
        (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"), artifact_pb2.ARTIFACT_TYPE_PLOT
    ),
    **dict.fromkeys(
        (".csv", ".tsv", ".parquet", ".jsonl", ".npy", ".npz", ".arrow"),
        artifact_pb2.ARTIFACT_TYPE_DATA,
    ),
    **dict.fromkeys((".html", ".htm", ".md", ".pdf"), artifact_pb2.ARTIFACT_TYPE_REPORT),
    ".ckpt": artifact_pb2.ARTIFACT_TYPE_CHECKPOINT,
}
_MODEL_NAMES = frozenset({"MLmodel", "model.pkl", "model.joblib", "saved_model.pb"})
_SAFE_MEDIA = frozenset({"image/png", "image/jpeg", "image/gif", "application/json", "text/csv"})


def artifact_type(path: str) -> artifact_pb2.ArtifactType:
    name = posixpath.basename(path)
    if name in _MODEL_NAMES:
        return artifact_pb2.ARTIFACT_TYPE_MODEL
    suffix = posixpath.splitext(name)[1].lower()
    return _TYPES_BY_SUFFIX.get(suffix, artifact_pb2.ARTIFACT_TYPE_OTHER)


def check_path(path: str, *, allow_empty: bool) -> str:
    """`path` if it is a safe relative artifact path (MLflow's validate_path_is_safe, plus
    no empty or "." segments); INVALID_PARAMETER_VALUE otherwise."""
    if not path:
        if allow_empty:
            return path
        raise invalid_parameter("Invalid path: an artifact path is required")
    decoded = path
    for _ in range(10):
        once = urllib.parse.unquote(decoded)
        if once == decoded:
            break
        decoded = once
    for candidate in (path, decoded):
        segments = candidate.split("/")
        if (
            "#" in candidate
            or "\\" in candidate
            or candidate.startswith("/")
            or (len(candidate) > 1 and candidate[1] == ":")
            or any(segment in ("", ".", "..") for segment in segments)
            or not candidate.isprintable()
        ):
            raise invalid_parameter(f"Invalid path {path[:200]!r}")
    return path


def parse_location(location: str, *, file: bool) -> tuple[str, str, str]:
    """(experiment_id, run_id, path) of "<experiment_id>/<run_id>/artifacts[/<path>]"."""
    parts = location.split("/", 3)
    if (
        len(parts) < 3
        or parts[2] != ARTIFACTS_SEGMENT
        or not ID_PATTERN.fullmatch(parts[0])
        or not ID_PATTERN.fullmatch(parts[1])
    ):
        raise invalid_parameter(
            f"Invalid path {location[:200]!r}: Cairn serves artifacts at "
            "<experiment_id>/<run_id>/artifacts/<path>"
        )
    path = parts[3] if len(parts) == 4 else ""
    if not file:
        path = path.rstrip("/")
    return parts[0], parts[1], check_path(path, allow_empty=not file)


async def list_directory(call: Call, run: str, directory: str) -> list[dict[str, Any]]:
    """The files and subdirectories directly in `directory` of a run, paths relative to it."""
    prefix = f"{directory}/" if directory else ""
    entries: dict[tuple[str, bool], dict[str, Any]] = {}
    token = ""
    while True:
        try:
            response = await call.unary(
                "ListArtifacts",
                pb.ListArtifactsRequest(
                    parent=run, path_prefix=prefix, page_size=1000, page_token=token
                ),
            )
        except MlflowError as error:
            if error.error_code == RESOURCE_DOES_NOT_EXIST:
                raise does_not_exist(f"Run {run.rsplit('/', 1)[-1]!r} not found") from None
            raise
        for artifact in response.artifacts:
            head, separator, _ = artifact.path[len(prefix) :].partition("/")
            if separator:
                entries.setdefault((head, True), {"path": head, "is_dir": True})
            else:
                entries[(head, False)] = {
                    "path": head,
                    "is_dir": False,
                    "file_size": int(artifact.size_bytes),
                }
        token = response.next_page_token
        if not token:
            return sorted(entries.values(), key=lambda entry: (entry["path"], entry["is_dir"]))


class ArtifactsApi:
    def __init__(self, default: DefaultExperiment) -> None:
        self.default = default

    async def _run(self, call: Call, experiment_id: str, run_id: str) -> str:
        cairn_id = await self.default.cairn_id(call, experiment_id)
        return f"experiments/{cairn_id}/runs/{run_id}"

    async def upload(self, request: Request, call: Call) -> dict[str, Any]:
        experiment_id, run_id, path = parse_location(request.path_params["location"], file=True)
        run = await self._run(call, experiment_id, run_id)
        declared = request.headers.get("content-length", "")
        deadline = call.timeout + (
            int(declared) / MIN_BYTES_PER_SECOND if declared.isdigit() else UNSIZED_UPLOAD_SECONDS
        )

        async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
            yield pb.UploadArtifactRequest(
                metadata=pb.UploadArtifactMetadata(
                    run=run, path=path, artifact_type=artifact_type(path), overwrite=True
                )
            )
            pending = bytearray()
            async for chunk in request.stream():
                pending += chunk
                while len(pending) >= CHUNK_BYTES:
                    yield pb.UploadArtifactRequest(chunk=bytes(pending[:CHUNK_BYTES]))
                    del pending[:CHUNK_BYTES]
            if pending:
                yield pb.UploadArtifactRequest(chunk=bytes(pending))

        try:
            await call.stub.UploadArtifact(messages(), timeout=deadline, metadata=call.metadata)
        except grpc.aio.AioRpcError as error:
            raise _run_error(from_rpc_error(error), experiment_id, run_id) from None
        return {}

    async def download(self, request: Request, call: Call) -> Response:
        experiment_id, run_id, path = parse_location(request.path_params["location"], file=True)
        run = await self._run(call, experiment_id, run_id)
        try:
            listed = await call.unary(
                "ListArtifacts", pb.ListArtifactsRequest(parent=run, path_prefix=path, page_size=1)
            )
        except MlflowError as error:
            raise _run_error(error, experiment_id, run_id) from None
        if not listed.artifacts or listed.artifacts[0].path != path:
            raise does_not_exist(f"Artifact {path!r} of run {run_id!r} does not exist")
        size = int(listed.artifacts[0].size_bytes)
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": _attachment(posixpath.basename(path)),
            "X-Content-Type-Options": "nosniff",
        }
        if request.method == "HEAD":
            return Response(media_type=_media_type(path), headers=headers)
        stream = call.stub.DownloadArtifact(
            pb.DownloadArtifactRequest(run=run, path=path),
            timeout=call.timeout + size / MIN_BYTES_PER_SECOND,
            metadata=call.metadata,
        )
        messages = aiter(stream)
        try:
            first = await anext(messages, None)
        except grpc.aio.AioRpcError as error:
            raise _run_error(from_rpc_error(error), experiment_id, run_id) from None
        if first is None or first.WhichOneof("payload") != "artifact":
            stream.cancel()
            raise MlflowError("INTERNAL_ERROR", "the tracker sent no artifact metadata")
        # The artifact may have been overwritten since it was listed: its own size counts.
        headers["Content-Length"] = str(first.artifact.size_bytes)
        return StreamingResponse(
            _content(stream, messages, first.artifact),
            media_type=_media_type(path),
            headers=headers,
        )

    async def list(self, request: Request, call: Call) -> dict[str, Any]:
        location = request.query_params.get("path", "")
        if not location:
            raise invalid_parameter(
                "Listing the artifact root is not supported: list "
                "<experiment_id>/<run_id>/artifacts[/<directory>]"
            )
        experiment_id, run_id, directory = parse_location(location, file=False)
        run = await self._run(call, experiment_id, run_id)
        try:
            files = await list_directory(call, run, directory)
        except MlflowError as error:
            raise _run_error(error, experiment_id, run_id) from None
        return {"files": files}

    async def delete(self, request: Request, call: Call) -> dict[str, Any]:
        raise MlflowError(
            NOT_IMPLEMENTED,
            "Deleting artifacts is not supported: Cairn frees a run's artifacts when the "
            "deleted run is purged",
        )

    async def multipart(self, request: Request, call: Call) -> dict[str, Any]:
        raise MlflowError(NOT_IMPLEMENTED, MULTIPART_UNSUPPORTED)

    async def presigned(self, request: Request, call: Call) -> dict[str, Any]:
        raise MlflowError(
            NOT_IMPLEMENTED,
            "Presigned download is not supported for the current artifact repository",
        )


async def _content(
    stream: Any, messages: AsyncIterator[Any], artifact: artifact_pb2.Artifact
) -> AsyncIterator[bytes]:
    """The artifact's bytes; a failure or a digest mismatch mid-stream aborts the response
    (its Content-Length then tells the client it is incomplete)."""
    digest = hashlib.sha256()
    complete = False
    try:
        async for message in messages:
            digest.update(message.chunk)
            yield message.chunk
        complete = True
        if artifact.sha256 and digest.hexdigest() != artifact.sha256:
            raise RuntimeError(f"artifact {artifact.path!r} arrived corrupted (sha256 mismatch)")
    except grpc.aio.AioRpcError as error:
        log.warning("artifact download of %r failed mid-stream: %s", artifact.path, error.code())
        raise
    finally:
        if not complete:  # the HTTP client went away: stop the tracker's stream too
            stream.cancel()


def _run_error(error: MlflowError, experiment_id: str, run_id: str) -> MlflowError:
    if error.error_code == RESOURCE_DOES_NOT_EXIST and error.reason in (
        "RUN_NOT_FOUND",
        "EXPERIMENT_NOT_FOUND",
        "NOT_FOUND",
    ):
        return does_not_exist(f"Run {run_id!r} of experiment {experiment_id!r} not found")
    return error


def _media_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(posixpath.basename(path))
    if guessed in _SAFE_MEDIA:
        return guessed
    if guessed is not None and guessed.startswith("text/"):
        return "text/plain"
    return "application/octet-stream"


def _attachment(name: str) -> str:
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    quoted = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"
