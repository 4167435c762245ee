"""MLflow's artifact proxy (``mlflow-artifacts:`` URIs) on Cairn's artifact streams.

Every run's artifact_uri is ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts``; the
MLflow client resolves it against the tracking URI to
``/api/2.0/mlflow-artifacts/artifacts/<experiment_id>/<run_id>/artifacts`` and then

* ``PUT .../<path>`` uploads a file (streamed into UploadArtifact in 1 MiB chunks; MLflow
  overwrites, so overwrite is set),
* ``GET .../<path>`` downloads one (DownloadArtifact streamed back, digest checked; HEAD
  reads only its first message, the artifact's metadata),
* ``GET /api/2.0/mlflow-artifacts/artifacts?path=<experiment_id>/<run_id>/artifacts/<dir>``
  lists a directory: its files and subdirectories (derived from Cairn's flat paths), with
  paths relative to the directory.

Transfers follow the gateway's shared stream policy (services/gateway/limits.py): no
overall deadline, but every chunk from the client and every message from the tracker must
arrive within the gateway timeout, so a slow transfer that keeps moving is never cut and a
stalled one ends (408 for a silent client, 504 for a silent tracker). A client that
disconnects mid-upload cancels the tracker call, nothing is stored, and the request is
logged as 499 (not as a server error).

Files under ``models/`` are Cairn MODEL artifacts (MLflow 3 logged models live there, see
logged_models.py); others are typed by their name.

Paths are checked as MLflow's validate_path_is_safe does (decoded until stable: no "..",
no absolute paths, no backslashes, no "#") before anything is sent to the tracker, which then
applies Cairn's own path rules; a refused path is INVALID_PARAMETER_VALUE and nothing is
written.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import posixpath
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from cairn.tracker.v1 import artifact_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.gateway import limits
from services.gateway.mlflow.context import (
    CLIENT_CLOSED_REQUEST,
    ID_PATTERN,
    Call,
    DefaultExperiment,
    being_cancelled,
)
from services.gateway.mlflow.protocol import (
    NOT_IMPLEMENTED,
    RESOURCE_DOES_NOT_EXIST,
    MlflowError,
    does_not_exist,
    from_idle_timeout,
    from_rpc_error,
    invalid_parameter,
    shown,
)

log = logging.getLogger(__name__)

ARTIFACTS_SEGMENT = "artifacts"
# MLflow 3 logged models keep their files under this directory of their run.
MODELS_DIRECTORY = "models"
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
    if name in _MODEL_NAMES or path.startswith(f"{MODELS_DIRECTORY}/"):
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

    async def upload(self, request: Request, call: Call) -> Response | dict[str, Any]:
        experiment_id, run_id, path = parse_location(request.path_params["location"], file=True)
        run = await self._run(call, experiment_id, run_id)
        try:
            await upload_stream(call, run, path, request)
        except ClientDisconnect:
            log.info("MLflow upload of %r to run %s: the client disconnected", path, run_id)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except MlflowError as error:
            raise _run_error(error, experiment_id, run_id) from None
        return {}

    async def download(self, request: Request, call: Call) -> Response:
        experiment_id, run_id, path = parse_location(request.path_params["location"], file=True)
        run = await self._run(call, experiment_id, run_id)
        # No deadline for the whole stream: each message must come within the timeout.
        stream = call.stub.DownloadArtifact(
            pb.DownloadArtifactRequest(run=run, path=path), metadata=call.metadata
        )
        messages = aiter(stream)
        try:
            first = await limits.within(anext(messages, None), call.timeout)
        except grpc.aio.AioRpcError as error:
            raise _run_error(from_rpc_error(error), experiment_id, run_id, path) from None
        except BaseException:
            stream.cancel()
            raise
        if first is None or first.WhichOneof("payload") != "artifact":
            stream.cancel()
            raise MlflowError("INTERNAL_ERROR", "the tracker sent no artifact metadata")
        artifact = first.artifact
        headers = {
            "Content-Length": str(artifact.size_bytes),
            "Content-Disposition": limits.content_disposition(posixpath.basename(path)),
            "X-Content-Type-Options": "nosniff",
        }
        if request.method == "HEAD":
            stream.cancel()
            return Response(media_type=_media_type(path), headers=headers)
        return StreamingResponse(
            _content(stream, messages, artifact, call.timeout),
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


async def upload_stream(call: Call, run: str, path: str, request: Request) -> None:
    """Streams the request body into UploadArtifact at `path` of `run` (MLflow overwrites),
    in the gateway's upload chunks, under the shared idle-timeout policy. A client that
    disconnects raises ClientDisconnect, a stalled one IdleTimeoutError; either way the
    call is cancelled and nothing is stored."""
    seconds = call.timeout
    watchdog = limits.IdleDeadline(seconds)
    body = limits.with_idle_timeout(request.stream(), seconds, side="client", deadline=watchdog)
    failures: list[BaseException] = []

    async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(
            metadata=pb.UploadArtifactMetadata(
                run=run, path=path, artifact_type=artifact_type(path), overwrite=True
            )
        )
        try:
            async for piece in limits.rechunk(body):
                yield pb.UploadArtifactRequest(chunk=piece)
        except Exception as error:
            # Raising cancels the call, so a cut-off body is never committed; the reason is
            # reported instead of the call's CANCELLED.
            failures.append(error)
            raise

    try:
        await watchdog.guard(call.stub.UploadArtifact(messages(), metadata=call.metadata))
    except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
        cancelled = not isinstance(error, grpc.aio.AioRpcError) or (
            error.code() == grpc.StatusCode.CANCELLED
        )
        if failures and cancelled and not being_cancelled():
            failure = failures[0]
            if isinstance(failure, limits.IdleTimeoutError):
                raise from_idle_timeout(failure) from None
            raise failure from None
        if isinstance(error, grpc.aio.AioRpcError):
            raise from_rpc_error(error) from None
        raise
    except limits.IdleTimeoutError as error:  # the tracker stopped taking the upload
        raise from_idle_timeout(error) from None


async def upload_bytes(call: Call, run: str, path: str, content: bytes) -> None:
    """Stores `content` at `path` of `run`, replacing what is there."""

    async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(
            metadata=pb.UploadArtifactMetadata(
                run=run, path=path, artifact_type=artifact_type(path), overwrite=True
            )
        )
        for start in range(0, len(content), limits.UPLOAD_CHUNK_BYTES):
            yield pb.UploadArtifactRequest(chunk=content[start : start + limits.UPLOAD_CHUNK_BYTES])

    try:
        await call.stub.UploadArtifact(messages(), timeout=call.timeout, metadata=call.metadata)
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


async def download_bytes(call: Call, run: str, path: str, limit: int) -> bytes:
    """The content of a small artifact (refused beyond `limit` bytes)."""
    stream = call.stub.DownloadArtifact(
        pb.DownloadArtifactRequest(run=run, path=path), timeout=call.timeout, metadata=call.metadata
    )
    parts: list[bytes] = []
    try:
        async for message in stream:
            if message.WhichOneof("payload") == "chunk":
                parts.append(message.chunk)
            elif message.artifact.size_bytes > limit:
                raise MlflowError(
                    "INTERNAL_ERROR", f"artifact {path!r} is larger than {limit} bytes"
                )
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    finally:
        stream.cancel()
    return b"".join(parts)


async def _content(
    stream: Any, messages: AsyncIterator[Any], artifact: artifact_pb2.Artifact, seconds: float
) -> AsyncIterator[bytes]:
    """The artifact's bytes, each tracker message within `seconds`; a failure or a digest
    mismatch mid-stream aborts the response (its Content-Length then tells the client it is
    incomplete: the last chunk is held back until the digest matched)."""
    complete = False

    async def chunks() -> AsyncIterator[bytes]:
        async for message in limits.with_idle_timeout(messages, seconds, side="backend"):
            yield message.chunk

    try:
        async for chunk in limits.verify_sha256(chunks(), artifact.sha256):
            yield chunk
        complete = True
    except (grpc.aio.AioRpcError, limits.IdleTimeoutError, limits.DigestMismatch) as error:
        log.warning("artifact download of %r failed mid-stream: %s", artifact.path, error)
        raise
    finally:
        if not complete:  # failed, or the HTTP client went away: stop the tracker's stream
            stream.cancel()


def _run_error(error: MlflowError, experiment_id: str, run_id: str, path: str = "") -> MlflowError:
    if error.error_code == RESOURCE_DOES_NOT_EXIST and error.reason == "ARTIFACT_NOT_FOUND":
        return does_not_exist(f"Artifact {shown(path)!r} of run {run_id!r} does not exist")
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
