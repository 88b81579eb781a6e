"""Checking the ``Postroom-Signature`` header of a webhook event.

Postroom signs each event as ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
(the body exactly as sent). A signature is good when one of its ``v1`` values matches and
its time is within *tolerance* seconds of now, so a captured event cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from postroom_client.errors import PostroomError

HEADER = "Postroom-Signature"
TOLERANCE = 300.0  # seconds either side of now


class SignatureError(PostroomError):
    """The event is not from Postroom, or too old (or too far ahead) to take."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value Postroom sends for *body* at *timestamp* (for tests of your app)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                      hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(body: bytes, header: str | None, secret: str, *,
                     tolerance: float = TOLERANCE, now: float | None = None) -> int:
    """Raise :class:`SignatureError` unless *header* signs *body* with *secret*, at a time
    within *tolerance* seconds of *now*; return the signed timestamp.

    Pass the raw request body (``request.get_data()``), never re-serialised JSON.
    """
    if not secret:
        raise ValueError("the webhook's secret is needed to verify its events")
    if not header:
        raise SignatureError(f"no {HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"the {HEADER} header is not t=<seconds>,v1=<hex>")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise SignatureError(f"the signature's time is more than {tolerance:g} s from now")
    expected = sign(secret, body, timestamp).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("the signature does not match the body")
    return timestamp
