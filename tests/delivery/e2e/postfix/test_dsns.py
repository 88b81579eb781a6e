"""Against a real Postfix: the DSNs it writes itself reach the bounce listener
(``postroom bounces``) through Postfix's own delivery to the VERP return path. A hard
bounce (the next hop answers 550) and a queue expiry (``Action: failed`` with a 4.x.x
status) both mark the recipient ``bounced``, suppress it and count in /metrics."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import redis
from flask import Flask

from cli.bounces import BounceListener
from tasks.bounces.reports import read_report
from tasks.bounces.service import BounceDesk, Matched, bounce_desk
from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore
from tasks.delivery.engine.verp import BounceRef, verp_address
from tasks.messages.store import MessageStore
from tests.delivery.e2e.postfix.conftest import (
    RETURN_PATH,
    SECRET,
    StartApp,
    StartPostfix,
    bounced_total,
    forwarded,
    send,
    shown_recipients,
    statuses,
    wait_forwarded,
)
from tests.delivery.e2e.postfix.harness import wait_for
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.smtp_server import SMTPTestServer
from web.testing import free_port

BOUNCE_DOMAIN = RETURN_PATH.split("@")[1]


class RecordingDesk(BounceDesk):
    """The bounce desk, keeping each raw report it took (to read what Postfix wrote)."""

    reports: list[bytes]

    def take(self, raw: bytes, envelope_to: Sequence[str] = (), *,
             authenticated: bool = False) -> list[Matched]:
        self.reports.append(raw)
        return super().take(raw, envelope_to, authenticated=authenticated)


@contextmanager
def listening(app: Flask, redis_client: redis.Redis, port: int) -> Iterator[RecordingDesk]:
    plain = bounce_desk(redis_client, app.config)
    desk = RecordingDesk(redis_client, return_path=plain.return_path,
                         secret_key=plain.secret_key)
    desk.reports = []
    listener = BounceListener(desk, RETURN_PATH, host="127.0.0.1", port=port).start()
    try:
        yield desk
    finally:
        listener.stop()


@pytest.mark.timeout(60)
def test_a_hard_bounce_written_by_postfix_suppresses(
        start_postfix: StartPostfix, postroom: StartApp, sink: SMTPTestServer,
        redis_client: redis.Redis) -> None:
    rows = people(3)
    gone = rows[1]["email"]
    sink.handler.rcpt_reply = lambda address: (
        f"550 5.1.1 <{gone}>: no such user" if address == gone else None)
    port = free_port()
    relay = start_postfix(routes={BOUNCE_DOMAIN: port})
    app = postroom(relay, MAIL_RETURN_PATH=RETURN_PATH)
    client = app.test_client()
    with listening(app, redis_client, port) as desk:
        campaign = create(client, csv_bytes(rows))
        ledger = CampaignStore(redis_client).ledger(campaign["id"])
        wait_for(lambda: ledger.get([1])[0].status == "bounced", 30,
                 "Postfix's DSN to reach the bounce listener")
    [report] = [read_report(raw) for raw in desk.reports]
    [reported] = report.recipients
    assert (reported.email, reported.action, reported.status) == (gone, "failed", "5.1.1")
    records = ledger.get([0, 1, 2])
    assert [r.status for r in records] == ["sent", "bounced", "sent"]
    assert records[1].smtp_code == 550 and "no such user" in (records[1].error or "")
    assert gone in SuppressionList(redis_client)
    wait_forwarded(sink, 2)
    assert forwarded(sink) == {rows[0]["email"]: 1, rows[2]["email"]: 1}
    assert bounced_total(client, "campaign") == 1
    # the next campaign to that address does not send to it
    again = create(client, csv_bytes([rows[1]]))
    [record] = CampaignStore(redis_client).ledger(again["id"]).get([0])
    assert record.status == "suppressed"


@pytest.mark.timeout(60)
def test_a_queue_expiry_dsn_marks_bounced(
        start_postfix: StartPostfix, postroom: StartApp, sink: SMTPTestServer,
        redis_client: redis.Redis) -> None:
    slow = SMTPTestServer().start()  # a next hop that only ever defers
    slow.handler.rcpt_reply = lambda address: "451 4.3.0 try again later"
    try:
        port = free_port()
        relay = start_postfix(routes={BOUNCE_DOMAIN: port, "slow.example.com": slow.port},
                              settings={"maximal_queue_lifetime": "0"})  # tried once only
        app = postroom(relay, MAIL_RETURN_PATH=RETURN_PATH)
        client = app.test_client()
        # one recipient a message: over SMTP a message's token names a recipient only when
        # the message had one (a co-recipient must not be able to bounce the others)
        to = ["ada@example.com", "late@slow.example.com"]
        with listening(app, redis_client, port) as desk:
            first = send(client, to[:1])
            message = send(client, to[1:])
            assert statuses(client, first["id"]) == {to[0]: "sent"}
            # Postfix may give up (and report it) before the API is even asked
            assert statuses(client, message["id"])[to[1]] in {"sent", "bounced"}
            wait_for(lambda: statuses(client, message["id"])[to[1]] == "bounced", 30,
                     "Postfix's queue-expiry DSN to reach the bounce listener")
        assert slow.handler.refused  # Postfix really tried the next hop
    finally:
        slow.stop()
    [reported] = [r for raw in desk.reports for r in read_report(raw).recipients]
    assert (reported.email, reported.action) == (to[1], "failed")
    assert (reported.status or "").startswith("4.")  # the relay gave up on a 4.x.x
    assert statuses(client, first["id"]) == {to[0]: "sent"}
    assert statuses(client, message["id"]) == {to[1]: "bounced"}
    [late] = shown_recipients(client, message["id"])
    assert "4.3.0" in late.get("error", "")
    assert to[1] in SuppressionList(redis_client) and to[0] not in SuppressionList(redis_client)
    assert forwarded(sink) == {to[0]: 1}
    assert bounced_total(client, "message") == 1


@pytest.mark.timeout(60)
def test_a_delay_warning_is_only_recorded(
        start_postfix: StartPostfix, postroom: StartApp, sink: SMTPTestServer,
        redis_client: redis.Redis) -> None:
    slow = SMTPTestServer().start()
    slow.handler.rcpt_reply = lambda address: "451 4.3.0 try again later"
    try:
        port = free_port()
        relay = start_postfix(routes={BOUNCE_DOMAIN: port, "slow.example.com": slow.port},
                              settings={"delay_warning_time": "1s"})
        app = postroom(relay, MAIL_RETURN_PATH=RETURN_PATH)
        client = app.test_client()
        with listening(app, redis_client, port) as desk:
            message = send(client, ["late@slow.example.com"])
            wait_for(lambda: redis_client.llen("postroom:bounces:delays") != 0, 30,
                     "Postfix's delay warning to reach the bounce listener")
    finally:
        slow.stop()
    [reported] = [r for raw in desk.reports for r in read_report(raw).recipients]
    assert (reported.email, reported.action) == ("late@slow.example.com", "delayed")
    assert statuses(client, message["id"]) == {"late@slow.example.com": "sent"}
    assert "late@slow.example.com" not in SuppressionList(redis_client)
    assert bounced_total(client, "message") == 0


@pytest.mark.timeout(60)
def test_a_postfix_dsn_is_matched_by_its_envelope_id(
        start_postfix: StartPostfix, postroom: StartApp, sink: SMTPTestServer,
        redis_client: redis.Redis) -> None:
    """A DSN whose only link to what was sent is ``Original-Envelope-Id`` (the ENVID given
    at MAIL FROM): the plain return path, and a Message-ID that is not Postroom's."""
    port = free_port()
    relay = start_postfix(routes={BOUNCE_DOMAIN: port})
    app = postroom(relay, MAIL_RETURN_PATH=RETURN_PATH)
    client = app.test_client()
    to = ["ada@example.com", "gone@example.net"]
    message = send(client, to)
    wait_forwarded(sink, 2)
    records, _ = MessageStore(redis_client).ledger(message["id"]).page(limit=10)
    [gone] = [r for r in records if r.email == to[1]]
    envid = verp_address(RETURN_PATH, SECRET, BounceRef("message", message["id"], gone.index)
                         ).split("+", 1)[1].split("@")[0]
    sink.handler.rcpt_reply = lambda address: (
        "550 5.1.1 no such user" if address == to[1] else None)
    with listening(app, redis_client, port) as desk:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
            smtp.ehlo()
            assert "dsn" in smtp.esmtp_features
            smtp.sendmail(RETURN_PATH, [to[1]], (
                f"From: {RETURN_PATH}\r\nTo: {to[1]}\r\nSubject: again\r\n"
                "Message-ID: <not-ours@elsewhere.example>\r\n\r\nHello\r\n"),
                mail_options=[f"ENVID={envid}", "RET=HDRS"])
        wait_for(lambda: statuses(client, message["id"])[to[1]] == "bounced", 30,
                 "Postfix's DSN to be matched by its ENVID")
    [report] = [read_report(raw) for raw in desk.reports]
    assert report.envelope_id == envid
    assert statuses(client, message["id"]) == {to[0]: "sent", to[1]: "bounced"}
    assert to[1] in SuppressionList(redis_client)
