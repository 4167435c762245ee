"""Page sizes and opaque, signed keyset page tokens.

A token carries the sort-key values of the last row served (keyset pagination: no OFFSET,
stable under concurrent inserts) and a fingerprint of the query it belongs to, signed with
HMAC so clients cannot forge positions or reuse a token with a different filter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def coerce_page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """AIP-158: unset means the default, too large means the maximum, negative is an error."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if requested == 0:
        return default
    return min(requested, maximum)


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"f": repr(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "t" in value:
            return datetime.fromisoformat(value["t"])
        if "f" in value:
            return float(value["f"])
    return value


class PageTokenCodec:
    def __init__(self, secret: str | bytes | None = None) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        self._key = secret.encode() if isinstance(secret, str) else secret

    @staticmethod
    def fingerprint(*parts: object) -> str:
        """A short digest of everything that defines a query's result order and content."""
        digest = hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def encode(self, position: Sequence[Any], query: str) -> str:
        body = json.dumps(
            {"p": [_encode_value(v) for v in position], "q": query}, separators=(",", ":")
        ).encode()
        signature = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(body + signature).decode().rstrip("=")

    def decode(self, token: str, query: str) -> list[Any]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _bad_token() from None
        body, signature = raw[:-16], raw[-16:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        if len(raw) <= 16 or not hmac.compare_digest(signature, expected):
            raise _bad_token()
        payload = json.loads(body)
        if payload.get("q") != query:
            raise InvalidArgument(
                "page_token belongs to a different query: keep filter, order_by and the other "
                "arguments unchanged while paging",
                field="page_token",
                reason="PAGE_TOKEN_MISMATCH",
            )
        return [_decode_value(v) for v in payload["p"]]


def _bad_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not valid: pass back the next_page_token of the previous response",
        field="page_token",
        reason="INVALID_PAGE_TOKEN",
    )
