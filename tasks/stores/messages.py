"""Single messages accepted by the API: what to send, and to whom."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis

from tasks.stores import key
from tasks.stores.ledger import DeliveryLedger, RecipientRecord
from tasks.stores.watch import WATCH_AFTER, Watchlist

RECORD_TTL = 30 * 24 * 3600  # a message and its statuses are kept for 30 days
IDEMPOTENCY_TTL = 24 * 3600  # how long an Idempotency-Key stands for its first message

# Remember the key's first message unless it is taken; return what it holds if it is.
_REMEMBER = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before, for a different request."""

    def __init__(self, message_id: str) -> None:
        super().__init__("the Idempotency-Key was used with a different request")
        self.message_id = message_id


def fingerprint(fields: dict[str, Any]) -> str:
    """A digest of a request's validated fields (attachments by their digests)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as accepted: its fields (no attachment bytes) and its id."""

    id: str
    fields: dict[str, Any]
    created_at: float


def message_status(counts: dict[str, int]) -> str:
    """The message's status, derived from its recipients' counts."""
    total = sum(counts.values())
    done = counts["sent"] + counts["failed"] + counts["suppressed"] + counts["cancelled"]
    if total == 0 or done < total:
        return "sending" if counts["sending"] or counts["sent"] or counts["failed"] else "queued"
    delivered = counts["sent"] + counts["suppressed"]
    if delivered == total:
        return "sent"
    return "failed" if delivered == 0 else "partial"


class MessageStore:
    """Messages by id, with a delivery ledger per message."""

    def __init__(self, redis: Redis, *, ttl: int = RECORD_TTL) -> None:
        self.redis = redis
        self.ttl = ttl

    def create_once(self, idempotency_key: str, fields: dict[str, Any],
                    recipients: list[str]) -> tuple[StoredMessage, bool]:
        """:meth:`create`, unless *idempotency_key* already stands for a message.

        Returns ``(message, created)``. The same key with other *fields* within
        :data:`IDEMPOTENCY_TTL` raises :class:`IdempotencyConflict`. The key
        should already be scoped to the client (e.g. hashed with its token).
        """
        digest = fingerprint(fields)
        message_id = uuid.uuid4().hex
        name = key("idempotency", hashlib.sha256(idempotency_key.encode()).hexdigest())
        held = self.redis.eval(_REMEMBER, 1, name, f"{digest}:{message_id}", IDEMPOTENCY_TTL)
        if held:
            held_digest, _, held_id = (held.decode() if isinstance(held, bytes)
                                       else str(held)).partition(":")
            if held_digest != digest:
                raise IdempotencyConflict(held_id)
            return self.get(held_id) or StoredMessage(held_id, fields, time.time()), False
        return self.create(fields, recipients, message_id=message_id), True

    def create(self, fields: dict[str, Any], recipients: list[str], *,
               message_id: str | None = None) -> StoredMessage:
        """Store *fields* and queue every recipient; return the new message."""
        message = StoredMessage(message_id or uuid.uuid4().hex, fields, time.time())
        self.redis.set(key("message", message.id),
                       json.dumps({"fields": fields, "created_at": message.created_at}),
                       ex=self.ttl)
        ledger = self.ledger(message.id)
        ledger.add(RecipientRecord(index=0, email=email) for email in recipients)
        ledger.expire(self.ttl)
        Watchlist(self.redis).expect("message", message.id, message.created_at + WATCH_AFTER)
        return message

    def get(self, message_id: str) -> StoredMessage | None:
        raw = self.redis.get(key("message", message_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return StoredMessage(message_id, data["fields"], data["created_at"])

    def ledger(self, message_id: str) -> DeliveryLedger:
        return DeliveryLedger(self.redis, f"message:{message_id}")
