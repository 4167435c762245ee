"""Real S3 and GCS emulators for artifact store tests, one of each per test session.

The servers live for the session; the environment variables that point the official clients at
them are set per test (monkeypatch), so nothing leaks into tests that do not ask for them.
Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

GCS_BUCKET = "cairn-test-artifacts"
S3_BUCKET = "cairn-test-artifacts"

# Variables that would point boto3 somewhere else or at someone's real account.
_AWS_OVERRIDES = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@dataclass(frozen=True)
class Emulator:
    endpoint: str
    bucket: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Keep ~/.aws out of it: a profile there could add a region, endpoint or credentials.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in _AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Emulator]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        emulator = Emulator(f"http://{host}:{port}", S3_BUCKET)
        with pytest.MonkeyPatch.context() as mp:
            _use_s3(mp, emulator.endpoint)
            boto3.session.Session().client("s3").create_bucket(Bucket=emulator.bucket)
        yield emulator
    finally:
        server.stop()


@pytest.fixture
def s3_emulator(s3_server: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The S3 emulator, with boto3's environment pointing at it for this test."""
    _use_s3(monkeypatch, s3_server.endpoint)
    return s3_server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Emulator]:
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=GCS_BUCKET)
    server.start()
    try:
        yield Emulator(f"http://127.0.0.1:{port}", GCS_BUCKET)
    finally:
        server.stop()


@pytest.fixture
def gcs_emulator(gcs_server: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The GCS emulator, with STORAGE_EMULATOR_HOST pointing at it for this test."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    monkeypatch.delenv("API_ENDPOINT_OVERRIDE", raising=False)
    return gcs_server
