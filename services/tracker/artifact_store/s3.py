"""Artifacts as objects in an S3 (or S3-compatible) bucket.

Other endpoints (MinIO, emulators) are reached the way boto3 supports natively: set
AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, BinaryIO

from services.common.errors import CairnError, ConfigurationError
from services.tracker.artifact_store import DEFAULT_CHUNK_SIZE, ArtifactStore
from services.tracker.artifact_store.paths import validate_key

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3 import S3Client

# S3 object keys are at most 1,024 bytes of UTF-8.
_MAX_KEY_BYTES = 1024
# The most keys one ListObjectsV2 page returns and one DeleteObjects call accepts.
_BATCH_SIZE = 1000
# HeadObject has no body to carry "NoSuchKey", so a missing object shows as a bare 404.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ArtifactStore(ArtifactStore):
    """Keys map to object keys "{prefix}/{key}" in `bucket`."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        try:
            import boto3
            from botocore.exceptions import ClientError
        except ImportError as exc:
            raise ConfigurationError(
                f"s3://{bucket} artifact stores need boto3: pip install 'cairn[s3]'"
            ) from exc
        self._client_error: type[ClientError] = ClientError
        # A session of its own: boto3's default session is not safe to create clients from
        # concurrently, while the client itself is safe to share between threads.
        self._client: S3Client = boto3.session.Session().client("s3")
        self._bucket = bucket
        self._prefix = prefix
        self._max_key_bytes = _MAX_KEY_BYTES - (len(prefix.encode()) + 1 if prefix else 0)
        self.root_uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def _name(self, key: str) -> str:
        validate_key(key, max_bytes=self._max_key_bytes)
        return f"{self._prefix}/{key}" if self._prefix else key

    def put(self, key: str, source: BinaryIO, size: int) -> None:
        name = self._name(key)
        self._check_source(source, size)
        # Atomic either way: a plain PUT replaces the object whole, and a multipart upload
        # (above 8 MiB) only becomes visible on completion; boto3 aborts it on failure.
        self._client.upload_fileobj(source, self._bucket, name)

    def open_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        self._check_chunk_size(chunk_size)
        return self._started(self._chunks(key, self._name(key), chunk_size))

    def _chunks(self, key: str, name: str, chunk_size: int) -> Generator[bytes, None, None]:
        try:
            # One GET streams one version of the object, whatever happens to it meanwhile.
            body = self._client.get_object(Bucket=self._bucket, Key=name)["Body"]
        except self._client_error as exc:
            if _code(exc) in _MISSING_CODES:
                raise self._not_found(key) from None
            raise
        with contextlib.closing(body):
            yield b""
            yield from body.iter_chunks(chunk_size)

    def _head_size(self, name: str) -> int | None:
        try:
            return self._client.head_object(Bucket=self._bucket, Key=name)["ContentLength"]
        except self._client_error as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head_size(self._name(key)) is not None

    def delete(self, key: str) -> int:
        name = self._name(key)
        size = self._head_size(name)
        if size is None:
            return 0
        self._client.delete_object(Bucket=self._bucket, Key=name)
        return size

    def delete_prefix(self, prefix: str) -> int:
        freed = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket,
            Prefix=self._name(prefix) + "/",
            PaginationConfig={"PageSize": _BATCH_SIZE},
        )
        for page in pages:
            objects = page.get("Contents", [])
            if not objects:
                continue
            response = self._client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": obj["Key"]} for obj in objects], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise CairnError(
                    f"could not delete {len(errors)} objects under {prefix!r}: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}",
                    reason="ARTIFACT_DELETE_FAILED",
                    metadata={"prefix": prefix, "failed": len(errors)},
                )
            freed += sum(obj["Size"] for obj in objects)
        return freed

    def uri_for(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._name(key)}"

    def total_bytes(self, prefix: str) -> int:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._name(prefix) + "/"
        )
        return sum(obj["Size"] for page in pages for obj in page.get("Contents", []))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
