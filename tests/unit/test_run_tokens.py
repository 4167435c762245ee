"""Run tokens: minted for one run, verified only with the same secret, never raising."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import run_tokens
from services.common.errors import ConfigurationError
from services.common.run_tokens import (
    TOKEN_PREFIX,
    mint_run_token,
    names_run,
    process_run_token_secret,
    run_token_secret,
    verify_run_token,
)
from services.common.settings import load_settings

SECRET = b"k" * 32
RUN = "experiments/abc/runs/def"


def test_round_trip() -> None:
    token = mint_run_token(SECRET, RUN)
    assert token.startswith(f"{TOKEN_PREFIX}.")
    assert token.count(".") == 2
    assert verify_run_token(SECRET, token) == RUN
    # Deterministic, and distinct per run.
    assert mint_run_token(SECRET, RUN) == token
    other = mint_run_token(SECRET, "experiments/abc/runs/xyz")
    assert other != token and verify_run_token(SECRET, other) == "experiments/abc/runs/xyz"
    # Safe in an HTTP header and a URL.
    assert all(c.isalnum() or c in "-_." for c in token)


def test_wrong_secret_is_rejected() -> None:
    token = mint_run_token(SECRET, RUN)
    assert verify_run_token(b"another-secret-of-some-length", token) is None
    assert verify_run_token(b"", token) is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _token(run: bytes, mac: bytes) -> str:
    return f"{TOKEN_PREFIX}.{_b64(run)}.{_b64(mac)}"


def _swap_run(token: str, run: str) -> str:
    prefix, _, mac = token.split(".")
    return f"{prefix}.{_b64(run.encode())}.{mac}"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: _swap_run(t, "experiments/abc/runs/other"),
        lambda t: _swap_run(t, "experiments/-/runs/def"),
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # another MAC
        lambda t: t[:-2],  # a short MAC
        lambda t: t + "A",  # a long MAC
        lambda t: t + "=",  # padding is not part of the format
        lambda t: t.replace(TOKEN_PREFIX, "cairn-job", 1),
        lambda t: t + ".x",  # a fourth part
        lambda t: t.replace(".", "", 1),
        lambda t: t.upper(),
        lambda t: " " + t,
    ],
)
def test_tampered_tokens_are_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    token = mint_run_token(SECRET, RUN)
    assert verify_run_token(SECRET, tamper(token)) is None


def test_a_second_spelling_of_the_same_bytes_is_rejected() -> None:
    token = mint_run_token(SECRET, RUN)
    prefix, run_part, mac = token.split(".")
    # The MAC's 32 bytes take 43 characters whose last has two unused bits: other values of
    # them decode to the same bytes, which the format refuses (one spelling per token).
    assert len(mac) == 43
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(mac[-1])
    for neighbour in (last ^ 1, last ^ 2, last ^ 3):
        variant = f"{prefix}.{run_part}.{mac[:-1]}{alphabet[neighbour]}"
        assert base64.urlsafe_b64decode(variant.split(".")[2] + "=") == base64.urlsafe_b64decode(
            mac + "="
        )
        assert verify_run_token(SECRET, variant) is None


@pytest.mark.parametrize(
    "garbage",
    ["", ".", "..", "cairn-run", "cairn-run.", "cairn-run..", "cairn-run.!!.??", "Bearer x",
     "cairn-run.\udcff.\x00", "cairn-run." + "A" * 5000 + ".AAAA", "é", "cairn-run.gA.AA"],
)  # fmt: skip
def test_garbage_is_rejected(garbage: str) -> None:
    assert verify_run_token(SECRET, garbage) is None


def test_a_valid_mac_over_a_non_run_name_is_rejected() -> None:
    # Even signed correctly, a token only names a concrete run (no wildcard, no other shape).
    def sign(name: str) -> bytes:
        return hmac.new(SECRET, run_tokens._DOMAIN + name.encode(), hashlib.sha256).digest()

    assert verify_run_token(SECRET, _token(RUN.encode(), sign(RUN))) == RUN  # the construction
    for name in ("experiments/-/runs/def", "experiments/abc/runs/-", "experiments/abc", "x"):
        assert verify_run_token(SECRET, _token(name.encode(), sign(name))) is None
    # Without the domain prefix, a plain HMAC of the name is not a token.
    plain = hmac.new(SECRET, RUN.encode(), hashlib.sha256).digest()
    assert verify_run_token(SECRET, _token(RUN.encode(), plain)) is None


@pytest.mark.parametrize(
    "bad_run",
    ["", "experiments/abc", "experiments/-/runs/def", "experiments/abc/runs/-",
     "experiments/abc/runs/def/x", "experiments/a b/runs/c", "experiments/abc/runs/" + "r" * 65],
)  # fmt: skip
def test_mint_refuses_what_is_not_a_run(bad_run: str) -> None:
    with pytest.raises(ValueError, match="run resource name"):
        mint_run_token(SECRET, bad_run)


def test_mint_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint_run_token(b"", RUN)


def test_names_run_accepts_the_wildcard_spelling_of_the_same_run_only() -> None:
    assert names_run(RUN, RUN)
    assert names_run("experiments/-/runs/def", RUN)
    assert not names_run("experiments/other/runs/def", RUN)
    assert not names_run("experiments/-/runs/xyz", RUN)
    assert not names_run("", RUN)
    assert not names_run(RUN + " ", RUN)


@given(st.text(max_size=300))
def test_verify_never_raises_on_text(text: str) -> None:
    assert verify_run_token(SECRET, text) is None


@given(st.binary(max_size=200), st.binary(max_size=64))
def test_verify_never_raises_on_token_shaped_input(run: bytes, mac: bytes) -> None:
    assert verify_run_token(SECRET, _token(run, mac)) is None


@given(
    st.from_regex(r"[A-Za-z0-9_]{1,64}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_]{1,64}", fullmatch=True),
    st.binary(min_size=1, max_size=64),
)
def test_round_trip_for_any_run_and_secret(experiment: str, run_id: str, secret: bytes) -> None:
    run = f"experiments/{experiment}/runs/{run_id}"
    token = mint_run_token(secret, run)
    assert verify_run_token(secret, token) == run
    assert verify_run_token(secret + b"x", token) is None


def test_secret_from_settings_or_one_random_per_process(tmp_path: Path) -> None:
    configured = load_settings(data_dir=tmp_path, run_token_secret="0123456789abcdef-shared")
    assert run_token_secret(configured) == b"0123456789abcdef-shared"
    unset = load_settings(data_dir=tmp_path)
    assert unset.run_token_secret is None
    assert run_token_secret(unset) == process_run_token_secret()
    assert len(process_run_token_secret()) == 32
    assert run_token_secret(load_settings(data_dir=tmp_path)) == run_token_secret(unset)
    # A token minted with one process's key verifies in that process, not with another key.
    token = mint_run_token(run_token_secret(unset), RUN)
    assert verify_run_token(run_token_secret(unset), token) == RUN
    assert verify_run_token(run_token_secret(configured), token) is None


def test_a_short_configured_secret_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CAIRN_RUN_TOKEN_SECRET"):
        load_settings(data_dir=tmp_path, run_token_secret="short")
