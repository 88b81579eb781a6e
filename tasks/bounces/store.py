"""The suppression list: addresses that unsubscribed, bounced, complained or were added by
hand. Every campaign message honours it; a bounce, a complaint or an operator's entry also
stops API messages and one-time codes (by kind: :mod:`tasks.bounces.policy`).

It is a durable record (a Redis set, and a hash of each address's reason and time; no
TTL). Unsubscribe links carry a token signed with ``SECRET_KEY`` (itsdangerous), so nobody
can unsubscribe someone else.
"""

from __future__ import annotations

import hmac
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_encode, want_bytes
from itsdangerous.signer import HMACAlgorithm
from redis import Redis

from tasks.shared.keys import key
from tasks.vocabulary import SuppressionReason

SALT = "postroom.unsubscribe"


def normalise(address: str) -> str:
    """The form addresses are compared in: trimmed and lower-cased."""
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid unsubscribe token says."""

    email: str
    campaign_id: str


def unsubscribe_token(secret_key: str, email: str, campaign_id: str) -> str:
    """A URL-safe token naming *email* and the campaign it came from."""
    return UnsubscribeTokens(secret_key).token(email, campaign_id)


class UnsubscribeTokens:
    """Signs unsubscribe tokens with one key (built once, used for a whole batch).

    The tokens are itsdangerous's ``URLSafeSerializer(secret_key, salt=SALT).dumps``,
    byte for byte, but the signer, its derived key and the keyed HMAC are made once
    here instead of once per token: each token copies the keyed HMAC and adds its
    payload.
    """

    def __init__(self, secret_key: str) -> None:
        self.serializer = URLSafeSerializer(secret_key, salt=SALT)
        signer = self.serializer.make_signer()
        self._sep = want_bytes(signer.sep)
        self._mac: Any = None
        if isinstance(signer.algorithm, HMACAlgorithm):
            self._mac = hmac.new(signer.derive_key(), digestmod=signer.algorithm.digest_method)
        self._signer = signer

    def token(self, email: str, campaign_id: str) -> str:
        payload = _payload([normalise(email), campaign_id])
        if self._mac is None:  # another algorithm: let itsdangerous sign it
            return self._signer.sign(payload).decode()
        mac = self._mac.copy()
        mac.update(payload)
        return (payload + self._sep + base64_encode(mac.digest())).decode()


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _payload(value: list[str]) -> bytes:
    """``URLSafeSerializer.dump_payload``: compact JSON, zlib-compressed (with a leading
    ``.``) only when that is shorter, base64url; with one JSON encoder for every token."""
    raw = _COMPACT_JSON.encode(value).encode()
    compressed = zlib.compress(raw)
    if len(compressed) < len(raw) - 1:
        return b"." + base64_encode(compressed)
    return base64_encode(raw)


def read_unsubscribe_token(secret_key: str, token: str) -> Unsubscribe | None:
    """The token's contents, or ``None`` when it was not signed with *secret_key*."""
    try:
        email, campaign_id = URLSafeSerializer(secret_key, salt=SALT).loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    if not isinstance(email, str) or not isinstance(campaign_id, str):
        return None
    return Unsubscribe(email, campaign_id)


REASONS = tuple(SuppressionReason)
LISTED = "on the suppression list"  # the error a barred recipient is recorded with


def listed_error(reason: str) -> str:
    """What a recipient barred for *reason* is recorded with: ``on the suppression list
    (bounced)``."""
    return f"{LISTED} ({reason})"


@dataclass(frozen=True, slots=True)
class Suppression:
    """One address on the list: why, since when, and the campaign it came from."""

    email: str
    reason: str
    created_at: float | None  # None: suppressed before times were kept
    campaign_id: str | None = None

    def public(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"email": self.email, "reason": self.reason,
                                 "created_at": self.created_at}
        if self.campaign_id:
            shown["campaign_id"] = self.campaign_id
        return shown


class SuppressionList:
    """Addresses that must not receive campaign mail.

    Membership is one Redis set of normalised addresses (what every send checks,
    one round trip for a whole claim); why and when each address was added is
    kept beside it in a hash.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.key = key("suppression")
        self.details_key = key("suppression", "details")

    def add(self, email: str, reason: str = SuppressionReason.UNSUBSCRIBED, *,
            campaign_id: str | None = None) -> bool:
        """Suppress *email*; ``True`` if it was not suppressed before (its reason is kept
        from the first time)."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
        address = normalise(email)
        details = {"reason": reason, "at": time.time()}
        if campaign_id:
            details["campaign_id"] = campaign_id
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self.key, address)
        pipe.hsetnx(self.details_key, address, json.dumps(details))
        added, _ = pipe.execute()
        return bool(added)

    def put(self, email: str, reason: str) -> tuple[Suppression, bool]:
        """Suppress *email* for *reason* (replacing the reason it had); ``(entry, created)``."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
        address = normalise(email)
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self.key, address)
        pipe.hset(self.details_key, address, json.dumps({"reason": reason, "at": time.time()}))
        added, _ = pipe.execute()
        found = self.get(address)
        assert found is not None
        return found, bool(added)

    def remove(self, email: str) -> bool:
        address = normalise(email)
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.key, address)
        pipe.hdel(self.details_key, address)
        removed, _ = pipe.execute()
        return bool(removed)

    def __contains__(self, email: str) -> bool:
        return bool(self.redis.sismember(self.key, normalise(email)))

    def which(self, emails: Sequence[str]) -> list[bool]:
        """For each address, whether it is suppressed (one round trip)."""
        if not emails:
            return []
        found = self.redis.smismember(self.key, [normalise(e) for e in emails])
        return [bool(flag) for flag in found]

    def reasons(self, emails: Sequence[str]) -> list[str | None]:
        """For each address, why it is suppressed, or ``None`` (one round trip)."""
        if not emails:
            return []
        addresses = [normalise(e) for e in emails]
        flags = self.redis.smismember(self.key, addresses)
        listed = [address for address, flag in zip(addresses, flags, strict=True) if flag]
        if not listed:
            return [None] * len(addresses)
        why = {address: (json.loads(raw)["reason"] if raw else SuppressionReason.UNSUBSCRIBED)
               for address, raw in zip(listed, self.redis.hmget(self.details_key, listed),
                                       strict=True)}
        return [why.get(address) for address in addresses]

    def get(self, email: str) -> Suppression | None:
        address = normalise(email)
        if not self.redis.sismember(self.key, address):
            return None
        return self._entries([address])[0]

    def page(self, *, cursor: int = 0, limit: int = 100,
             contains: str | None = None) -> tuple[list[Suppression], int | None]:
        """A page of the list (in no particular order) and the cursor of the next, if any;
        *contains* keeps only addresses with that text in them."""
        match = f"*{_glob_escape(normalise(contains))}*" if contains else None
        next_cursor, members = self.redis.sscan(self.key, cursor, match=match, count=limit)
        addresses = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        return self._entries(addresses), (int(next_cursor) or None)

    def _entries(self, addresses: list[str]) -> list[Suppression]:
        if not addresses:
            return []
        raws = self.redis.hmget(self.details_key, addresses)
        entries = []
        for address, raw in zip(addresses, raws, strict=True):
            details: dict[str, Any] = (json.loads(raw) if raw
                                       else {"reason": SuppressionReason.UNSUBSCRIBED,
                                             "at": None})
            entries.append(Suppression(address, details["reason"], details.get("at"),
                                       details.get("campaign_id")))
        return entries

    def __len__(self) -> int:
        return int(self.redis.scard(self.key))


def _glob_escape(text: str) -> str:
    """*text* matched literally by a Redis ``MATCH`` pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
