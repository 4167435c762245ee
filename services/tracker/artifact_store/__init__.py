"""Where run artifacts (files) live: a blob store chosen by a URI.

`open_artifact_store` turns CAIRN_ARTIFACT_ROOT into a store: a local directory, a GCS bucket
or an S3 bucket, each optionally under a prefix. Stores deal in keys, "/"-separated names
relative to the store's root built by `artifact_key`; they are synchronous and safe to share
between the threads of a pool.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from services.common.errors import ConfigurationError, InvalidArgument, NotFound
from services.tracker.artifact_store.paths import (
    INVALID_ARTIFACT_PATH,
    MAX_PATH_LENGTH,
    artifact_key,
    run_prefix,
    validate_artifact_path,
    validate_key,
)

__all__ = [
    "INVALID_ARTIFACT_PATH",
    "MAX_PATH_LENGTH",
    "ArtifactStore",
    "GcsArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "artifact_key",
    "open_artifact_store",
    "run_prefix",
    "validate_artifact_path",
]

DEFAULT_CHUNK_SIZE = 1 << 20


class ArtifactStore(ABC):
    """A flat namespace of objects addressed by key; a put replaces an object whole."""

    root_uri: str

    @abstractmethod
    def put(self, key: str, source: BinaryIO, size: int) -> None:
        """Store `size` bytes read from `source` (seekable, at offset 0) at `key`.

        Atomic: readers see the previous object or the new one, never a partial one, and a
        failed put leaves nothing new at `key`.
        """

    @abstractmethod
    def open_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The object's bytes in chunks of at most `chunk_size`.

        Raises NotFound from this call, not from the first iteration, so a caller can report a
        missing artifact before it starts streaming.
        """

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> int:
        """Remove the object; returns the bytes freed, 0 if there was nothing to remove."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under "prefix/"; returns the bytes freed."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The object's full URI, for display."""

    def run_uri(self, experiment_id: str, run_id: str) -> str:
        """Where a run's artifacts live, for display. The ids are checked plain names (nothing
        to quote or resolve), so this skips uri_for's per-key checks: a search page names a
        hundred runs, and the local store's realpath made up half of its time."""
        return f"{self.root_uri}/{run_prefix(experiment_id, run_id)}"

    @abstractmethod
    def total_bytes(self, prefix: str) -> int:
        """The bytes stored under "prefix/"."""

    @staticmethod
    def _started(chunks: Generator[bytes, None, None]) -> Generator[bytes, None, None]:
        """Run a chunk generator up to its first yield, which must be b"".

        That is where the generator has opened the object: a missing one raises NotFound now,
        and from then on closing or dropping the generator releases what it holds even if it is
        never read (an unstarted generator's cleanup code never runs).
        """
        if next(chunks) != b"":
            raise AssertionError("chunk generators must first yield b'' once opened")
        return chunks

    @staticmethod
    def _check_source(source: BinaryIO, size: int) -> None:
        """Check that `source` holds exactly `size` bytes, and rewind it.

        A mismatch is a bug in the caller's bookkeeping: storing either length would record an
        artifact whose content disagrees with its recorded size.
        """
        actual = source.seek(0, os.SEEK_END)
        source.seek(0)
        if actual != size:
            raise ValueError(f"source holds {actual} bytes but size says {size}")

    @staticmethod
    def _not_found(key: str) -> NotFound:
        return NotFound(
            f"artifact {key!r} not found", reason="ARTIFACT_NOT_FOUND", metadata={"key": key}
        )

    @staticmethod
    def _check_chunk_size(chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")


# Loose on purpose: the union of GCS and S3 bucket name rules, to catch typos, user info or
# ports in the URI at start-up rather than on the first upload.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def _bucket_and_prefix(uri: str, bucket: str, path: str) -> tuple[str, str]:
    if not bucket:
        raise ConfigurationError(f"artifact store URI {uri!r} names no bucket")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigurationError(f"artifact store URI {uri!r}: {bucket!r} is not a bucket name")
    prefix = path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidArgument as exc:
            raise ConfigurationError(f"artifact store URI {uri!r}: bad prefix: {exc}") from exc
    return bucket, prefix


def open_artifact_store(uri: str) -> ArtifactStore:
    """Open the store that `uri` names.

    Accepted: "file:///abs/dir", a local path (relative ones are made absolute),
    "gs://bucket[/prefix]" and "s3://bucket[/prefix]". Anything else is a ConfigurationError
    naming the URI.
    """
    if not uri.strip():
        raise ConfigurationError("artifact store URI is empty")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        return LocalArtifactStore(Path(uri).expanduser().absolute())
    if parts.query or parts.fragment:
        raise ConfigurationError(f"artifact store URI {uri!r} must not have a query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"artifact store URI {uri!r}: file URIs must be local")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise ConfigurationError(f"artifact store URI {uri!r}: file URIs need an absolute path")
        return LocalArtifactStore(path)
    if scheme == "gs":
        return GcsArtifactStore(*_bucket_and_prefix(uri, parts.netloc, parts.path))
    if scheme == "s3":
        return S3ArtifactStore(*_bucket_and_prefix(uri, parts.netloc, parts.path))
    raise ConfigurationError(
        f"artifact store URI {uri!r} has unsupported scheme {parts.scheme!r}; "
        "use file://, gs://, s3:// or a local path"
    )


# The implementations subclass ArtifactStore, so they can only be imported once it exists.
from services.tracker.artifact_store.gcs import GcsArtifactStore  # noqa: E402
from services.tracker.artifact_store.local import LocalArtifactStore  # noqa: E402
from services.tracker.artifact_store.s3 import S3ArtifactStore  # noqa: E402
