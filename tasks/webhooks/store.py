"""Webhook endpoints, the events waiting to be fanned out to them, and each endpoint's
delivery log.

- An endpoint (``postroom:webhook:<id>``, a hash) is a durable record: its URL, the
  event types it takes, its signing secret, when it was made and when a 410 disabled
  it. ``postroom:webhooks`` (a sorted set by creation time) lists them.
- Events are appended as JSON to ``postroom:webhooks:outbox`` (a list) by whoever
  sees them happen, in one pipeline per batch of events; the dispatcher moves each to
  ``postroom:webhook-event:<event id>`` (kept as long as it may be retried) and queues
  one delivery per endpoint that takes its type.
- Every attempt goes into ``postroom:webhook:<id>:deliveries`` (newest first, capped,
  with a TTL).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks.shared.keys import key
from tasks.vocabulary import EventType

EVENT_TYPES = tuple(EventType)
RETRY_FOR = 24 * 3600.0  # seconds an event is retried for
EVENT_KEPT = int(RETRY_FOR) + 3600  # an event's body outlives its last retry
LOG_LENGTH = 500  # attempts kept per endpoint
LOG_KEPT = 7 * 24 * 3600  # seconds the log lives after its last attempt
DISPATCH_FLAG_TTL = 30  # seconds: a dispatcher queued and not yet started

ENDPOINTS = key("webhooks")
OUTBOX = key("webhooks", "outbox")
DISPATCH_PENDING = key("webhooks", "dispatch-pending")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered webhook endpoint."""

    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float
    disabled_at: float | None = None

    def takes(self, event_type: str) -> bool:
        return self.disabled_at is None and event_type in self.events

    def public(self) -> dict[str, Any]:
        """What the API shows after creation: never the secret."""
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "created_at": self.created_at, "disabled": self.disabled_at is not None,
                "disabled_at": self.disabled_at}


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``{"id", "type", "created_at", "data"}`` as the client receives it."""

    type: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    def body(self) -> bytes:
        """The exact bytes POSTed (and signed); the same for every retry."""
        return json.dumps({"id": self.id, "type": self.type, "created_at": self.created_at,
                           "data": self.data}, separators=(",", ":")).encode()

    @classmethod
    def load(cls, raw: bytes | str) -> Event:
        fields = json.loads(raw)
        return cls(type=fields["type"], data=fields["data"], id=fields["id"],
                   created_at=float(fields["created_at"]))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST of one event to one endpoint, as the delivery log keeps it."""

    event_id: str
    event_type: str
    attempt: int
    at: float
    status_code: int | None = None
    error: str | None = None

    def dump(self) -> str:
        return json.dumps({"event_id": self.event_id, "event_type": self.event_type,
                           "attempt": self.attempt, "at": self.at,
                           "status_code": self.status_code, "error": self.error},
                          separators=(",", ":"))


class WebhookEndpoints:
    """The registered endpoints and their delivery logs."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def create(self, url: str, events: Sequence[str]) -> Endpoint:
        endpoint = Endpoint(id=uuid.uuid4().hex, url=url, events=tuple(events),
                            secret=secrets.token_hex(32), created_at=time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key("webhook", endpoint.id), mapping={
            "url": url, "events": json.dumps(list(endpoint.events)),
            "secret": endpoint.secret, "created_at": repr(endpoint.created_at)})
        pipe.zadd(ENDPOINTS, {endpoint.id: endpoint.created_at})
        pipe.execute()
        return endpoint

    def get(self, endpoint_id: str) -> Endpoint | None:
        return _endpoint(endpoint_id, self.redis.hgetall(key("webhook", endpoint_id)))

    def all(self) -> list[Endpoint]:
        ids = [_text(raw) for raw in self.redis.zrange(ENDPOINTS, 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for endpoint_id in ids:
            pipe.hgetall(key("webhook", endpoint_id))
        found = (_endpoint(i, fields) for i, fields in zip(ids, pipe.execute(), strict=True))
        return [endpoint for endpoint in found if endpoint is not None]

    def any(self) -> bool:
        """Whether any endpoint is registered (one cheap call, asked once per batch)."""
        return bool(self.redis.exists(ENDPOINTS))

    def delete(self, endpoint_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(ENDPOINTS, endpoint_id)
        pipe.delete(key("webhook", endpoint_id), key("webhook", endpoint_id, "deliveries"))
        removed, _ = pipe.execute()
        return bool(removed)

    def disable(self, endpoint_id: str) -> None:
        """The receiver answered 410: no further deliveries (the record stays, shown so)."""
        name = key("webhook", endpoint_id)
        if self.redis.exists(name):
            self.redis.hsetnx(name, "disabled_at", repr(time.time()))

    def log(self, endpoint_id: str, attempt: Attempt) -> None:
        name = key("webhook", endpoint_id, "deliveries")
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(name, attempt.dump())
        pipe.ltrim(name, 0, LOG_LENGTH - 1)
        pipe.expire(name, LOG_KEPT)
        pipe.execute()

    def attempts(self, endpoint_id: str, *, cursor: int = 0, limit: int = 50
                 ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the log, newest first, and the cursor of the next page (or None)."""
        name = key("webhook", endpoint_id, "deliveries")
        raw = self.redis.lrange(name, cursor, cursor + limit)
        entries = [json.loads(item) for item in raw[:limit]]
        return entries, (cursor + limit if len(raw) > limit else None)


class EventOutbox:
    """Events waiting for the dispatcher, and the events it has fanned out."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def append(self, events: Iterable[Event]) -> bool:
        """Append *events* in one round trip; ``True`` when no dispatcher is queued yet
        (the caller queues one)."""
        bodies = [event.body() for event in events]
        if not bodies:
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(OUTBOX, *bodies)
        pipe.set(DISPATCH_PENDING, "1", nx=True, ex=DISPATCH_FLAG_TTL)
        _, flagged = pipe.execute()
        return bool(flagged)

    def take(self, limit: int = 500) -> list[Event]:
        """Up to *limit* waiting events, oldest first, off the outbox (the dispatcher's)."""
        raw = self.redis.lpop(OUTBOX, limit) or []
        return [Event.load(item) for item in raw]

    def fanning_out(self) -> None:
        """A dispatcher started: events appended from now on need another one."""
        self.redis.delete(DISPATCH_PENDING)

    def waiting(self) -> int:
        return int(self.redis.llen(OUTBOX))

    def keep(self, event: Event) -> None:
        """Keep *event*'s body for its deliveries and their retries."""
        self.redis.set(key("webhook-event", event.id), event.body(), ex=EVENT_KEPT)

    def get(self, event_id: str) -> Event | None:
        raw = self.redis.get(key("webhook-event", event_id))
        return Event.load(raw) if raw is not None else None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _endpoint(endpoint_id: str, fields: dict[Any, Any]) -> Endpoint | None:
    if not fields:
        return None
    data = {_text(name): _text(value) for name, value in fields.items()}
    disabled = data.get("disabled_at")
    return Endpoint(id=endpoint_id, url=data["url"], events=tuple(json.loads(data["events"])),
                    secret=data["secret"], created_at=float(data["created_at"]),
                    disabled_at=float(disabled) if disabled else None)
