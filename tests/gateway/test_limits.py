"""The gateway's input limits against a live tracker + gateway: body caps (413 naming the
limit), client input that must never be a 5xx, stream idle timeouts (408 / 504 / a transfer
that keeps moving is never cut), request header limits, HEAD, download integrity and
http.proto path matching. No timing assertions: outcomes and orderings only."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cairn_testing import ServerThread, make_settings

MiB = 1 << 20
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


# =====================================================================================
# Helpers
# =====================================================================================


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as http:
        yield http


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    return response.json()


def status_of(response: httpx.Response, http_status: int, reason: str | None = None) -> Any:
    """Assert a google.rpc.Status error with this HTTP status; returns (body, ErrorInfo)."""
    assert response.status_code == http_status, f"{response.status_code}: {response.text[:500]}"
    body = response.json()
    infos = [d for d in body.get("details", []) if d["@type"] == ERROR_INFO]
    assert len(infos) == 1, body
    if reason is not None:
        assert infos[0]["reason"] == reason, body
    return body, infos[0]


def new_run(http: httpx.Client) -> dict[str, Any]:
    experiment = ok(
        http.post("/v1/experiments", json={"displayName": f"lim-{os.urandom(6).hex()}"})
    )
    return ok(http.post(f"/v1/{experiment['name']}/runs", json={}))  # type: ignore[no-any-return]


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"connection closed after {data!r}")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, body


def rpc_count(http: httpx.Client, counter: str, method: str) -> float:
    """The tracker's grpc_server_<counter>_total for `method` (all codes), from the
    process-wide registry the gateway's /metrics serves."""
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"grpc_server_{counter}_total{{") and f'grpc_method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_rpc(http: httpx.Client, counter: str, method: str, above: float) -> None:
    for _ in range(600):  # a bounded wait for a condition, not a timing assertion
        if rpc_count(http, counter, method) > above:
            return
        time.sleep(0.05)
    raise AssertionError(f"the tracker never {counter} another {method} call")


# =====================================================================================
# Body limits
# =====================================================================================


def test_a_63_mib_stream_of_empty_messages_is_refused_early_while_others_are_served(
    client: httpx.Client, gateway_url: str
) -> None:
    """The review's repro: 63 MiB of `[{},{},...]` to a client-streaming method used to
    build millions of dicts on the event loop. Now the 10,001st message is refused with 413
    before the gateway has read the body, and the gateway keeps serving meanwhile."""
    run = new_run(client)
    body_size = 63 * MiB
    host, port = address(gateway_url)
    streamed_before = rpc_count(client, "started", "StreamMetrics")
    with socket.create_connection((host, port), timeout=30) as big:
        big.sendall(
            f"POST /v1/{run['name']}:streamMetrics HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {body_size}\r\n\r\n".encode()
        )
        first = b"[" + b"{}," * (MiB // 3)  # ~350,000 messages: far past the limit
        big.sendall(first)
        # The refusal arrives although 62 of the 63 MiB were never sent.
        status, headers, raw = read_response(big)
        assert status == 413, raw
        error = json.loads(raw)
        info = next(d for d in error["details"] if d["@type"] == ERROR_INFO)
        assert info["reason"] == "REQUEST_TOO_LARGE"
        assert info["metadata"]["limit_messages"] == "10000"
        assert "10000 messages" in error["message"]
        assert headers["x-request-id"]
        # While that request is still open (its body unfinished), others are answered.
        assert ok(client.get("/v1/experiments")) is not None
    # Refused before the backend saw a message: validated up front.
    assert rpc_count(client, "started", "StreamMetrics") == streamed_before


def test_json_body_limits_name_the_limit(client: httpx.Client) -> None:
    run = new_run(client)
    # Unary: 8 MiB, refused from Content-Length before reading...
    big = b'{"filter": "' + b"x" * (8 * MiB) + b'"}'
    body, info = status_of(
        client.post("/v1/runs:search", content=big, headers={"content-type": "application/json"}),
        413,
        "REQUEST_TOO_LARGE",
    )
    assert "8 MiB" in body["message"] and info["metadata"]["limit_bytes"] == str(8 * MiB)

    # ...and when there is none (chunked), as soon as the bytes pass it.
    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), MiB):
            yield big[start : start + MiB]

    status_of(
        client.post(
            "/v1/runs:search", content=chunked(), headers={"content-type": "application/json"}
        ),
        413,
        "REQUEST_TOO_LARGE",
    )
    # A client stream: 64 MiB in all, refused by the declared length at once.
    body, info = status_of(
        _declared_only(client, f"/v1/{run['name']}:streamMetrics", 65 * MiB),
        413,
        "REQUEST_TOO_LARGE",
    )
    assert "64 MiB" in body["message"] and info["metadata"]["limit_bytes"] == str(64 * MiB)


def _declared_only(http: httpx.Client, path: str, length: int) -> httpx.Response:
    """A POST that declares `length` bytes and sends none: the gateway must refuse it from
    the header alone."""
    host, port = address(str(http.base_url).rstrip("/"))
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        status, headers, raw = read_response(sock)
    return httpx.Response(status, headers=headers, content=raw)


def test_a_big_json_upload_stream_is_cut_at_64_mib_and_stores_nothing(
    client: httpx.Client,
) -> None:
    """Past the validated-up-front prefix, a JSON stream flows to the backend as it is
    parsed; the byte cap still ends it (413) and the cancelled upload stores nothing."""
    run = new_run(client)
    chunk = json.dumps({"chunk": "QUFB" * (768 * 1024)}).encode()  # 3 MiB of base64
    handled = rpc_count(client, "handled", "UploadArtifact")

    def body() -> Iterator[bytes]:
        yield b'[{"metadata": {"path": "big.bin"}}'
        for _ in range(30):  # 90 MiB
            yield b"," + chunk
        yield b"]"

    response = client.post(
        f"/v1/{run['name']}/artifacts:upload",
        content=body(),
        headers={"content-type": "application/json"},
    )
    _, info = status_of(response, 413, "REQUEST_TOO_LARGE")
    assert info["metadata"]["limit_bytes"] == str(64 * MiB)
    wait_for_rpc(client, "handled", "UploadArtifact", handled)
    assert ok(client.get(f"/v1/{run['name']}/artifacts")).get("artifacts", []) == []


# =====================================================================================
# Client input is never a 5xx
# =====================================================================================


def _huge_integer(digits: int) -> str:
    return "1" + "0" * (digits - 1)


def test_hostile_json_is_a_400_never_a_5xx(client: httpx.Client) -> None:
    run = new_run(client)
    name = run["name"]
    cases: list[tuple[str, str]] = [
        # 1e400 spelled out as an integer literal: float() overflows.
        (f"/v1/{name}:logMetrics", f'{{"metrics":[{{"key":"a","value":{_huge_integer(401)}}}]}}'),
        # An int64 out of range, and an integer over Python's 4300-digit limit.
        (f"/v1/{name}:logMetrics", f'{{"metrics":[{{"key":"a","value":1,"step":{2**70}}}]}}'),
        (f"/v1/{name}:logMetrics", f'{{"metrics":[{{"key":"a","value":{_huge_integer(5000)}}}]}}'),
        ("/v1/runs:search", f'{{"pageSize": {_huge_integer(5000)}}}'),
        ("/v1/runs:search", f'{{"pageSize": "{_huge_integer(5000)}"}}'),
        # Nested too deeply for the parser, in a unary and a streamed body.
        ("/v1/runs:search", '{"a":' * 5000 + "1" + "}" * 5000),
        (f"/v1/{name}:streamMetrics", "[" + '{"a":' * 5000 + "1" + "}" * 5000 + "]"),
        # The same number problems inside a client stream.
        (
            f"/v1/{name}:streamMetrics",
            f'[{{"metrics":[{{"key":"a","value":{_huge_integer(401)}}}]}}]',
        ),
        (f"/v1/{name}:streamMetrics", f"[{_huge_integer(5000)}]"),
        # Not UTF-8; truncated; trailing garbage after a stream.
        ("/v1/runs:search", "\udcff"),
        (f"/v1/{name}:streamMetrics", '[{"metrics": []}, {"metr'),
        (f"/v1/{name}:streamMetrics", "[{}] {}"),
    ]
    for path, text in cases:
        content = text.encode("utf-8", "surrogateescape")
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, text[:60], response.text[:300])
        body = response.json()
        assert body["code"] == 3 and len(body["message"]) < 1000, body
    # Query parameters: the same conversions.
    for params in ({"pageSize": _huge_integer(5000)}, {"pageSize": str(2**70)}):
        response = client.get("/v1/experiments", params=params)
        assert response.status_code == 400, response.text[:300]
    assert ok(client.get(f"/v1/{name}"))["name"] == name  # and nothing broke


# =====================================================================================
# Stream idle timeouts (gateway_timeout_seconds = 1)
# =====================================================================================


@pytest.fixture
def idle_gateway(database_url: str, tmp_path: Path) -> Iterator[str]:
    settings = make_settings(database_url, tmp_path / "data", gateway_timeout_seconds=1)
    server = ServerThread(
        settings, ("tracker", "scheduler", "analytics", "logproxy", "gateway")
    ).start()
    try:
        yield f"http://{server.address('gateway')}"
    finally:
        server.stop()


def test_streams_have_an_idle_timeout_not_a_deadline(idle_gateway: str) -> None:
    """With a 1 s timeout: an upload that trickles for ~3 s and a download read slowly for
    longer than that both succeed (they keep moving); a client that stops sending for
    longer is a 408 and stores nothing."""
    with httpx.Client(base_url=idle_gateway, timeout=30) as http:
        run = new_run(http)
        data = os.urandom(10 * 64 * 1024)

        def trickle() -> Iterator[bytes]:
            for start in range(0, len(data), 64 * 1024):
                time.sleep(0.3)  # the client is slow, not stalled
                yield data[start : start + 64 * 1024]

        artifact = ok(
            http.post(
                f"/v1/{run['name']}/artifacts:upload",
                params={"metadata.path": "slow.bin"},
                content=trickle(),
                headers={"content-type": "application/octet-stream"},
            )
        )
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()

        # A download read slowly: more than the timeout in all, never idle that long on
        # the backend side. 16 MiB is more than the socket buffers hold.
        big = os.urandom(16 * MiB)
        ok(
            http.post(
                f"/v1/{run['name']}/artifacts:upload",
                params={"metadata.path": "big.bin"},
                content=big,
                headers={"content-type": "application/octet-stream"},
            )
        )
        received = bytearray()
        with http.stream(
            "GET",
            f"/v1/{run['name']}/artifacts:download",
            params={"path": "big.bin", "alt": "media"},
        ) as response:
            assert response.status_code == 200
            for piece in response.iter_bytes(MiB):
                received += piece
                time.sleep(0.25)
        assert bytes(received) == big

        # A client that sends part of the body and then nothing: 408 Request Timeout.
        handled = rpc_count(http, "handled", "UploadArtifact")
        host, port = address(idle_gateway)
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(
                f"POST /v1/{run['name']}/artifacts:upload?metadata.path=stalled.bin HTTP/1.1\r\n"
                f"Host: {host}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {2 * MiB}\r\n\r\n".encode()
            )
            sock.sendall(os.urandom(100_000))
            status, _, raw = read_response(sock)  # no more bytes are sent
        assert status == 408, raw
        error = json.loads(raw)
        assert error["code"] == 4
        assert error["details"][0]["reason"] == "CLIENT_TIMEOUT"
        wait_for_rpc(http, "handled", "UploadArtifact", handled)
        paths = [a["path"] for a in ok(http.get(f"/v1/{run['name']}/artifacts"))["artifacts"]]
        assert sorted(paths) == ["big.bin", "slow.bin"]

        # The same for a unary JSON body that stops coming.
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(
                f"POST /v1/runs:search HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
            )
            status, _, raw = read_response(sock)
        assert status == 408, raw


# =====================================================================================
# Request headers
# =====================================================================================


def test_an_oversized_header_is_refused_and_the_gateway_serves_on(
    client: httpx.Client, gateway_url: str
) -> None:
    host, port = address(gateway_url)
    with socket.create_connection((host, port), timeout=30) as sock:
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-A: ".encode()
        request += b"a" * MiB + b"\r\n\r\n"
        refused = False
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            refused = True  # closed on us mid-header
        if not refused:
            try:
                reply = sock.recv(65536)
            except ConnectionResetError:
                reply = b""
            # A 4xx status line, or a closed connection.
            assert reply == b"" or reply.split(b" ")[1].startswith(b"4"), reply[:200]
    assert client.get("/healthz").status_code == 200
    assert ok(client.get("/v1/experiments")) is not None


# =====================================================================================
# HEAD
# =====================================================================================


def test_head_answers_like_get_without_a_body(client: httpx.Client) -> None:
    run = new_run(client)
    name = run["name"]
    got = client.get(f"/v1/{name}")
    head = client.head(f"/v1/{name}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
    assert head.headers["x-request-id"]

    missing = client.head("/v1/experiments/-/runs/missing")
    assert missing.status_code == 404 and missing.content == b""

    data = os.urandom(300_000)
    ok(
        client.post(
            f"/v1/{name}/artifacts:upload",
            params={"metadata.path": "h.bin"},
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
    )
    media = client.head(f"/v1/{name}/artifacts:download", params={"path": "h.bin", "alt": "media"})
    assert media.status_code == 200 and media.content == b""
    assert media.headers["content-length"] == str(len(data))
    assert media.headers["x-cairn-sha256"] == hashlib.sha256(data).hexdigest()
    ndjson = client.head(f"/v1/{name}/artifacts:download", params={"path": "h.bin"})
    assert ndjson.status_code == 200 and ndjson.content == b""
    assert ndjson.headers["content-type"] == "application/x-ndjson"

    # HEAD is not a POST: a POST-only path answers 405 with its Allow header.
    refused = client.head(f"/v1/{name}:logMetrics")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"


# =====================================================================================
# Download integrity
# =====================================================================================


def test_a_corrupted_download_is_cut_short(gateway_server: ServerThread) -> None:
    """X-Cairn-Sha256 is a promise: content that does not match it never arrives whole
    (the last chunk is held back and the connection cut)."""
    url = f"http://{gateway_server.address('gateway')}"
    with httpx.Client(base_url=url, timeout=30) as http:
        run = new_run(http)
        data = os.urandom(3 * MiB + 5)
        digest = hashlib.sha256(data).hexdigest()
        ok(
            http.post(
                f"/v1/{run['name']}/artifacts:upload",
                params={"metadata.path": "c.bin"},
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
        )
        params = {"path": "c.bin", "alt": "media"}
        assert http.get(f"/v1/{run['name']}/artifacts:download", params=params).content == data
        # Flip one byte of the stored blob (the local store keeps it under its digest).
        root = Path(gateway_server.settings.artifact_root)
        (blob,) = [p for p in root.rglob("*") if p.is_file() and digest in str(p)]
        corrupted = bytearray(blob.read_bytes())
        corrupted[-1] ^= 0xFF
        blob.write_bytes(bytes(corrupted))
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"/v1/{run['name']}/artifacts:download", params=params)
        # The gateway is fine afterwards.
        assert ok(http.get(f"/v1/{run['name']}"))["name"] == run["name"]


# =====================================================================================
# Paths per http.proto, and a JSON upload with query parameters
# =====================================================================================


def test_encoded_slashes_and_colons_are_data(client: httpx.Client) -> None:
    run = new_run(client)
    experiment_id, run_id = run["name"].split("/")[1], run["runId"]
    # A run name sent as ONE segment is not GetRun's {name=experiments/*/runs/*}: it is an
    # experiment id (with %2F kept encoded in the multi-segment variable), which is invalid.
    response = client.get(f"/v1/experiments/{experiment_id}%2Fruns%2F{run_id}")
    assert response.status_code in (400, 404), response.text
    assert "runId" not in response.text
    # An encoded ":" is not a custom verb: no RestoreExperiment, a 405 of GET/PATCH/DELETE.
    response = client.post(f"/v1/experiments/{experiment_id}%3Arestore", json={})
    assert response.status_code == 405
    assert ok(client.get(f"/v1/{run['name']}"))["runId"] == run_id


def test_a_json_upload_takes_its_header_fields_from_the_query_too(client: httpx.Client) -> None:
    """What the OpenAPI document says (and Schemathesis checks): the metadata.* query
    parameters apply to a JSON body's header message as they do to a raw upload's."""
    run = new_run(client)
    url = f"/v1/{run['name']}/artifacts:upload"
    messages = [{"metadata": {}}, {"chunk": "aGVsbG8="}]
    artifact = ok(client.post(url, params={"metadata.path": "q/hello.txt"}, json=messages))
    assert artifact["path"] == "q/hello.txt" and artifact["sizeBytes"] == "5"
    # A body that says otherwise is refused, naming the field.
    conflicting = [{"metadata": {"path": "other.txt"}}, {"chunk": "aGVsbG8="}]
    body, info = status_of(
        client.post(url, params={"metadata.path": "q/x.txt"}, json=conflicting), 400
    )
    assert info["metadata"]["field"] == "metadata.path" and "must agree" in body["message"]


def test_big_bodies_parsed_in_a_worker_thread_keep_precise_errors(client: httpx.Client) -> None:
    """Bodies over 256 KiB are parsed (json.loads and json_format) off the event loop; the
    answers are the same as for small ones."""
    body = b'{"experimentIds":[' + b'"",' * 2_500_000 + b'""],"bogus":1}'
    assert 256 << 10 < len(body) < 8 * MiB
    response = client.post(
        "/v1/runs:search", content=body, headers={"content-type": "application/json"}
    )
    body_json, info = status_of(response, 400)
    assert "bogus" in body_json["message"] and info["metadata"]["field"] == "bogus"
    run = new_run(client)
    metrics = [{"key": f"m{i % 50}", "value": i, "step": i} for i in range(20_000)]
    result = ok(client.post(f"/v1/{run['name']}:logMetrics", json={"metrics": metrics}))
    assert result is not None
