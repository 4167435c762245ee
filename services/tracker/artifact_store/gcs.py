"""Artifacts as objects in a Google Cloud Storage bucket.

Emulators are reached the way the official client supports: set STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from services.common.errors import Aborted, ConfigurationError
from services.common.gcs import storage_client
from services.tracker.artifact_store import DEFAULT_CHUNK_SIZE, ArtifactStore
from services.tracker.artifact_store.paths import validate_key

# GCS object names are at most 1,024 bytes of UTF-8.
_MAX_NAME_BYTES = 1024
# GCS accepts at most 100 calls in one batch request.
_BATCH_SIZE = 100
# Each ranged GET is a round trip, so small chunks are served from larger fetches.
_FETCH_SIZE = 8 << 20


class GcsArtifactStore(ArtifactStore):
    """Keys map to object names "{prefix}/{key}" in `bucket`."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        try:
            from google.api_core import exceptions as google_errors
        except ImportError as exc:
            raise ConfigurationError(
                f"gs://{bucket} artifact stores need google-cloud-storage: pip install 'cairn[gcp]'"
            ) from exc
        self._errors = google_errors
        self._client: Any = storage_client(f"gs://{bucket} artifact store")
        self._bucket: Any = self._client.bucket(bucket)
        self._prefix = prefix
        self._max_key_bytes = _MAX_NAME_BYTES - (len(prefix.encode()) + 1 if prefix else 0)
        self.root_uri = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"

    def _name(self, key: str) -> str:
        validate_key(key, max_bytes=self._max_key_bytes)
        return f"{self._prefix}/{key}" if self._prefix else key

    def put(self, key: str, source: BinaryIO, size: int) -> None:
        name = self._name(key)
        self._check_source(source, size)
        # One object write is atomic in GCS, resumable uploads (used above 8 MiB) included:
        # the object only appears once the final chunk is committed.
        self._bucket.blob(name).upload_from_file(source, size=size, rewind=True)

    def open_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        self._check_chunk_size(chunk_size)
        name = self._name(key)
        blob = self._bucket.get_blob(name)
        if blob is None:
            raise self._not_found(key)
        return self._chunks(key, blob, chunk_size)

    def _chunks(self, key: str, blob: Any, chunk_size: int) -> Iterator[bytes]:
        # `blob` came from a metadata read, so every ranged download names its generation: if
        # the object is replaced or deleted mid-stream, the next range fails (404) instead of
        # splicing two versions together. The length check catches servers that ignore the
        # generation, such as emulators.
        size = int(blob.size)
        fetch = chunk_size * max(1, _FETCH_SIZE // chunk_size)
        for start in range(0, size, fetch):
            end = min(start + fetch, size)
            try:
                # Ranges cannot be checked against the whole object's checksum.
                data = blob.download_as_bytes(start=start, end=end - 1, checksum=None)
            except self._errors.NotFound as exc:
                raise _changed(key) from exc
            if len(data) != end - start:
                raise _changed(key)
            for offset in range(0, len(data), chunk_size):
                yield data[offset : offset + chunk_size]

    def exists(self, key: str) -> bool:
        return bool(self._bucket.blob(self._name(key)).exists())

    def delete(self, key: str) -> int:
        name = self._name(key)
        blob = self._bucket.get_blob(name)
        if blob is None:
            return 0
        try:
            # By name, not generation: whatever is live at `key` must be gone afterwards.
            self._bucket.delete_blob(name)
        except self._errors.NotFound:
            return 0
        return int(blob.size)

    def delete_prefix(self, prefix: str) -> int:
        # The bytes freed are those of every object listed: all of them are gone afterwards,
        # even one that a concurrent delete removed first.
        freed = 0
        pending: list[Any] = []
        for blob in self._client.list_blobs(self._bucket, prefix=self._name(prefix) + "/"):
            pending.append(blob)
            if len(pending) == _BATCH_SIZE:
                freed += self._delete_batch(pending)
                pending = []
        if pending:
            freed += self._delete_batch(pending)
        return freed

    def _delete_batch(self, blobs: list[Any]) -> int:
        names = [blob.name for blob in blobs]
        try:
            with self._client.batch():
                for name in names:
                    self._bucket.delete_blob(name)
        except self._errors.NotFound:
            # Some were already gone. A batch raises only its last error, so repeat the deletes
            # one by one to surface any other failure that one may have hidden.
            for name in names:
                with contextlib.suppress(self._errors.NotFound):
                    self._bucket.delete_blob(name)
        return sum(int(blob.size) for blob in blobs)

    def uri_for(self, key: str) -> str:
        return f"gs://{self._bucket.name}/{self._name(key)}"

    def total_bytes(self, prefix: str) -> int:
        blobs = self._client.list_blobs(self._bucket, prefix=self._name(prefix) + "/")
        return sum(int(blob.size) for blob in blobs)


def _changed(key: str) -> Aborted:
    return Aborted(
        f"artifact {key!r} was replaced or deleted while being read; read it again",
        reason="ARTIFACT_CHANGED",
        metadata={"key": key},
    )
