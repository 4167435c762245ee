"""Artifacts as files under a local directory (POSIX hosts)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from services.common.errors import ConfigurationError, FailedPrecondition
from services.tracker.artifact_store import DEFAULT_CHUNK_SIZE, ArtifactStore
from services.tracker.artifact_store.paths import key_error, validate_key

_TEMP_PREFIX = ".cairn-upload-"
_TEMP_SUFFIX = ".part"
# How often put re-creates a directory that a concurrent delete pruned under it.
_CREATE_ATTEMPTS = 3


class LocalArtifactStore(ArtifactStore):
    """Keys map to files under `root`; "/" in a key is a directory level.

    Unlike object stores, a file system cannot hold both "a" and "a/b": storing one when the
    other exists is FailedPrecondition.
    """

    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            # Resolved once so that containment checks compare real paths with a real path.
            self._root = root.resolve(strict=True)
        except OSError as exc:
            raise ConfigurationError(
                f"artifact root {str(root)!r} is not a usable directory: {exc}"
            ) from exc
        self.root_uri = self._root.as_uri()
        try:
            self._name_max = os.pathconf(self._root, "PC_NAME_MAX")
        except (OSError, ValueError):
            self._name_max = 255

    def _path(self, key: str) -> Path:
        validate_key(key, max_segment_bytes=self._name_max)
        path = self._root.joinpath(*key.split("/"))
        # Defence in depth: keys are already free of "..", but a symlink planted inside the
        # root could still lead out of it.
        if self._root not in Path(os.path.realpath(path)).parents:
            raise key_error(key, "OUTSIDE_ROOT", "resolves outside the artifact root")
        return path

    def put(self, key: str, source: BinaryIO, size: int) -> None:
        path = self._path(key)
        self._check_source(source, size)
        tmp = self._create_temp(key, path.parent)
        try:
            with tmp:
                shutil.copyfileobj(source, tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            try:
                os.replace(tmp.name, path)
            except IsADirectoryError as exc:
                raise self._conflict(key) from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp.name)
            raise
        self._fsync_dir(path.parent)

    def _create_temp(self, key: str, directory: Path) -> IO[bytes]:
        attempt = 1
        while True:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                return tempfile.NamedTemporaryFile(
                    dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, delete=False
                )
            except (FileExistsError, NotADirectoryError) as exc:
                raise self._conflict(key) from exc
            except FileNotFoundError:
                # A concurrent delete pruned the (still empty) directory; once the temp file
                # exists in it, it is no longer empty and cannot be pruned again.
                if attempt == _CREATE_ATTEMPTS:
                    raise
                attempt += 1

    @staticmethod
    def _conflict(key: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"artifact key {key!r} conflicts with an existing artifact: a file system cannot "
            'hold both "a" and "a/b"',
            reason="ARTIFACT_PATH_CONFLICT",
            metadata={"key": key},
        )

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        # Makes the rename itself durable, not just the file's content.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        self._check_chunk_size(chunk_size)
        return self._started(self._chunks(key, self._path(key), chunk_size))

    @staticmethod
    def _chunks(key: str, path: Path, chunk_size: int) -> Generator[bytes, None, None]:
        try:
            # An open file keeps the content it was opened with even if a put replaces it.
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactStore._not_found(key) from None
        with f:
            yield b""
            while chunk := f.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                return 0
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return 0
        self._prune(path.parent)
        return st.st_size

    def delete_prefix(self, prefix: str) -> int:
        top = self._path(prefix)
        if not top.is_dir():
            return 0
        freed = 0
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            for name in filenames:
                freed += _unlink(os.path.join(dirpath, name))
            for name in dirnames:
                sub = os.path.join(dirpath, name)
                if os.path.islink(sub):
                    _unlink(sub)
                else:
                    _rmdir(sub)
        _rmdir(str(top))
        self._prune(top.parent)
        return freed

    def _prune(self, directory: Path) -> None:
        """Remove now-empty directories from `directory` up to, not including, the root."""
        while self._root in directory.parents:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                return
            directory = directory.parent

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def total_bytes(self, prefix: str) -> int:
        total = 0
        for dirpath, _, filenames in os.walk(self._path(prefix)):
            for name in filenames:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        return total


def _unlink(path: str) -> int:
    """Remove a file; returns the bytes that frees (0 if it was already gone or a link)."""
    try:
        st = os.lstat(path)
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # A put racing the delete may have created something in it; that object survives.
        if exc.errno != errno.ENOTEMPTY:
            raise
