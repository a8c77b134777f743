"""Signing deliveries the Standard Webhooks way (https://www.standardwebhooks.com/).

Headers: `webhook-id` (the delivery id, the same on every retry: receivers drop duplicates by
it), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
(`v1,<base64 of HMAC-SHA256(key, f"{id}.{timestamp}.{raw body}")>`). The key is the
subscription secret `whsec_<base64 of 32 random bytes>` decoded. Receivers refuse a timestamp
more than REPLAY_WINDOW_S away from their clock (replays).

Hand-written (about 30 lines of hmac/base64) rather than the `standardwebhooks` package: the
package is a generated API client (attrs, python-dateutil, Deprecated) for these few lines;
tests check our signatures against the scheme's published test vector.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

PREFIX = "whsec_"
REPLAY_WINDOW_S = 300


class SignatureError(ValueError):
    """The signature, timestamp or secret is missing, malformed, stale or wrong."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise SignatureError("secret: not whsec_<base64>") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body)}


def verify(secret: str, hdrs: dict[str, str], body: bytes, now: float | None = None,
           window_s: int = REPLAY_WINDOW_S) -> None:
    """What a receiver runs (docs/webhooks.md has the same in ten lines). Raises
    SignatureError; returns None when the delivery is authentic and fresh."""
    low = {k.lower(): v for k, v in hdrs.items()}
    try:
        msg_id, ts = low["webhook-id"], int(low["webhook-timestamp"])
        given = low["webhook-signature"].split()
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed webhook-* headers") from None
    if abs((time.time() if now is None else now) - ts) > window_s:
        raise SignatureError("timestamp outside the replay window")
    expected = sign(secret, msg_id, ts, body)
    if not any(hmac.compare_digest(expected, g) for g in given):
        raise SignatureError("signature mismatch")
