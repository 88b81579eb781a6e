"""The events a client app hears about: DeliveryEvents against a real Redis, and the builders."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any, cast

import pytest
import redis
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.delivery.engine.outcome import DeliveryOutcome
from tasks.delivery.ledger import RecipientRecord
from tasks.delivery.service import MessageFate
from tasks.vocabulary import Status
from tasks.webhooks.events import (
    FLUSH_EVERY,
    DeliveryEvents,
    bounced_event,
    campaign_counts,
    campaign_event,
    campaign_message_id,
    message_event,
    unsubscribed_event,
)
from tasks.webhooks.store import EVENT_TYPES, OUTBOX, Event, EventOutbox, WebhookEndpoints
from web.testing import free_port

CAMPAIGN = "0123456789abcdef0123456789abcdef"


class Emitted:
    """An ``emit`` that appends to the real outbox in Redis, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, client: Redis, events: list[Event]) -> None:
        self.calls += 1
        EventOutbox(client).append(events)


def nothing_listens() -> Redis:
    """A client for a port where no Redis listens, that does not retry."""
    return redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                       retry=Retry(NoBackoff(), 0))


def outbox(client: Redis) -> list[dict[str, Any]]:
    """The events written to the outbox, oldest first, as the dispatcher will read them."""
    return [json.loads(raw) for raw in cast(list[bytes], client.lrange(OUTBOX, 0, -1))]


@pytest.fixture
def endpoint(redis_client: Redis) -> None:
    WebhookEndpoints(redis_client).create("https://hooks.example.com/postroom", EVENT_TYPES)


def as_recorded(fate: MessageFate) -> tuple[MessageFate, list[str]]:
    """*fate* with the statuses a ledger that changed none of them returns."""
    return fate, [outcome.status for outcome in fate.outcomes]


def batch(*fates: tuple[str, DeliveryOutcome], attempts: int = 0) -> MessageFate:
    records = [RecipientRecord(index=n, email=email, attempts=attempts)
               for n, (email, _) in enumerate(fates)]
    return MessageFate(None, None, records, [outcome for _, outcome in fates])


SENT = DeliveryOutcome(Status.SENT, 250)
DEFERRED = DeliveryOutcome(Status.DEFERRED, 451, "4.3.0 try later")
FAILED = DeliveryOutcome(Status.FAILED, 550, "5.1.1 no such user")


@pytest.mark.usefixtures("endpoint")
def test_each_outcome_of_a_message_becomes_its_event(redis_client: Redis) -> None:
    emit = Emitted()
    events = DeliveryEvents(redis_client, "message", "msg-1", emit)
    events(*as_recorded(batch(
        ("ada@example.com", SENT), ("bob@example.com", DEFERRED), ("cy@example.com", FAILED),
        ("dee@example.com", DeliveryOutcome(Status.SUPPRESSED, None, "suppressed")))))
    events.close()
    written = outbox(redis_client)
    assert [e["type"] for e in written] == ["message.sent", "message.deferred",
                                            "message.failed"]  # suppressed: no event
    assert [e["data"] for e in written] == [
        {"message_id": "msg-1", "campaign_id": None, "email": "ada@example.com",
         "status": "sent", "smtp_code": 250, "error": None},
        {"message_id": "msg-1", "campaign_id": None, "email": "bob@example.com",
         "status": "deferred", "smtp_code": 451, "error": "4.3.0 try later"},
        {"message_id": "msg-1", "campaign_id": None, "email": "cy@example.com",
         "status": "failed", "smtp_code": 550, "error": "5.1.1 no such user"}]
    assert len({e["id"] for e in written}) == 3
    assert emit.calls == 1  # one write for the batch


@pytest.mark.usefixtures("endpoint")
def test_a_campaign_recipient_is_named_by_its_message(redis_client: Redis) -> None:
    events = DeliveryEvents(redis_client, "campaign", CAMPAIGN, Emitted())
    events(*as_recorded(MessageFate(None, None, [RecipientRecord(index=7,
                                                                email="ada@example.com")],
                                   [SENT])))
    events.close()
    [written] = outbox(redis_client)
    assert written["data"] == {"message_id": f"{CAMPAIGN}.7", "campaign_id": CAMPAIGN,
                               "email": "ada@example.com", "status": "sent",
                               "smtp_code": 250, "error": None}


@pytest.mark.usefixtures("endpoint")
def test_otp_events_never_carry_the_message_or_the_code(redis_client: Redis) -> None:
    events = DeliveryEvents(redis_client, "otp", "req-1", Emitted())
    events(*as_recorded(batch(
        ("ada@example.com", SENT),
        ("bob@example.com", DeliveryOutcome(Status.SUPPRESSED, None, "suppressed")),
        ("cy@example.com", FAILED),
        ("dee@example.com", DEFERRED))))  # a retry to come: no event
    events.close()
    written = outbox(redis_client)
    assert [(e["type"], e["data"]) for e in written] == [
        ("otp.sent", {"request_id": "req-1", "status": "sent", "error": None}),
        ("otp.sent", {"request_id": "req-1", "status": "sent", "error": None}),
        ("otp.failed", {"request_id": "req-1", "status": "failed",
                        "error": "5.1.1 no such user"})]
    assert all("email" not in e["data"] and "smtp_code" not in e["data"] for e in written)


@pytest.mark.usefixtures("endpoint")
def test_a_deferral_the_ledger_failed_is_announced_as_a_failure(redis_client: Redis) -> None:
    events = DeliveryEvents(redis_client, "message", "msg-1", Emitted())
    events(batch(("ada@example.com", DEFERRED)), ["failed"])  # its last attempt, or too late
    events.close()
    [written] = outbox(redis_client)
    assert (written["type"], written["data"]["status"]) == ("message.failed", "failed")
    assert written["data"]["error"] == "4.3.0 try later"


@pytest.mark.usefixtures("endpoint")
def test_an_otp_whose_last_attempt_is_deferred_is_announced_as_failed(
        redis_client: Redis) -> None:
    events = DeliveryEvents(redis_client, "otp", "req-1", Emitted())
    events(batch(("ada@example.com", DEFERRED), attempts=2), ["failed"])
    events.close()
    assert [(e["type"], e["data"]) for e in outbox(redis_client)] == [
        ("otp.failed", {"request_id": "req-1", "status": "failed", "error": "4.3.0 try later"})]


@pytest.mark.usefixtures("endpoint")
@pytest.mark.parametrize("recorded", ["lost:0", "fenced:0"])
def test_an_outcome_the_ledger_did_not_record_is_announced_as_it_was(
        redis_client: Redis, recorded: str) -> None:
    events = DeliveryEvents(redis_client, "message", "msg-1", Emitted())
    events(batch(("ada@example.com", DEFERRED)), [recorded])
    events.close()
    assert [e["type"] for e in outbox(redis_client)] == ["message.deferred"]


def test_without_endpoints_nothing_is_built_or_written(redis_client: Redis) -> None:
    emit = Emitted()
    events = DeliveryEvents(redis_client, "message", "msg-1", emit)
    assert not events.enabled
    events(*as_recorded(batch(("ada@example.com", SENT))))
    events.close()
    assert events.buffer == []
    assert emit.calls == 0
    assert redis_client.llen(OUTBOX) == 0


def test_whether_endpoints_exist_is_asked_once_per_batch(redis_client: Redis) -> None:
    events = DeliveryEvents(redis_client, "message", "msg-1", Emitted())
    WebhookEndpoints(redis_client).create("https://hooks.example.com/late", EVENT_TYPES)
    events(*as_recorded(batch(("ada@example.com", SENT))))
    events.close()
    assert redis_client.llen(OUTBOX) == 0  # registered after the batch began


@pytest.mark.usefixtures("endpoint")
def test_events_are_buffered_until_flush_every_has_passed(redis_client: Redis) -> None:
    emit = Emitted()
    events = DeliveryEvents(redis_client, "message", "msg-1", emit)
    events.written = time.monotonic()
    events(*as_recorded(batch(("ada@example.com", SENT))))
    assert emit.calls == 0
    assert redis_client.llen(OUTBOX) == 0
    assert len(events.buffer) == 1
    events.written = time.monotonic() - FLUSH_EVERY  # the last write was that long ago
    events(*as_recorded(batch(("bob@example.com", SENT))))
    assert emit.calls == 1
    assert [e["data"]["email"] for e in outbox(redis_client)] == ["ada@example.com",
                                                                  "bob@example.com"]
    assert events.buffer == []
    events.close()
    assert emit.calls == 1  # nothing left to write


@pytest.mark.usefixtures("endpoint")
def test_a_redis_error_on_write_loses_the_events_with_a_warning(
        redis_client: Redis, caplog: pytest.LogCaptureFixture) -> None:
    away = nothing_listens()

    def emit(client: Redis, events: Iterable[Event]) -> None:
        EventOutbox(away).append(events)

    events = DeliveryEvents(redis_client, "message", "msg-1", emit)
    events(*as_recorded(batch(("ada@example.com", SENT), ("bob@example.com", FAILED))))
    with caplog.at_level(logging.WARNING, logger="tasks.webhooks.events"):
        events.close()  # does not raise: the delivery itself is done
    assert events.buffer == []
    [line] = [r.getMessage() for r in caplog.records if r.name == "tasks.webhooks.events"]
    assert line.startswith("2 event(s) of message msg-1 not recorded")
    away.close()


def test_redis_gone_at_the_start_means_no_events() -> None:
    away = nothing_listens()
    emit = Emitted()
    events = DeliveryEvents(away, "message", "msg-1", emit)
    assert not events.enabled
    events(*as_recorded(batch(("ada@example.com", SENT))))
    events.close()
    assert emit.calls == 0
    away.close()


def test_message_event_has_the_designed_fields() -> None:
    event = message_event("message.failed", "m1", None, "ada@example.com", "failed", 550, "no")
    assert event.type == "message.failed"
    assert event.data == {"message_id": "m1", "campaign_id": None, "email": "ada@example.com",
                          "status": "failed", "smtp_code": 550, "error": "no"}
    assert json.loads(event.body())["data"] == event.data


def test_campaign_message_id() -> None:
    assert campaign_message_id(CAMPAIGN, 0) == f"{CAMPAIGN}.0"
    assert campaign_message_id(CAMPAIGN, 12) == f"{CAMPAIGN}.12"


def test_campaign_event_copies_the_counts() -> None:
    counts = {"sent": 3, "failed": 1}
    event = campaign_event("campaign.completed", CAMPAIGN, counts)
    counts["sent"] = 99
    assert event.type == "campaign.completed"
    assert event.data == {"campaign_id": CAMPAIGN, "counts": {"sent": 3, "failed": 1}}


def test_unsubscribed_event() -> None:
    event = unsubscribed_event("ada@example.com", None)
    assert (event.type, event.data) == ("recipient.unsubscribed",
                                        {"email": "ada@example.com", "campaign_id": None})


def test_bounced_event_names_a_campaign_recipient_by_its_message() -> None:
    event = bounced_event(None, CAMPAIGN, 4, "ada@example.com", 550, "5.1.1 user unknown")
    assert event.type == "message.bounced"
    assert event.data == {"message_id": f"{CAMPAIGN}.4", "campaign_id": CAMPAIGN,
                          "email": "ada@example.com", "status": "bounced", "smtp_code": 550,
                          "error": "5.1.1 user unknown"}
    own = bounced_event("m1", None, 0, "bob@example.com", None, None)
    assert own.data["message_id"] == "m1" and own.data["campaign_id"] is None


def test_campaign_counts_are_names_and_integers() -> None:
    assert campaign_counts({"sent": "3", "failed": 0, "queued": 2.0}) == {
        "sent": 3, "failed": 0, "queued": 2}
