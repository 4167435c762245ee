"""The shared input helpers of services/gateway/limits.py (what the transcoder and the
MLflow layer both rely on), without servers; tests/gateway/test_limits.py runs them live."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.request_ids import valid_request_id
from services.gateway import limits
from services.gateway.limits import GatewayInputError, IdleTimeoutError


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), ("-12", -12), (" 42 ", 42), (3.0, 3), (2**63 - 1, 2**63 - 1), (-(2**63), -(2**63))],
)
def test_to_int64_accepts(value: Any, expected: int) -> None:
    assert limits.to_int64(value, "step") == expected


@pytest.mark.parametrize(
    "value",
    [True, None, 1.5, math.inf, math.nan, "1e3", "0x10", "1_000", "", 2**63, -(2**63) - 1,
     "9" * 5000, [1], {"a": 1}],
)  # fmt: skip
def test_to_int64_refuses_with_a_short_message(value: Any) -> None:
    with pytest.raises(GatewayInputError) as caught:
        limits.to_int64(value, "step")
    assert caught.value.field == "step" and caught.value.http_status == 400
    assert len(caught.value.message) < 200


def test_uint64_and_timestamp_ranges() -> None:
    assert limits.to_uint64(str(2**64 - 1), "n") == 2**64 - 1
    with pytest.raises(GatewayInputError):
        limits.to_uint64(-1, "n")
    assert limits.to_timestamp_ms(253_402_300_799_999, "t") == 253_402_300_799_999
    for value in (2**62, 253_402_300_800_000, -62_135_596_800_001):
        with pytest.raises(GatewayInputError):
            limits.to_timestamp_ms(value, "t")


def test_to_double() -> None:
    assert limits.to_double(1, "v") == 1.0
    assert limits.to_double("2.5e3", "v") == 2500.0
    assert math.isnan(limits.to_double("NaN", "v"))
    assert limits.to_double("-Infinity", "v") == -math.inf
    for value in (10**400, "inf", "nan", True, None, "1e400x", "1" * 500):
        with pytest.raises(GatewayInputError):
            limits.to_double(value, "v")
    with pytest.raises(GatewayInputError):
        limits.to_double("Infinity", "v", finite=True)


def test_parse_json_turns_every_client_mistake_into_a_400() -> None:
    for raw in (b'{"a":' * 5000, b"\xff", b"1" * 5000, b"{", b"[1,]"):
        with pytest.raises(GatewayInputError) as caught:
            limits.parse_json(raw)
        assert caught.value.http_status == 400 and len(caught.value.message) < 200
    assert limits.parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]}


def test_request_ids_follow_one_rule() -> None:
    assert valid_request_id("client-42") == "client-42"
    assert valid_request_id(" padded ") == "padded"
    assert valid_request_id("r" * 500) == "r" * 128
    for unusable in (None, "", "   ", "caf\u00e9", "a\nb", "\x00"):
        made = valid_request_id(unusable)
        assert len(made) == 32 and made != unusable


def test_content_disposition() -> None:
    assert (
        limits.content_disposition("m.pkl")
        == "attachment; filename=\"m.pkl\"; filename*=UTF-8''m.pkl"
    )
    assert limits.content_disposition('r\u00e9sum\u00e9 "1".txt') == (
        "attachment; filename=\"r_sum_ _1_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.txt"
    )
    assert limits.content_disposition("").startswith('attachment; filename="download"')


async def _pieces(*chunks: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for chunk in chunks:
        if pause:
            await asyncio.sleep(pause)
        yield chunk


async def _collect(source: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in source]


async def test_json_stream_reader_yields_elements_as_they_arrive() -> None:
    body = b'[{"a": 1}, {"b": "x\\u00e9"} ,{}]'
    for size in (1, 2, 7, len(body)):
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        reader = limits.JsonStreamReader(_pieces(*chunks))
        assert [item.value for item in await _collect(aiter(reader))] == [
            {"a": 1},
            {"b": "x\u00e9"},
            {},
        ]
        assert reader.is_array and not reader.blank
    blank = limits.JsonStreamReader(_pieces(b"  "))
    assert await _collect(aiter(blank)) == [] and blank.blank
    single = limits.JsonStreamReader(_pieces(b'{"a"', b": 2}"))
    assert [i.value for i in await _collect(aiter(single))] == [{"a": 2}]
    assert single.is_array is False


async def test_json_stream_reader_limits() -> None:
    many = limits.JsonStreamReader(_pieces(b"[" + b"{}," * 20 + b"{}]"), max_items=10)
    with pytest.raises(GatewayInputError) as caught:
        await _collect(aiter(many))
    assert caught.value.http_status == 413 and caught.value.metadata["limit_messages"] == "10"
    big = limits.JsonStreamReader(_pieces(b"[" + b"1," * 100), max_bytes=50)
    with pytest.raises(GatewayInputError) as caught:
        await _collect(aiter(big))
    assert caught.value.metadata["limit_bytes"] == "50"
    for bad in (b"[1 2]", b"[1,]", b"[{}] x", b"[{", b"[" * 5000):
        with pytest.raises(GatewayInputError) as caught:
            await _collect(aiter(limits.JsonStreamReader(_pieces(bad))))
        assert caught.value.http_status == 400


async def test_verify_sha256_holds_the_last_chunk_back() -> None:
    data = [b"abc", b"def", b"ghi"]
    good = hashlib.sha256(b"".join(data)).hexdigest()
    assert await _collect(limits.verify_sha256(_pieces(*data), good)) == data
    received: list[bytes] = []
    with pytest.raises(limits.DigestMismatch):
        async for chunk in limits.verify_sha256(_pieces(*data), "0" * 64):
            received.append(chunk)
    assert received == data[:-1]  # the client never gets the whole (wrong) content
    assert await _collect(limits.rechunk(_pieces(b"abcde", b"fg"), 3)) == [b"abc", b"def", b"g"]


async def test_idle_timeouts() -> None:
    # A source that keeps moving is never cut, however long it takes in all.
    slow = limits.with_idle_timeout(_pieces(*[b"x"] * 6, pause=0.05), 0.2)
    assert len(await _collect(slow)) == 6
    with pytest.raises(IdleTimeoutError) as caught:
        await _collect(limits.with_idle_timeout(_pieces(b"x", pause=1), 0.05))
    assert caught.value.side == "client" and caught.value.http_status == 408

    with pytest.raises(IdleTimeoutError) as caught:
        await limits.within(asyncio.sleep(1), 0.05)
    assert caught.value.http_status == 504

    # The backend watchdog: paused while waiting on the client (0.3 s waits under a 0.2 s
    # watchdog), re-armed by progress.
    deadline = limits.IdleDeadline(0.2)

    async def fed() -> str:
        async for _ in limits.with_idle_timeout(
            _pieces(*[b"x"] * 3, pause=0.3), 1.0, deadline=deadline
        ):
            pass
        return "done"

    assert await deadline.guard(fed()) == "done"
    with pytest.raises(IdleTimeoutError) as caught:
        await limits.IdleDeadline(0.05).guard(asyncio.sleep(1))
    assert caught.value.side == "backend"
