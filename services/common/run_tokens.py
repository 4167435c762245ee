"""Run tokens: bearer credentials that may write one tracker run and nothing else.

The scheduler mints one per job (`mint_run_token`) and hands it to the job's trainer, which
reports metrics through the gateway with `Authorization: Bearer <token>`. The tracker's
AuthInterceptor (services.common.interceptors) verifies it (`verify_run_token`) and lets it
call only the run-writing RPCs of the run it names (and GetRun of that run).

A token is `cairn-run.<run>.<mac>`: the run's resource name and HMAC-SHA256 over a
domain-separation prefix plus that name, both unpadded urlsafe base64 (so no dots inside).
Tokens do not expire; they are as long-lived as the secret. The secret is
CAIRN_RUN_TOKEN_SECRET; unset, every process makes a random one, which is enough for the
embedded default (one process mints and verifies) but not for separate processes: the
scheduler and the tracker must then share one secret, or the tracker rejects every token.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets

from services.common.settings import Settings

TOKEN_PREFIX = "cairn-run"
# Signed with every run name, so a MAC made for anything else with the same key (a page
# token, a future token kind) can never pass as a run token, and the reverse.
_DOMAIN = b"cairn.dev/run-token/v1\x00"
_MAC_LENGTH = hashlib.sha256().digest_size
# Far above any real token (ids are at most 64 characters): nothing bigger is decoded.
MAX_TOKEN_LENGTH = 1024
_ID = r"[A-Za-z0-9_\-]{1,64}"
_RUN_NAME = re.compile(rf"experiments/({_ID})/runs/({_ID})")
WILDCARD = "-"
_B64 = re.compile(r"[A-Za-z0-9_\-]*")


def is_run_name(name: str) -> bool:
    """True for a concrete run resource name, experiments/{e}/runs/{r} (no "-" wildcard)."""
    match = _RUN_NAME.fullmatch(name)
    return match is not None and WILDCARD not in match.groups()


def names_run(requested: str, run: str) -> bool:
    """Whether a request's run name means `run`: the same name, or experiments/-/runs/{r}
    with the same run id (run ids are unique across experiments)."""
    if requested == run:
        return True
    match = _RUN_NAME.fullmatch(run)
    return match is not None and requested == f"experiments/{WILDCARD}/runs/{match.group(2)}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    """Strict inverse of _b64: None unless `text` is exactly what _b64 makes of something."""
    if _B64.fullmatch(text) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None  # no second spelling of the same bytes


def _mac(secret: bytes, run: str) -> bytes:
    return hmac.new(secret, _DOMAIN + run.encode("utf-8"), hashlib.sha256).digest()


def mint_run_token(secret: bytes, run: str) -> str:
    """A token that may write `run` (experiments/{e}/runs/{r}) and nothing else."""
    if not secret:
        raise ValueError("a run token secret must not be empty")
    if not is_run_name(run):
        raise ValueError(f"not a run resource name (experiments/{{e}}/runs/{{r}}): {run!r}")
    return f"{TOKEN_PREFIX}.{_b64(run.encode('utf-8'))}.{_b64(_mac(secret, run))}"


def verify_run_token(secret: bytes, token: str) -> str | None:
    """The run a genuine token may write, or None for anything else; never raises."""
    if not secret or not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    prefix, _, rest = token.partition(".")
    encoded_run, _, encoded_mac = rest.partition(".")
    if prefix != TOKEN_PREFIX:
        return None
    raw_run, supplied = _unb64(encoded_run), _unb64(encoded_mac)
    if raw_run is None or supplied is None or len(supplied) != _MAC_LENGTH:
        return None
    try:
        run = raw_run.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not hmac.compare_digest(supplied, _mac(secret, run)) or not is_run_name(run):
        return None
    return run


@functools.cache
def process_run_token_secret() -> bytes:
    """This process's random key, made once: what run tokens use without a configured one."""
    return secrets.token_bytes(32)


def run_token_secret(settings: Settings) -> bytes:
    """The key run tokens are minted and verified with: CAIRN_RUN_TOKEN_SECRET, or unset, one
    random key for this process (shared by every service the process runs)."""
    if settings.run_token_secret:
        return settings.run_token_secret.encode("utf-8")
    return process_run_token_secret()
