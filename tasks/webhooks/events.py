"""The events a client app hears about, built where they happen.

:class:`DeliveryEvents` is a delivery recorder (see :mod:`tasks.delivery.observers`): it
turns each recipient's outcome, with the status the ledger set, into
``message.sent|deferred|failed`` or ``otp.sent|failed`` and buffers them; the buffer
goes to Redis in one pipeline at most every :data:`FLUSH_EVERY` seconds and when the
batch ends. Whether any endpoint
is registered is asked once per batch, so delivery pays nothing without webhooks.
The other builders serve bounces, unsubscribes and campaign transitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from tasks.delivery.ledger import RecipientRecord
from tasks.delivery.service import MessageFate
from tasks.vocabulary import MESSAGE_EVENTS, OTP_EVENTS, EventType, Kind, Status
from tasks.webhooks.store import Event, WebhookEndpoints

log = logging.getLogger(__name__)

FLUSH_EVERY = 0.5  # seconds between writes of buffered events during a batch

Emit = Callable[[Redis, list[Event]], None]


def message_event(event_type: str, message_id: str, campaign_id: str | None, email: str,
                  status: str, smtp_code: int | None, error: str | None) -> Event:
    return Event(event_type, {"message_id": message_id, "campaign_id": campaign_id,
                              "email": email, "status": status, "smtp_code": smtp_code,
                              "error": error})


def campaign_message_id(campaign_id: str, index: int) -> str:
    """A campaign recipient's message, named as in its Message-ID (``<campaign>.<n>``)."""
    return f"{campaign_id}.{index}"


def campaign_event(event_type: str, campaign_id: str, counts: dict[str, int]) -> Event:
    return Event(event_type, {"campaign_id": campaign_id, "counts": dict(counts)})


def unsubscribed_event(email: str, campaign_id: str | None) -> Event:
    return Event(EventType.RECIPIENT_UNSUBSCRIBED, {"email": email, "campaign_id": campaign_id})


class DeliveryEvents:
    """An observer that records each recipient's outcome as an event (see the module)."""

    def __init__(self, redis: Redis, kind: str, delivery_id: str, emit: Emit) -> None:
        self.redis = redis
        self.kind = kind
        self.delivery_id = delivery_id
        self.emit = emit
        self.buffer: list[Event] = []
        self.written = time.monotonic()
        try:
            self.enabled = WebhookEndpoints(redis).any()
        except RedisError:  # the batch itself will find Redis gone; no events to add
            self.enabled = False

    def __call__(self, fate: MessageFate, statuses: list[str]) -> None:
        """*statuses*: what the ledger set per recipient (``finish.lua``: a deferral past
        the attempts or the deadline is failed there); where it recorded nothing of this
        run (``lost:<n>``, ``fenced:<n>``), the outcome as it was."""
        if not self.enabled:
            return
        for record, outcome, recorded in zip(fate.recipients, fate.outcomes,
                                             statuses, strict=True):
            status = outcome.status if ":" in recorded else recorded
            event = self._event(record, status, outcome.smtp_code, outcome.error)
            if event is not None:
                self.buffer.append(event)
        if self.buffer and time.monotonic() - self.written >= FLUSH_EVERY:
            self.flush()

    def _event(self, record: RecipientRecord, status: str, smtp_code: int | None,
               error: str | None) -> Event | None:
        if self.kind == Kind.OTP:
            event_type = _announced(OTP_EVENTS, status)
            if event_type is None:
                return None
            shown = Status.SENT if status == Status.SUPPRESSED else status
            # the relay's reply or the reason, never the message (the code is in it)
            return Event(event_type, {"request_id": self.delivery_id, "status": shown,
                                      "error": error if status == Status.FAILED else None})
        event_type = _announced(MESSAGE_EVENTS, status)
        if event_type is None:
            return None
        if self.kind == Kind.CAMPAIGN:
            return message_event(event_type, campaign_message_id(self.delivery_id,
                                                                 record.index),
                                 self.delivery_id, record.email, status, smtp_code, error)
        return message_event(event_type, self.delivery_id, None, record.email, status,
                             smtp_code, error)

    def flush(self) -> None:
        events, self.buffer, self.written = self.buffer, [], time.monotonic()
        if not events:
            return
        try:
            self.emit(self.redis, events)
        except RedisError as err:
            log.warning("%d event(s) of %s %s not recorded: %s", len(events), self.kind,
                        self.delivery_id, err)

    def close(self) -> None:
        self.flush()


def _announced(events: Mapping[Status, EventType], status: str) -> EventType | None:
    """The event a recipient now in *status* announces in *events*, if any."""
    try:
        return events.get(Status(status))
    except ValueError:  # not a recipient status: nothing to announce
        return None


def bounced_event(message_id: str | None, campaign_id: str | None, index: int, email: str,
                  smtp_code: int | None, error: str | None) -> Event:
    """``message.bounced`` for a recipient a bounce or complaint came back for."""
    shown_id = message_id or campaign_message_id(campaign_id or "", index)
    return message_event(EventType.MESSAGE_BOUNCED, shown_id, campaign_id, email, Status.BOUNCED,
                         smtp_code, error)


def campaign_counts(counts: dict[str, Any]) -> dict[str, int]:
    return {str(name): int(value) for name, value in counts.items()}
