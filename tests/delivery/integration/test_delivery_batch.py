"""run_batch with the ledger on a real Redis and a real SMTP server; retry policy."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tasks.delivery.engine.compose import Attachment, Composer, Draft
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.ledger import DeliveryLedger, RecipientRecord
from tasks.delivery.service import (
    BatchOptions,
    BatchReport,
    Outgoing,
    RetryPolicy,
    retry_countdown,
    run_batch,
)
from tasks.messages.store import MessageStore
from tasks.messages.tasks import deliver_each
from tests.conftest import AUTH
from tests.support.smtp_server import DROP, SMTPTestServer

SENDER = "Postroom <noreply@postroom.test>"


def ledger_of(redis_client: redis.Redis, n: int) -> DeliveryLedger:
    ledger = DeliveryLedger(redis_client, "batch-test")
    ledger.add(RecipientRecord(index=0, email=f"r{i}@example.com", vars={"name": f"R{i}"})
               for i in range(n))
    return ledger


def personal(claimed: list[RecipientRecord]) -> Draft:
    [r] = claimed
    return Draft(sender=SENDER, to=[r.email], subject=f"Hello {r.vars['name']}",
                 text=f"Dear {r.vars['name']},\nhere it is.")


def run(ledger: DeliveryLedger, n: int, smtp: SMTPTestServer, *, composer: Composer | None = None,
        draft: Any = personal, max_attempts: int = 3, **settings: Any) -> BatchReport:
    options = {"server": "127.0.0.1", "port": smtp.port, "timeout": 5.0, **settings}
    with BatchConnection(SMTPSettings(**options)) as connection:
        return run_batch(ledger, [Outgoing([i], draft) for i in range(n)], connection,
                         composer or Composer(),
                         BatchOptions(token="t1", policy=RetryPolicy(max_attempts=max_attempts)))


@pytest.mark.parametrize("pipelining", [False, True])
def test_batch_sends_everyone_in_ceil_n_over_max_sessions(redis_client: redis.Redis,
                                                          smtp_server: SMTPTestServer,
                                                          pipelining: bool) -> None:
    smtp_server.handler.pipelining = pipelining
    ledger = ledger_of(redis_client, 25)
    report = run(ledger, 25, smtp_server, max_emails=10)
    assert report.counts == {"sent": 25}
    assert ledger.counts()["sent"] == 25
    assert smtp_server.session_count == 3
    assert {r.message["Subject"] for r in smtp_server.received} == {
        f"Hello R{i}" for i in range(25)}


def test_a_batch_run_twice_sends_nothing_twice(redis_client: redis.Redis,
                                               smtp_server: SMTPTestServer) -> None:
    ledger = ledger_of(redis_client, 10)
    run(ledger, 10, smtp_server)
    again = run(ledger, 10, smtp_server)
    assert again.counts == {}
    assert len(smtp_server.received) == 10
    assert smtp_server.session_count == 1  # the second run opened no session at all


def test_refused_recipient_fails_alone_and_the_batch_goes_on(redis_client: redis.Redis,
                                                             smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = (
        lambda a: "550 5.1.1 unknown" if a == "r3@example.com" else None)
    ledger = ledger_of(redis_client, 6)
    report = run(ledger, 6, smtp_server)
    assert report.counts == {"sent": 5, "failed": 1}
    [r3] = ledger.get([3])
    assert (r3.status, r3.smtp_code, r3.error) == ("failed", 550, "5.1.1 unknown")


def test_lost_connection_defers_one_and_the_rest_use_a_new_one(redis_client: redis.Redis,
                                                               smtp_server: SMTPTestServer
                                                               ) -> None:
    drops = iter([None, None, DROP])
    smtp_server.handler.data_reply = lambda envelope: next(drops, None)
    ledger = ledger_of(redis_client, 8)
    report = run(ledger, 8, smtp_server)
    assert report.counts == {"sent": 7, "deferred": 1}
    assert [r.status for r in ledger.get(list(range(8)))] == [
        "sent", "sent", "deferred", "sent", "sent", "sent", "sent", "sent"]
    assert smtp_server.session_count == 2
    retry = run(ledger, 8, smtp_server)  # a retry touches only the deferred recipient
    assert retry.counts == {"sent": 1}
    assert [r.attempts for r in ledger.get(list(range(8)))] == [1, 1, 2, 1, 1, 1, 1, 1]


def test_deferred_past_the_attempt_limit_is_failed(redis_client: redis.Redis,
                                                   smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = lambda address: "451 4.7.1 greylisted"
    ledger = ledger_of(redis_client, 1)
    statuses = [run(ledger, 1, smtp_server, max_attempts=3).counts for _ in range(4)]
    assert statuses == [{"deferred": 1}, {"deferred": 1}, {"failed": 1}, {}]
    [record] = ledger.get([0])
    assert record.error == "retries exhausted after 3 attempts: 4.7.1 greylisted"


def test_what_is_recorded_is_told_with_the_status_the_ledger_set(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = lambda address: "451 4.7.1 greylisted"
    ledger = ledger_of(redis_client, 1)
    told: list[tuple[str, list[str]]] = []
    options = BatchOptions(token="t1", policy=RetryPolicy(max_attempts=1),
                           recorded=lambda fate, statuses: told.append(
                               (fate.outcomes[0].status, statuses)))
    settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5.0)
    with BatchConnection(settings) as connection:
        run_batch(ledger, [Outgoing([0], personal)], connection, Composer(), options)
    assert told == [("deferred", ["failed"])]  # the relay deferred it; its last attempt


def test_each_attachment_is_encoded_once_for_the_whole_batch(redis_client: redis.Redis,
                                                             smtp_server: SMTPTestServer) -> None:
    report_pdf = Attachment("report.pdf", "application/pdf", b"%PDF" + bytes(200_000))

    def with_attachment(claimed: list[RecipientRecord]) -> Draft:
        [r] = claimed
        return Draft(sender=SENDER, to=[r.email], subject="Report", text=f"For {r.email}",
                     attachments=[Attachment(report_pdf.filename, report_pdf.content_type,
                                             report_pdf.data)])

    composer = Composer()
    ledger = ledger_of(redis_client, 30)
    run(ledger, 30, smtp_server, composer=composer, draft=with_attachment)
    assert composer.encodings == 1
    assert len(smtp_server.received) == 30
    assert all([a.get_payload(decode=True) for a in r.message.iter_attachments()]
               == [report_pdf.data] for r in smtp_server.received)


def test_suppressed_batch_is_built_and_recorded_but_not_sent(redis_client: redis.Redis,
                                                             smtp_server: SMTPTestServer) -> None:
    def sometimes_broken(claimed: list[RecipientRecord]) -> Draft:
        [r] = claimed
        if r.index == 1:
            raise InvalidMessageError("template error")
        return Draft(sender=SENDER, to=[r.email], subject="x\r\nBcc: evil@example.com"
                     if r.index == 2 else "fine", text="x")

    ledger = ledger_of(redis_client, 4)
    report = run(ledger, 4, smtp_server, draft=sometimes_broken, suppress=True)
    assert report.counts == {"suppressed": 2, "failed": 2}
    assert [r.status for r in ledger.get([0, 1, 2, 3])] == [
        "suppressed", "failed", "failed", "suppressed"]
    assert smtp_server.session_count == 0


@pytest.mark.parametrize("config_overrides", [{"MAIL_DEBUG": True}])
def test_mail_debug_shows_the_smtp_dialogue(client: FlaskClient, smtp_server: SMTPTestServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.delivery.engine.smtp_auth"):
        client.post("/api/messages", json={"to": "a@example.com", "subject": "x", "body": "x"},
                    headers=AUTH)
    assert "ehlo" in caplog.text.lower()  # logged (credentials redacted), not printed
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize("config_overrides", [{"MAIL_SUPPRESS_SEND": True}])
def test_suppressed_message_through_the_api(client: FlaskClient,
                                            smtp_server: SMTPTestServer) -> None:
    accepted = client.post("/api/messages", headers=AUTH,
                           json={"to": "a@example.com", "subject": "x", "body": "x"}).get_json()
    status = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert status["recipients"][0]["status"] == "suppressed"
    assert status["status"] == "sent"
    assert smtp_server.session_count == 0


@pytest.mark.parametrize("config_overrides", [{"DELIVERY_MAX_ATTEMPTS": 3}])
def test_message_retries_only_deferred_recipients_then_fails_them(
        app: Flask, client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = (
        lambda a: "452 4.2.2 mailbox full" if a.startswith("full") else None)
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "full@example.com"], "subject": "x", "body": "x"}).get_json()
    status = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert [(r["email"], r["status"], r["attempts"]) for r in status["recipients"]] == [
        ("ada@example.com", "sent", 1), ("full@example.com", "failed", 3)]
    assert status["status"] == "partial"
    assert [r.recipients for r in smtp_server.received] == [["ada@example.com"]]
    assert [a for a, _ in smtp_server.handler.refused] == ["full@example.com"] * 3


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=8, base=10, cap=100)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)]:
        waits = [policy.countdown(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 150  # jittered, not in lockstep


def test_retry_eta_never_exceeds_the_visibility_timeout() -> None:
    deferred = BatchReport(counts={"deferred": 1}, next_retry=10_000.0)
    assert retry_countdown(deferred, now=0.0, ceiling=30) == 30
    busy = BatchReport(busy_until=10_000.0)
    assert retry_countdown(busy, now=0.0, ceiling=45) == 45
    assert retry_countdown(BatchReport(counts={"sent": 3})) is None
    soon = BatchReport(counts={"deferred": 1}, next_retry=12.0, busy_until=50.0)
    assert retry_countdown(soon, now=2.0, ceiling=45) == pytest.approx(10.1)


def test_retry_eta_follows_the_broker_setting(app: Flask) -> None:
    app.extensions["celery"].conf.broker_transport_options = {"visibility_timeout": 40}
    later = BatchReport(counts={"deferred": 1}, next_retry=1e12)
    assert retry_countdown(later) == 20


def test_a_retried_message_keeps_its_message_id(client: FlaskClient,
                                                smtp_server: SMTPTestServer) -> None:
    replies = iter(["451 4.3.0 try later"])
    smtp_server.handler.rcpt_reply = (
        lambda a: next(replies, None) if a == "bob@example.com" else None)
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "bob@example.com"], "subject": "x", "body": "x"}).get_json()
    first, retry = smtp_server.received
    assert (first.recipients, retry.recipients) == (["ada@example.com"], ["bob@example.com"])
    assert first.message["Message-ID"] == retry.message["Message-ID"]
    assert first.message["Message-ID"].startswith(f"<{accepted['id']}@")


def test_deliver_each_sends_every_recipient_a_copy_of_its_own(
        app: Flask, redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    store = MessageStore(redis_client)
    message = store.create({"subject": "News", "body": "Hello"},
                           [f"r{i}@example.com" for i in range(12)])
    with app.app_context():
        deliver_each.apply(args=[message.id, 0, 12], throw=True)
        deliver_each.apply(args=[message.id, 0, 12], throw=True)  # again: nothing new
    received = smtp_server.received
    assert [r.recipients for r in received] == [[f"r{i}@example.com"] for i in range(12)]
    assert [r.message["To"] for r in received] == [f"r{i}@example.com" for i in range(12)]
    assert len({r.message["Message-ID"] for r in received}) == 12
    assert received[3].message["Message-ID"].startswith(f"<{message.id}.3@")
    assert smtp_server.session_count == 1
    assert store.ledger(message.id).counts()["sent"] == 12


def test_a_relay_slower_than_the_lease_never_lets_a_second_run_claim(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_delay = 0.8  # each message outlives the 0.3 s lease many times
    ledger = ledger_of(redis_client, 3)
    reports: dict[str, BatchReport] = {}

    def run_as(token: str) -> None:
        settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5.0)
        with BatchConnection(settings) as connection:
            reports[token] = run_batch(ledger, [Outgoing([i], personal) for i in range(3)],
                                       connection, Composer(), BatchOptions(token=token,
                                                                            lease=0.3))

    first = threading.Thread(target=run_as, args=("first",))
    first.start()
    time.sleep(1.0)  # the first run is mid-message, long past its lease without renewal
    run_as("second")
    first.join(10)
    assert reports["second"].counts == {} and reports["second"].busy_until is not None
    assert reports["first"].counts == {"sent": 3}
    assert sorted(r.recipients[0] for r in smtp_server.received) == [
        f"r{i}@example.com" for i in range(3)]


def test_the_next_messages_commands_go_with_this_ones_content(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.pipelining = True
    smtp_server.handler.rcpt_reply = (
        lambda a: "550 5.1.1 unknown" if a == "r2@example.com" else None)
    verdicts = iter([None, None, None, "451 4.3.0 try later"])  # r4 (the fourth DATA)
    smtp_server.handler.data_reply = lambda envelope: next(verdicts, None)

    def sometimes_broken(claimed: list[RecipientRecord]) -> Draft:
        if claimed[0].index == 5:
            raise InvalidMessageError("template error")
        return personal(claimed)

    ledger = ledger_of(redis_client, 8)
    report = run(ledger, 8, smtp_server, draft=sometimes_broken)
    assert report.counts == {"sent": 5, "failed": 2, "deferred": 1}
    assert [r.status for r in ledger.get(list(range(8)))] == [
        "sent", "sent", "failed", "sent", "deferred", "failed", "sent", "sent"]
    assert smtp_server.session_count == 1  # refusals and a broken message keep the session
    assert sorted(r.recipients[0] for r in smtp_server.received) == [
        f"r{i}@example.com" for i in (0, 1, 3, 6, 7)]


def test_a_batch_stopped_after_sending_ahead_sends_nothing_more(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.pipelining = True
    ledger = ledger_of(redis_client, 6)
    checks = iter([False, False, True])  # paused just before the third message

    settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5.0)
    with BatchConnection(settings) as connection:
        report = run_batch(ledger, [Outgoing([i], personal) for i in range(6)], connection,
                           Composer(), BatchOptions(token="t", should_stop=lambda: next(checks)))
    time.sleep(0.2)
    assert report.counts == {"sent": 2}
    assert [r.recipients[0] for r in smtp_server.received] == ["r0@example.com",
                                                               "r1@example.com"]
    # the third message's commands had gone out: its session was dropped, not given content
    assert [r.status for r in ledger.get(list(range(6)))] == ["sent", "sent"] + ["queued"] * 4
