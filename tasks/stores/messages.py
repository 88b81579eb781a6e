"""Single messages accepted by the API: what to send, and to whom."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis

from tasks.stores import key
from tasks.stores.ledger import DeliveryLedger, RecipientRecord

RECORD_TTL = 30 * 24 * 3600  # a message and its statuses are kept for 30 days


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

    def create(self, fields: dict[str, Any], recipients: list[str]) -> StoredMessage:
        """Store *fields* and queue every recipient; return the new message."""
        message = StoredMessage(uuid.uuid4().hex, fields, time.time())
        self.redis.set(key("message", message.id),
                       json.dumps({"fields": fields, "created_at": message.created_at}),
                       ex=self.ttl)
        ledger = self.ledger(message.id)
        ledger.add(RecipientRecord(index=0, email=email) for email in recipients)
        ledger.expire(self.ttl)
        return message

    def get(self, message_id: str) -> StoredMessage | None:
        raw = self.redis.get(key("message", message_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return StoredMessage(message_id, data["fields"], data["created_at"])

    def ledger(self, message_id: str) -> DeliveryLedger:
        return DeliveryLedger(self.redis, f"message:{message_id}")
