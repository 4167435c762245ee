"""Page tokens, page sizes and settings validation."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.errors import ConfigurationError, InvalidArgument
from services.common.paging import PageTokenCodec, coerce_page_size
from services.common.settings import load_settings


def test_page_size_is_coerced() -> None:
    assert coerce_page_size(0) == 50
    assert coerce_page_size(7) == 7
    assert coerce_page_size(5000) == 1000
    assert coerce_page_size(0, default=10_000, maximum=100_000) == 10_000
    with pytest.raises(InvalidArgument):
        coerce_page_size(-1)


def test_token_round_trips_awkward_values() -> None:
    codec = PageTokenCodec("k")
    position = [None, 1.5, math.inf, -math.inf, "x'y", 42, datetime(2026, 1, 2, tzinfo=UTC)]
    token = codec.encode(position, "q")
    decoded = codec.decode(token, "q")
    assert decoded[:6] == position[:6]
    assert decoded[6] == position[6]
    assert math.isnan(codec.decode(codec.encode([math.nan], "q"), "q")[0])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "x" + t,
        lambda t: "",
        lambda t: "!!!",
        lambda t: t[: len(t) // 2],
    ],
)
def test_tampered_tokens_are_invalid_argument(mutate) -> None:  # type: ignore[no-untyped-def]
    codec = PageTokenCodec("k")
    token = codec.encode([1, "a"], "q")
    with pytest.raises(InvalidArgument) as caught:
        codec.decode(mutate(token) or "@", "q")
    assert caught.value.field == "page_token"


def test_token_from_another_query_or_key_is_rejected() -> None:
    token = PageTokenCodec("k").encode([1], "query-a")
    with pytest.raises(InvalidArgument, match="different query"):
        PageTokenCodec("k").decode(token, "query-b")
    with pytest.raises(InvalidArgument, match="not valid"):
        PageTokenCodec("other-key").decode(token, "query-a")


def test_settings_refuse_open_network_without_tokens() -> None:
    with pytest.raises(ConfigurationError, match="CAIRN_AUTH_TOKENS"):
        load_settings(host="0.0.0.0")
    settings = load_settings(host="0.0.0.0", auth_tokens="a, b")
    assert settings.tokens == frozenset({"a", "b"})


def test_settings_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TRACKER_PORT", "not-a-port")
    with pytest.raises(ConfigurationError, match="CAIRN_TRACKER_PORT"):
        load_settings()
    monkeypatch.setenv("CAIRN_TRACKER_PORT", "70000")
    with pytest.raises(ConfigurationError, match="CAIRN_TRACKER_PORT"):
        load_settings()


def test_database_urls_per_service(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.database_url_for("tracker") == f"sqlite:///{tmp_path.resolve() / 'cairn.db'}"
    shared = load_settings(database_url="postgresql+psycopg://db/cairn")
    assert shared.database_url_for("tracker") == "postgresql+psycopg://db/cairn"
    split = load_settings(
        database_url="postgresql+psycopg://db/cairn",
        tracker_database_url="postgresql+psycopg://db/tracker",
    )
    assert split.database_url_for("tracker") == "postgresql+psycopg://db/tracker"
