"""Artifacts through the real TrackerService into the local artifact folder: streaming upload
and download, content addressing, conflicts, digests, path safety and listing, on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cairn.tracker.v1 import artifact_pb2, run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.common.settings import Settings

from cairn_testing import (
    MiB,
    ServerThread,
    TrackerStub,
    download,
    error_info,
    expect_error,
    files_under,
    new_experiment,
    new_run,
    sha256_hex,
    upload,
    upload_requests,
)

MODEL = artifact_pb2.ARTIFACT_TYPE_MODEL
PLOT = artifact_pb2.ARTIFACT_TYPE_PLOT
DATA = artifact_pb2.ARTIFACT_TYPE_DATA
REPORT = artifact_pb2.ARTIFACT_TYPE_REPORT
OTHER = artifact_pb2.ARTIFACT_TYPE_OTHER

TRAVERSALS = [
    "../x",
    "a/../../b",
    "/etc/passwd",
    "%2e%2e/x",
    "%2E%2E%2Fx",
    "%252e%252e/x",
    "a/%2F/b",
    "..\\x",
    "a\\..\\..\\b",
    "a\x00b",
    "x#frag",
    "x?y",
    "C:\\x",
    "c:x",
    "\uff0e\uff0e/x",  # fullwidth full stops
    "a\uff0fb",  # fullwidth solidus
    "a\u2215..",  # division slash
    "..",
    ".",
    "./x",
    "a//b",
    "a/",
    "",
    "\u202etxt.exe",
    "x" * 1025,
]


@pytest.fixture
def run(tracker: TrackerStub) -> run_pb2.Run:
    return new_run(tracker, new_experiment(tracker))


def artifact_root(settings: Settings) -> Path:
    return Path(settings.resolved_artifact_root())


def list_artifacts(tracker: TrackerStub, run: run_pb2.Run, **request: object) -> list[str]:
    response = tracker.ListArtifacts(
        pb.ListArtifactsRequest(parent=run.name, page_size=1000, **request)  # type: ignore[arg-type]
    )
    assert not response.next_page_token
    return [a.path for a in response.artifacts]


def tree(root: Path) -> dict[str, int]:
    """Every file below `root` except the SQLite database, whose size changes by itself."""
    return {k: v for k, v in files_under(root).items() if "cairn.db" not in k}


# ------------------------------------------------------------------ round trips


def test_multi_megabyte_round_trip(
    tracker: TrackerStub, run: run_pb2.Run, settings: Settings
) -> None:
    content = os.urandom(6 * MiB + 7)
    digest = sha256_hex(content)
    stored = upload(tracker, run.name, "models/model.pkl", content, artifact_type=MODEL)
    assert stored.run == run.name
    assert stored.path == "models/model.pkl"
    assert stored.artifact_type == MODEL
    assert stored.size_bytes == len(content)
    assert stored.sha256 == digest
    assert stored.create_time.ToMilliseconds() > 0

    artifact, downloaded = download(tracker, run.name, "models/model.pkl")
    assert artifact == stored
    assert downloaded == content
    # Also through the wildcard run name.
    _, again = download(tracker, f"experiments/-/runs/{run.run_id}", "models/model.pkl")
    assert sha256_hex(again) == digest

    # The bytes live under the run's prefix in the artifact root, exactly once.
    files = files_under(artifact_root(settings))
    prefix = f"experiments/{run.experiment_id}/runs/{run.run_id}/artifacts/"
    assert files == {prefix + f"sha256/{digest}": len(content)}
    assert run.artifact_uri.endswith(prefix.rstrip("/"))


def test_chunking_does_not_matter(tracker: TrackerStub, run: run_pb2.Run) -> None:
    content = os.urandom(3 * MiB + 1)
    one = upload(tracker, run.name, "a.bin", content, chunk_size=4 * MiB)
    tiny = upload(tracker, run.name, "b.bin", content, chunk_size=64 * 1024 + 3)
    assert one.sha256 == tiny.sha256 == sha256_hex(content)
    assert download(tracker, run.name, "b.bin")[1] == content


def test_empty_artifact(tracker: TrackerStub, run: run_pb2.Run) -> None:
    stored = upload(tracker, run.name, "empty.txt", b"")
    assert stored.size_bytes == 0
    assert stored.sha256 == sha256_hex(b"")
    artifact, content = download(tracker, run.name, "empty.txt")
    assert artifact.size_bytes == 0
    assert content == b""


def test_artifacts_are_listed_per_run_with_their_type(
    tracker: TrackerStub, run: run_pb2.Run
) -> None:
    uploads = {
        "model/weights.h5": (b"w" * 1000, MODEL),
        "plots/loss.png": (b"png", PLOT),
        "data/eval.csv": (b"a,b\n1,2\n", DATA),
        "report.html": (b"<html/>", REPORT),
        "notes.txt": (b"n", 0),  # unspecified: stored as OTHER
    }
    for path, (content, kind) in uploads.items():
        upload(tracker, run.name, path, content, artifact_type=kind)
    other_run = new_run(tracker, new_experiment(tracker))
    upload(tracker, other_run.name, "elsewhere.bin", b"x")

    response = tracker.ListArtifacts(pb.ListArtifactsRequest(parent=run.name))
    assert [a.path for a in response.artifacts] == sorted(uploads)
    for artifact in response.artifacts:
        content, kind = uploads[artifact.path]
        assert artifact.artifact_type == (kind or OTHER)
        assert artifact.size_bytes == len(content)
        assert artifact.sha256 == sha256_hex(content)
        assert artifact.run == run.name
    full = tracker.GetRun(pb.GetRunRequest(name=run.name))
    assert [a.path for a in full.artifacts] == sorted(uploads)
    assert list_artifacts(tracker, other_run) == ["elsewhere.bin"]


def test_same_content_again_returns_the_stored_artifact(
    tracker: TrackerStub, run: run_pb2.Run, settings: Settings
) -> None:
    first = upload(tracker, run.name, "m.bin", b"same bytes", artifact_type=MODEL)
    files = files_under(artifact_root(settings))
    again = upload(tracker, run.name, "m.bin", b"same bytes", artifact_type=MODEL)
    assert again == first
    assert files_under(artifact_root(settings)) == files
    # The same content at another path of the run is stored once, too.
    copy = upload(tracker, run.name, "copy/m.bin", b"same bytes")
    assert copy.sha256 == first.sha256
    assert files_under(artifact_root(settings)) == files
    assert list_artifacts(tracker, run) == ["copy/m.bin", "m.bin"]


def test_different_content_is_already_exists_unless_overwrite(
    tracker: TrackerStub, run: run_pb2.Run
) -> None:
    first = upload(tracker, run.name, "model.bin", b"version one")
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS, upload, tracker, run.name, "model.bin", b"version two"
    )
    assert "model.bin" in error.details()
    assert "overwrite" in error.details()
    info = error_info(error)
    assert info.reason == "ARTIFACT_EXISTS"
    assert info.metadata["path"] == "model.bin"
    assert info.metadata["sha256"] == first.sha256
    assert info.metadata["new_sha256"] == sha256_hex(b"version two")
    assert download(tracker, run.name, "model.bin")[1] == b"version one"

    replaced = upload(
        tracker, run.name, "model.bin", b"version two", overwrite=True, artifact_type=MODEL
    )
    assert replaced.sha256 == sha256_hex(b"version two")
    assert replaced.artifact_type == MODEL
    artifact, content = download(tracker, run.name, "model.bin")
    assert content == b"version two"
    assert artifact == replaced
    assert list_artifacts(tracker, run) == ["model.bin"]


def test_a_file_path_and_a_directory_path_may_coexist(
    tracker: TrackerStub, run: run_pb2.Run
) -> None:
    upload(tracker, run.name, "a", b"file a")
    upload(tracker, run.name, "a/b", b"file a/b")
    assert download(tracker, run.name, "a")[1] == b"file a"
    assert download(tracker, run.name, "a/b")[1] == b"file a/b"


# ------------------------------------------------------------------ digests and framing


def test_expected_sha256_mismatch_is_data_loss_and_stores_nothing(
    tracker: TrackerStub, run: run_pb2.Run, settings: Settings
) -> None:
    content = os.urandom(2 * MiB)
    wrong = sha256_hex(b"something else")
    error = expect_error(
        grpc.StatusCode.DATA_LOSS,
        upload,
        tracker,
        run.name,
        "model.bin",
        content,
        expected_sha256=wrong,
    )
    assert wrong in error.details()
    assert sha256_hex(content) in error.details()
    assert error_info(error).reason == "DIGEST_MISMATCH"
    assert list_artifacts(tracker, run) == []
    assert files_under(artifact_root(settings)) == {}
    expect_error(grpc.StatusCode.NOT_FOUND, download, tracker, run.name, "model.bin")

    # The right digest, in either case, is accepted.
    stored = upload(
        tracker, run.name, "model.bin", content, expected_sha256=sha256_hex(content).upper()
    )
    assert stored.sha256 == sha256_hex(content)


@pytest.mark.parametrize("digest", ["abc", "g" * 64, "a" * 63, "a" * 65])
def test_malformed_expected_sha256_is_invalid_argument(
    tracker: TrackerStub, run: run_pb2.Run, digest: str
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        upload,
        tracker,
        run.name,
        "x.bin",
        b"x",
        expected_sha256=digest,
    )
    assert error_info(error).metadata["field"] == "metadata.expected_sha256"


def test_stream_framing_is_checked(tracker: TrackerStub, run: run_pb2.Run) -> None:
    def chunk_first() -> Iterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(chunk=b"data")
        yield from upload_requests(run.name, "x.bin", b"data")

    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, tracker.UploadArtifact, chunk_first())
    assert "first" in error.details()
    assert error_info(error).metadata["field"] == "metadata"

    expect_error(grpc.StatusCode.INVALID_ARGUMENT, tracker.UploadArtifact, iter([]))

    def metadata_twice() -> Iterator[pb.UploadArtifactRequest]:
        yield from upload_requests(run.name, "x.bin", b"data")
        yield from upload_requests(run.name, "y.bin", b"more")

    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, tracker.UploadArtifact, metadata_twice())
    assert "only the first" in error.details()
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        upload,
        tracker,
        run.name,
        "x.bin",
        b"x",
        artifact_type=99,
    )
    assert list_artifacts(tracker, run) == []


def test_upload_and_download_need_an_existing_run(tracker: TrackerStub, run: run_pb2.Run) -> None:
    ghost = "experiments/-/runs/ghost"
    expect_error(grpc.StatusCode.NOT_FOUND, upload, tracker, ghost, "x.bin", b"x")
    expect_error(grpc.StatusCode.NOT_FOUND, download, tracker, ghost, "x.bin")
    expect_error(
        grpc.StatusCode.NOT_FOUND, tracker.ListArtifacts, pb.ListArtifactsRequest(parent=ghost)
    )
    wrong_experiment = f"experiments/{new_experiment(tracker).experiment_id}/runs/{run.run_id}"
    expect_error(grpc.StatusCode.NOT_FOUND, upload, tracker, wrong_experiment, "x.bin", b"x")
    assert list_artifacts(tracker, run) == []


def test_download_of_a_missing_artifact_is_not_found(
    tracker: TrackerStub, run: run_pb2.Run
) -> None:
    upload(tracker, run.name, "present.txt", b"here")
    error = expect_error(grpc.StatusCode.NOT_FOUND, download, tracker, run.name, "absent.txt")
    assert "absent.txt" in error.details()
    info = error_info(error)
    assert info.reason == "ARTIFACT_NOT_FOUND"
    assert info.metadata["path"] == "absent.txt"
    # Paths are exact: no prefix or case folding.
    for near in ("present", "present.txt/x", "Present.txt", "present.tx"):
        expect_error(grpc.StatusCode.NOT_FOUND, download, tracker, run.name, near)


# ------------------------------------------------------------------ path safety


def test_traversal_attempts_are_refused_and_write_nothing(
    tracker: TrackerStub, run: run_pb2.Run, settings: Settings, tmp_path: Path
) -> None:
    upload(tracker, run.name, "legit.txt", b"legit")
    before = tree(tmp_path)
    root_before = files_under(artifact_root(settings))
    for path in TRAVERSALS:
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, upload, tracker, run.name, path, b"evil"
        )
        info = error_info(error)
        assert info.reason == "INVALID_ARTIFACT_PATH", (path, error.details())
        assert info.metadata["rule"], path
        assert info.metadata["field"] == "path"
        assert "\x00" not in error.details()

        error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, download, tracker, run.name, path)
        assert error_info(error).reason == "INVALID_ARTIFACT_PATH", path
    # Nothing was written anywhere: not outside the artifact root, not inside it.
    assert tree(tmp_path) == before
    assert files_under(artifact_root(settings)) == root_before
    assert list_artifacts(tracker, run) == ["legit.txt"]
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "data" / "x").exists()


@pytest.mark.parametrize(
    "path",
    [
        ".hidden",
        "notes.",
        "plots/12:30.png",
        "100%.txt",
        "a%20b",
        "ünïcødé/日本.txt",
        "a..b",
        "...",
        "x" * 1024,
    ],
)
def test_unusual_but_safe_paths_round_trip(
    tracker: TrackerStub, run: run_pb2.Run, path: str
) -> None:
    stored = upload(tracker, run.name, path, path.encode())
    assert stored.path == path
    artifact, content = download(tracker, run.name, path)
    assert (artifact.path, content) == (path, path.encode())
    assert list_artifacts(tracker, run) == [path]


# ------------------------------------------------------------------ listing


def test_list_artifacts_pages_and_filters_by_prefix(tracker: TrackerStub, run: run_pb2.Run) -> None:
    paths = [
        "checkpoints/epoch-01.ckpt",
        "checkpoints/epoch-02.ckpt",
        "checkpoints_old/x.ckpt",
        "model/saved_model.pb",
        "plots/a.png",
        "plots/b.png",
        "plots/sub/c.png",
        "plots%/d.png",
    ]
    for path in reversed(paths):
        upload(tracker, run.name, path, path.encode(), artifact_type=PLOT)

    seen: list[str] = []
    token = ""
    sizes = []
    while True:
        response = tracker.ListArtifacts(
            pb.ListArtifactsRequest(parent=run.name, page_size=3, page_token=token)
        )
        sizes.append(len(response.artifacts))
        seen.extend(a.path for a in response.artifacts)
        token = response.next_page_token
        if not token:
            break
    assert sizes == [3, 3, 2]
    assert seen == sorted(paths)

    assert list_artifacts(tracker, run, path_prefix="plots/") == [
        "plots/a.png",
        "plots/b.png",
        "plots/sub/c.png",
    ]
    assert list_artifacts(tracker, run, path_prefix="checkpoints") == [
        "checkpoints/epoch-01.ckpt",
        "checkpoints/epoch-02.ckpt",
        "checkpoints_old/x.ckpt",
    ]
    # Prefixes are literal: no LIKE wildcards.
    assert list_artifacts(tracker, run, path_prefix="plots%") == ["plots%/d.png"]
    assert list_artifacts(tracker, run, path_prefix="checkpoints_") == ["checkpoints_old/x.ckpt"]
    assert list_artifacts(tracker, run, path_prefix="Plots/") == []
    assert list_artifacts(tracker, run, path_prefix="zzz") == []

    first = tracker.ListArtifacts(
        pb.ListArtifactsRequest(parent=run.name, path_prefix="plots/", page_size=1)
    )
    rest = tracker.ListArtifacts(
        pb.ListArtifactsRequest(
            parent=run.name, path_prefix="plots/", page_size=10, page_token=first.next_page_token
        )
    )
    assert [a.path for a in [*first.artifacts, *rest.artifacts]] == [
        "plots/a.png",
        "plots/b.png",
        "plots/sub/c.png",
    ]
    # The token is bound to its prefix and run.
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.ListArtifacts,
        pb.ListArtifactsRequest(parent=run.name, page_token=first.next_page_token),
    )
    assert error_info(error).reason == "PAGE_TOKEN_MISMATCH"
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.ListArtifacts,
        pb.ListArtifactsRequest(parent=run.name, page_token="forged"),
    )


@pytest.mark.parametrize("prefix", ["a\x00b", "x" * 1025])
def test_list_artifacts_rejects_bad_prefixes(
    tracker: TrackerStub, run: run_pb2.Run, prefix: str
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.ListArtifacts,
        pb.ListArtifactsRequest(parent=run.name, path_prefix=prefix),
    )
    assert error_info(error).metadata["field"] == "path_prefix"


def test_concurrent_uploads_of_different_content_to_one_path(
    tracker_server: ServerThread, settings: Settings
) -> None:
    """Only one of several racing uploads of different content to one path may win; the
    others are ALREADY_EXISTS, exactly as if they had come one after the other."""
    writers = 6
    with grpc.insecure_channel(tracker_server.address()) as channel:
        run = new_run(TrackerStub(channel), new_experiment(TrackerStub(channel)))
    barrier = threading.Barrier(writers)

    def attempt(index: int) -> bytes | None:
        content = bytes([index]) * (256 * 1024 + index)
        with grpc.insecure_channel(tracker_server.address()) as channel:
            stub = TrackerStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            barrier.wait(timeout=30)
            try:
                upload(stub, run.name, "model.bin", content)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
                return None
            return content

    with ThreadPoolExecutor(max_workers=writers) as pool:
        outcomes = list(pool.map(attempt, range(writers)))
    winners = [content for content in outcomes if content is not None]
    assert len(winners) == 1
    with grpc.insecure_channel(tracker_server.address()) as channel:
        artifact, content = download(TrackerStub(channel), run.name, "model.bin")
    assert content == winners[0]
    assert artifact.sha256 == sha256_hex(winners[0])


def test_cancelled_downloads_never_take_the_server_down(tracker: TrackerStub) -> None:
    # Regression: finishing a cancelled stream asked grpcio for the call's peer, which could
    # crash the whole server process, and closed a chunk reader a worker thread was using.
    run = new_run(tracker, new_experiment(tracker))
    content = os.urandom(5 * MiB)
    upload(tracker, run.name, "big.bin", content)
    for _ in range(25):
        call = tracker.DownloadArtifact(pb.DownloadArtifactRequest(run=run.name, path="big.bin"))
        next(call)  # the artifact header: the server is now streaming chunks
        call.cancel()
    assert download(tracker, run.name, "big.bin")[1] == content
