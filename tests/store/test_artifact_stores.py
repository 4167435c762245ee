"""One contract, three stores: a local directory, GCS (emulator) and S3 (moto server).

The GCS and S3 stores talk to real emulators through the official client libraries.
"""

from __future__ import annotations

import io
import os
import re
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from services.common.errors import (
    Aborted,
    ConfigurationError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.tracker.artifact_store import (
    INVALID_ARTIFACT_PATH,
    ArtifactStore,
    GcsArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    artifact_key,
    open_artifact_store,
    run_prefix,
)

from artifact_emulators import Emulator

MiB = 1 << 20


@pytest.fixture(params=["local", "gcs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    # Each test gets its own root (directory or object prefix) in the shared emulators.
    prefix = f"t/{uuid.uuid4().hex}"
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    emulator: Emulator = request.getfixturevalue(f"{request.param}_emulator")
    if request.param == "gcs":
        return GcsArtifactStore(emulator.bucket, prefix)
    return S3ArtifactStore(emulator.bucket, prefix)


def new_run() -> tuple[str, str]:
    return "exp1", uuid.uuid4().hex


def put_bytes(store: ArtifactStore, key: str, data: bytes) -> None:
    store.put(key, io.BytesIO(data), len(data))


def read(store: ArtifactStore, key: str, chunk_size: int = MiB) -> list[bytes]:
    return list(store.open_chunks(key, chunk_size))


def every_operation(store: ArtifactStore, key: str) -> list[Callable[[], object]]:
    return [
        partial(put_bytes, store, key, b"x"),
        partial(store.open_chunks, key),
        partial(store.exists, key),
        partial(store.delete, key),
        partial(store.delete_prefix, key),
        partial(store.total_bytes, key),
        partial(store.uri_for, key),
    ]


def test_round_trip_streams_large_payload_in_chunks(store: ArtifactStore, tmp_path: Path) -> None:
    # Above 8 MiB: GCS switches to a resumable upload and S3 to a multipart one.
    payload = os.urandom(9 * MiB + 123)
    spooled = tmp_path / "upload.bin"
    spooled.write_bytes(payload)
    key = artifact_key(*new_run(), "models/model.pkl")
    with spooled.open("rb") as source:
        store.put(key, source, len(payload))

    chunks = read(store, key)

    assert b"".join(chunks) == payload
    assert len(chunks) == 10
    assert all(len(chunk) == MiB for chunk in chunks[:-1])
    assert store.total_bytes(key.rsplit("/", 1)[0]) == len(payload)


def test_small_chunk_sizes_and_empty_objects(store: ArtifactStore) -> None:
    run = new_run()
    key = artifact_key(*run, "small.txt")
    put_bytes(store, key, b"0123456789")
    assert read(store, key, chunk_size=4) == [b"0123", b"4567", b"89"]

    empty = artifact_key(*run, "empty")
    put_bytes(store, empty, b"")
    assert store.exists(empty)
    assert read(store, empty) == []


def test_exists_and_overwrite(store: ArtifactStore) -> None:
    run = new_run()
    key = artifact_key(*run, "plots/roc curve.png")
    assert not store.exists(key)

    put_bytes(store, key, b"first version, longer")
    put_bytes(store, key, b"second")

    assert store.exists(key)
    assert b"".join(read(store, key)) == b"second"
    assert store.total_bytes(run_prefix(*run)) == len(b"second")


def test_unusual_but_valid_names_round_trip(store: ArtifactStore) -> None:
    run = new_run()
    names = ["résultats/é.csv", "a+b=c@d,e~f.txt", ".hidden", "with space/and-dash_x.tar.gz"]
    for i, name in enumerate(names):
        put_bytes(store, artifact_key(*run, name), bytes([i]) * (i + 1))
    for i, name in enumerate(names):
        assert b"".join(read(store, artifact_key(*run, name))) == bytes([i]) * (i + 1)
    assert store.total_bytes(run_prefix(*run)) == 1 + 2 + 3 + 4


def test_delete_is_idempotent(store: ArtifactStore) -> None:
    key = artifact_key(*new_run(), "deep/er/file.bin")
    put_bytes(store, key, b"x" * 1000)

    assert store.delete(key) == 1000
    assert not store.exists(key)
    assert store.delete(key) == 0
    assert store.delete(artifact_key(*new_run(), "never-existed")) == 0


def test_delete_prefix_frees_exactly_what_was_put(store: ArtifactStore) -> None:
    experiment, run = new_run()
    doomed = {
        "model.pkl": os.urandom(3 * MiB),
        "plots/loss.png": b"png" * 100,
        "plots/nested/deeper/x.json": b"{}",
        "empty": b"",
    }
    for path, data in doomed.items():
        put_bytes(store, artifact_key(experiment, run, path), data)
    # Siblings: another run, and a run whose id merely starts with this one's.
    survivors = [artifact_key(experiment, uuid.uuid4().hex, "model.pkl")]
    survivors.append(artifact_key(experiment, run + "0", "model.pkl"))
    for key in survivors:
        put_bytes(store, key, b"keep me")
    prefix = run_prefix(experiment, run)

    freed = store.delete_prefix(prefix)

    assert freed == sum(len(data) for data in doomed.values())
    assert store.total_bytes(prefix) == 0
    assert not any(store.exists(artifact_key(experiment, run, path)) for path in doomed)
    assert all(b"".join(read(store, key)) == b"keep me" for key in survivors)
    assert store.delete_prefix(prefix) == 0


def test_delete_prefix_with_more_objects_than_one_batch(store: ArtifactStore) -> None:
    # GCS batches deletes by 100, so 205 objects take three batches.
    experiment, run = new_run()
    for i in range(205):
        put_bytes(store, artifact_key(experiment, run, f"steps/{i:04d}.json"), b"%d" % i)
    prefix = run_prefix(experiment, run)
    stored = store.total_bytes(prefix)

    assert store.delete_prefix(prefix) == stored == sum(len(b"%d" % i) for i in range(205))
    assert store.total_bytes(prefix) == 0


def test_missing_object_is_not_found_before_iteration(store: ArtifactStore) -> None:
    key = artifact_key(*new_run(), "missing.bin")
    with pytest.raises(NotFound) as caught:
        store.open_chunks(key)
    assert caught.value.reason == "ARTIFACT_NOT_FOUND"
    assert caught.value.metadata["key"] == key


class FailingSource(io.BytesIO):
    """An upload source whose disk fails halfway through."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._limit = len(data) // 2

    def read(self, size: int | None = -1) -> bytes:
        end = self._limit + 1 if size is None or size < 0 else self.tell() + size
        if end > self._limit:
            raise OSError("simulated read failure")
        return super().read(size)


def test_failed_put_leaves_previous_object(store: ArtifactStore) -> None:
    run = new_run()
    key = artifact_key(*run, "model.pkl")
    put_bytes(store, key, b"good")
    fresh = artifact_key(*run, "fresh.pkl")
    broken = os.urandom(2 * MiB)

    for target in (key, fresh):
        with pytest.raises(Exception, match="simulated read failure"):
            store.put(target, FailingSource(broken), len(broken))

    assert b"".join(read(store, key)) == b"good"
    assert not store.exists(fresh)
    assert store.total_bytes(run_prefix(*run)) == len(b"good")


def test_reader_never_sees_a_mix_of_two_versions(store: ArtifactStore) -> None:
    key = artifact_key(*new_run(), "model.pkl")
    old = os.urandom(3 * MiB)
    put_bytes(store, key, old)
    chunks = store.open_chunks(key, MiB)

    put_bytes(store, key, b"replacement")

    try:
        content = b"".join(chunks)
    except Aborted:
        # Object stores read in ranges may notice the change; the others serve the version
        # they opened.
        assert isinstance(store, GcsArtifactStore)
    else:
        assert content == old
    assert b"".join(read(store, key)) == b"replacement"


def test_put_refuses_a_size_that_does_not_match_the_source(store: ArtifactStore) -> None:
    key = artifact_key(*new_run(), "x")
    with pytest.raises(ValueError, match="holds 3 bytes"):
        store.put(key, io.BytesIO(b"abc"), 4)
    assert not store.exists(key)


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "a//b", "a\\b", "%2e%2e/x"])
def test_keys_are_validated_by_every_store(store: ArtifactStore, key: str) -> None:
    for operation in every_operation(store, key):
        with pytest.raises(InvalidArgument) as caught:
            operation()
        assert caught.value.reason == INVALID_ARTIFACT_PATH


def test_keys_longer_than_the_backend_allows_are_invalid(store: ArtifactStore) -> None:
    # 1,024 characters is a valid path, but not a valid object name once prefixed, nor a
    # valid file name as a single segment.
    key = artifact_key(*new_run(), "é" * 1000)
    with pytest.raises(InvalidArgument) as caught:
        put_bytes(store, key, b"x")
    assert caught.value.metadata["rule"] == "KEY_TOO_LONG"


def test_concurrent_use_from_a_thread_pool(store: ArtifactStore) -> None:
    run = new_run()
    payloads = {artifact_key(*run, f"part-{i}.bin"): os.urandom(64 * 1024 + i) for i in range(24)}

    def round_trip(key: str) -> bool:
        put_bytes(store, key, payloads[key])
        return b"".join(read(store, key, chunk_size=10_000)) == payloads[key]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, payloads))
    assert store.total_bytes(run_prefix(*run)) == sum(map(len, payloads.values()))
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(store.delete, payloads)) == sum(map(len, payloads.values()))


def test_uri_for(store: ArtifactStore) -> None:
    key = "experiments/e/runs/r/artifacts/plots/roc.png"
    uri = store.uri_for(key)
    if isinstance(store, LocalArtifactStore):
        assert store.root_uri.startswith("file:///")
        assert uri == f"{store.root_uri}/{key}"
    else:
        scheme = "gs" if isinstance(store, GcsArtifactStore) else "s3"
        assert store.root_uri.startswith(f"{scheme}://cairn-test-artifacts/t/")
        assert uri == f"{store.root_uri}/{key}"
    # A run's URI (what every Run message carries) is the uri_for of its prefix.
    experiment_id, run_id = new_run()
    prefix = run_prefix(experiment_id, run_id)
    assert store.run_uri(experiment_id, run_id) == store.uri_for(prefix)
    with pytest.raises(InvalidArgument):
        store.run_uri("../e", run_id)


# Local store specifics.


def test_local_put_is_an_atomic_rename_without_leftovers(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    key = artifact_key(*new_run(), "a/b/model.pkl")
    put_bytes(store, key, b"content")
    broken = os.urandom(MiB)
    with pytest.raises(OSError, match="simulated"):
        store.put(key, FailingSource(broken), len(broken))

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [tmp_path / key]
    assert files[0].read_bytes() == b"content"


def test_local_delete_prunes_empty_directories_up_to_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalArtifactStore(root)
    experiment, run = new_run()
    put_bytes(store, artifact_key(experiment, run, "a/b/c.txt"), b"c")
    other = artifact_key(experiment, "other", "x.txt")
    put_bytes(store, other, b"x")

    store.delete(artifact_key(experiment, run, "a/b/c.txt"))
    assert not (root / "experiments" / experiment / "runs" / run).exists()
    assert (root / other).exists()

    put_bytes(store, artifact_key(experiment, run, "a/b/c.txt"), b"c")
    store.delete_prefix(run_prefix(experiment, run))
    assert not (root / "experiments" / experiment / "runs" / run).exists()
    store.delete(other)
    assert root.is_dir()
    assert list(root.iterdir()) == []


def test_local_file_and_directory_of_the_same_name_conflict(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    run = new_run()
    put_bytes(store, artifact_key(*run, "model"), b"file")
    with pytest.raises(FailedPrecondition):
        put_bytes(store, artifact_key(*run, "model/weights.bin"), b"nested")

    put_bytes(store, artifact_key(*run, "dir/x"), b"x")
    with pytest.raises(FailedPrecondition):
        put_bytes(store, artifact_key(*run, "dir"), b"file")
    assert not store.exists(artifact_key(*run, "dir"))
    assert store.delete(artifact_key(*run, "dir")) == 0


def test_local_store_refuses_symlink_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    store = LocalArtifactStore(root)
    experiment, run = new_run()
    prefix = root / run_prefix(experiment, run)
    prefix.mkdir(parents=True)
    (prefix / "link").symlink_to(outside, target_is_directory=True)
    (prefix / "file-link").symlink_to(outside / "secret.txt")

    for key in (
        artifact_key(experiment, run, "link/secret.txt"),
        artifact_key(experiment, run, "link/new.txt"),
        artifact_key(experiment, run, "file-link"),
    ):
        for operation in every_operation(store, key):
            with pytest.raises(InvalidArgument) as caught:
                operation()
            assert caught.value.metadata["rule"] == "OUTSIDE_ROOT"
    with pytest.raises(InvalidArgument):
        store.delete_prefix(artifact_key(experiment, run, "link"))
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_local_root_that_is_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="not a usable directory"):
        LocalArtifactStore(tmp_path / "file")


# open_artifact_store.


def test_open_file_uri(tmp_path: Path) -> None:
    store = open_artifact_store((tmp_path / "a b").as_uri())
    assert isinstance(store, LocalArtifactStore)
    assert store.root_uri == (tmp_path / "a b").resolve().as_uri()
    assert (tmp_path / "a b").is_dir()


def test_open_plain_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_artifact_store(str(tmp_path / "abs"))
    assert absolute.root_uri == (tmp_path / "abs").resolve().as_uri()

    monkeypatch.chdir(tmp_path)
    relative = open_artifact_store("rel/store")
    assert isinstance(relative, LocalArtifactStore)
    assert relative.root_uri == (tmp_path / "rel" / "store").resolve().as_uri()


def test_open_gs_uri(gcs_emulator: Emulator) -> None:
    store = open_artifact_store("gs://my-bucket/some/prefix/")
    assert isinstance(store, GcsArtifactStore)
    assert store.root_uri == "gs://my-bucket/some/prefix"
    assert store.uri_for("k/v.txt") == "gs://my-bucket/some/prefix/k/v.txt"
    assert open_artifact_store("gs://my-bucket").uri_for("k") == "gs://my-bucket/k"


def test_open_s3_uri(s3_emulator: Emulator) -> None:
    store = open_artifact_store("s3://my-bucket")
    assert isinstance(store, S3ArtifactStore)
    assert store.root_uri == "s3://my-bucket"
    assert store.uri_for("k/v.txt") == "s3://my-bucket/k/v.txt"
    assert open_artifact_store("S3://my-bucket/p").uri_for("k") == "s3://my-bucket/p/k"


@pytest.mark.parametrize(
    ("uri", "module", "extra"),
    [
        ("gs://bucket/x", "google.cloud.storage", "cairn[gcp]"),
        ("s3://bucket", "boto3", "cairn[s3]"),
    ],
)
def test_missing_client_library_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, uri: str, module: str, extra: str
) -> None:
    # What an uninstalled package looks like, even if another test imported it already.
    monkeypatch.setitem(sys.modules, module, None)
    parent, _, name = module.rpartition(".")
    if parent in sys.modules:
        monkeypatch.delattr(sys.modules[parent], name, raising=False)
    with pytest.raises(ConfigurationError, match=re.escape(f"pip install '{extra}'")):
        open_artifact_store(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "ftp://host/dir",
        "http://example.com/artifacts",
        "gs://",
        "gs:///prefix",
        "s3://",
        "s3:///prefix",
        "gs://Bad_Bucket!",
        "s3://user@bucket/x",
        "gs://bucket/../escape",
        "s3://bucket/a//b",
        "gs://bucket/p?x=1",
        "file://remote-host/dir",
        "file:relative/dir",
    ],
)
def test_bad_uris_are_configuration_errors(uri: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_artifact_store(uri)
    assert repr(uri) in str(caught.value) or not uri
