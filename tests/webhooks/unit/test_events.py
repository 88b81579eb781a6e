"""The events a delivery announces, built without Redis: which status gives which event,
and what each event's payload holds.

``DeliveryEvents`` asks Redis one question (is any endpoint registered?) and hands its
events to the ``emit`` it is given; here :class:`Registered` answers the question and
:class:`Emitted` keeps what would be written. ``tests/webhooks/integration/test_events.py``
runs the same recorder against a real Redis and outbox.
"""

from __future__ import annotations

import logging
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tasks.delivery.engine.outcome import DeliveryOutcome
from tasks.delivery.ledger import RecipientRecord
from tasks.delivery.service import MessageFate
from tasks.vocabulary import MESSAGE_EVENTS, OTP_EVENTS, Status
from tasks.webhooks.events import (
    DeliveryEvents,
    bounced_event,
)
from tasks.webhooks.store import ENDPOINTS, EVENT_TYPES, Event

CAMPAIGN = "0123456789abcdef0123456789abcdef"
OUTCOMES: dict[str, DeliveryOutcome] = {
    "sent": DeliveryOutcome(Status.SENT, 250),
    "deferred": DeliveryOutcome(Status.DEFERRED, 451, "4.3.0 try later"),
    "failed": DeliveryOutcome(Status.FAILED, 550, "5.1.1 no such user"),
    "suppressed": DeliveryOutcome(Status.SUPPRESSED, None, "suppressed"),
}


class Registered:
    """Stands in for Redis where the only question asked is whether an endpoint exists."""

    def __init__(self, answer: bool | RedisError = True) -> None:
        self.answer = answer
        self.asked: list[tuple[str, ...]] = []

    def exists(self, *names: str) -> int:
        self.asked.append(names)
        if isinstance(self.answer, RedisError):
            raise self.answer
        return int(self.answer)


class Emitted:
    """An ``emit`` that keeps each write's events; *failure*, if given, is raised instead."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.writes: list[list[Event]] = []
        self.failure = failure

    def __call__(self, client: object, events: list[Event]) -> None:
        if self.failure is not None:
            raise self.failure
        self.writes.append(list(events))

    @property
    def events(self) -> list[Event]:
        return [event for write in self.writes for event in write]


def announced(kind: str, delivery_id: str, fates: list[tuple[str, str, str]],
              first_index: int = 0) -> list[Event]:
    """The events for one batch: each ``(email, outcome status, status the ledger set)``."""
    emitted = Emitted()
    recorder = DeliveryEvents(Registered(), kind, delivery_id, emitted)
    records = [RecipientRecord(index=first_index + n, email=email)
               for n, (email, _, _) in enumerate(fates)]
    recorder(MessageFate(None, None, records, [OUTCOMES[status] for _, status, _ in fates]),
             [recorded for _, _, recorded in fates])
    recorder.close()
    return emitted.events


# -- which status gives which event


@pytest.mark.parametrize(("kind", "status", "event_type"), [
    ("message", "sent", "message.sent"),
    ("message", "deferred", "message.deferred"),
    ("message", "failed", "message.failed"),
    ("message", "suppressed", None),
    ("message", "queued", None),
    ("campaign", "sent", "message.sent"),
    ("campaign", "deferred", "message.deferred"),
    ("campaign", "failed", "message.failed"),
    ("campaign", "suppressed", None),
    ("otp", "sent", "otp.sent"),
    ("otp", "suppressed", "otp.sent"),  # the requester is not told who is suppressed
    ("otp", "failed", "otp.failed"),
    ("otp", "deferred", None),  # another attempt comes
    ("otp", "queued", None),
])
def test_the_status_the_ledger_set_names_the_event(kind: str, status: str,
                                                   event_type: str | None) -> None:
    events = announced(kind, "d1", [("ada@example.com", "deferred", status)])
    assert [e.type for e in events] == ([] if event_type is None else [event_type])


def test_every_event_type_a_delivery_announces_is_one_endpoints_may_ask_for() -> None:
    assert set(MESSAGE_EVENTS.values()) | set(OTP_EVENTS.values()) <= set(EVENT_TYPES)


@pytest.mark.parametrize("recorded", ["lost:0", "fenced:3"])
@pytest.mark.parametrize(("outcome", "event_type"), [
    ("sent", "message.sent"), ("deferred", "message.deferred"), ("failed", "message.failed"),
    ("suppressed", None),
])
def test_where_the_ledger_recorded_nothing_the_outcome_names_the_event(
        recorded: str, outcome: str, event_type: str | None) -> None:
    events = announced("message", "m1", [("ada@example.com", outcome, recorded)])
    assert [e.type for e in events] == ([] if event_type is None else [event_type])


def test_each_recipient_is_announced_in_order_by_its_own_status() -> None:
    events = announced("message", "m1", [("ada@example.com", "sent", "sent"),
                                         ("bob@example.com", "deferred", "failed"),
                                         ("cy@example.com", "suppressed", "suppressed"),
                                         ("dee@example.com", "deferred", "deferred")])
    assert [(e.type, e.data["email"]) for e in events] == [
        ("message.sent", "ada@example.com"), ("message.failed", "bob@example.com"),
        ("message.deferred", "dee@example.com")]
    assert len({e.id for e in events}) == 3


# -- what each payload holds


def test_a_message_event_carries_the_status_set_and_the_relays_reply() -> None:
    [event] = announced("message", "m1", [("ada@example.com", "deferred", "failed")])
    assert event.data == {"message_id": "m1", "campaign_id": None, "email": "ada@example.com",
                          "status": "failed", "smtp_code": 451, "error": "4.3.0 try later"}


def test_a_campaign_event_names_the_recipients_own_message() -> None:
    [event] = announced("campaign", CAMPAIGN, [("ada@example.com", "failed", "failed")],
                        first_index=41)
    assert event.data == {"message_id": f"{CAMPAIGN}.41", "campaign_id": CAMPAIGN,
                          "email": "ada@example.com", "status": "failed", "smtp_code": 550,
                          "error": "5.1.1 no such user"}


@pytest.mark.parametrize(("outcome", "recorded", "data"), [
    ("sent", "sent", {"request_id": "r1", "status": "sent", "error": None}),
    ("suppressed", "suppressed", {"request_id": "r1", "status": "sent", "error": None}),
    ("failed", "failed", {"request_id": "r1", "status": "failed",
                          "error": "5.1.1 no such user"}),
    ("deferred", "failed", {"request_id": "r1", "status": "failed",
                            "error": "4.3.0 try later"}),  # its last attempt
])
def test_an_otp_event_names_the_request_never_the_address_or_the_code(
        outcome: str, recorded: str, data: dict[str, str | None]) -> None:
    [event] = announced("otp", "r1", [("ada@example.com", outcome, recorded)])
    assert event.data == data


def test_a_bounce_names_the_message_it_was_given_before_the_campaigns() -> None:
    event = bounced_event("m1", CAMPAIGN, 4, "ada@example.com", 550, "5.1.1 user unknown")
    assert event.type == "message.bounced"
    assert (event.data["message_id"], event.data["campaign_id"]) == ("m1", CAMPAIGN)
    assert event.data["status"] == "bounced"


# -- the recorder's bookkeeping


def test_statuses_must_match_the_recipients_one_for_one() -> None:
    recorder = DeliveryEvents(Registered(), "message", "m1", Emitted())
    fate = MessageFate(None, None, [RecipientRecord(index=0, email="ada@example.com")],
                            [OUTCOMES["sent"]])
    with pytest.raises(ValueError):
        recorder(fate, [])


def test_the_endpoints_question_is_asked_once_and_a_no_builds_nothing() -> None:
    redis, emitted = Registered(False), Emitted()
    recorder = DeliveryEvents(redis, "message", "m1", emitted)
    fate = MessageFate(None, None, [RecipientRecord(index=0, email="ada@example.com")],
                            [OUTCOMES["sent"]])
    recorder(fate, ["sent"])
    recorder(fate, ["sent"])
    recorder.close()
    assert redis.asked == [(ENDPOINTS,)]
    assert (recorder.enabled, recorder.buffer, emitted.writes) == (False, [], [])


def test_redis_gone_at_the_start_disables_the_recorder() -> None:
    recorder = DeliveryEvents(Registered(RedisConnectionError("gone")), "message", "m1",
                              Emitted())
    assert not recorder.enabled


def test_events_go_in_one_write_when_the_batch_ends() -> None:
    emitted = Emitted()
    recorder = DeliveryEvents(Registered(), "message", "m1", emitted)
    recorder.written = time.monotonic()  # as if just written: nothing is due yet
    records = [RecipientRecord(index=n, email=f"r{n}@example.com") for n in range(3)]
    recorder(MessageFate(None, None, records, [OUTCOMES["sent"]] * 3), ["sent"] * 3)
    assert emitted.writes == []  # within FLUSH_EVERY of the last write
    recorder.close()
    recorder.close()
    assert [len(write) for write in emitted.writes] == [3]


def test_a_redis_error_on_write_drops_the_events_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    recorder = DeliveryEvents(Registered(), "campaign", CAMPAIGN,
                              Emitted(RedisConnectionError("gone")))
    records = [RecipientRecord(index=n, email=f"r{n}@example.com") for n in range(2)]
    recorder(MessageFate(None, None, records, [OUTCOMES["sent"]] * 2), ["sent"] * 2)
    with caplog.at_level(logging.WARNING, logger="tasks.webhooks.events"):
        recorder.close()
    assert recorder.buffer == []
    assert [r.getMessage() for r in caplog.records] == [
        f"2 event(s) of campaign {CAMPAIGN} not recorded: gone"]


def test_an_error_that_is_not_redis_s_is_not_swallowed() -> None:
    recorder = DeliveryEvents(Registered(), "message", "m1", Emitted(TypeError("a bug")))
    recorder(MessageFate(None, None, [RecipientRecord(index=0, email="ada@example.com")],
                        [OUTCOMES["sent"]]), ["sent"])
    with pytest.raises(TypeError, match="a bug"):
        recorder.close()
