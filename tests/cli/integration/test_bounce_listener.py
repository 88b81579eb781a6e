"""The bounce listener as an attacker meets it: a real SMTP client over a socket to the
listener (``postroom bounces``), real Redis, mail really sent by the app (Celery eager).

What it trusts: only a signed VERP token in the RCPT address, for the recipient it names.
What it bounds: connections per client and in all, a message's size, the whole DATA phase,
the work on the event loop, and what it keeps of reports that match nothing.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from cli.bounces import BounceListener, ListenerLimits
from tasks.bounces.service import bounce_desk
from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore
from tasks.messages.store import MessageStore
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.paths import FIXTURES
from tests.support.smtp_server import SMTPTestServer
from web.testing import free_port

FIXTURES = FIXTURES / "bounces"
RETURN_PATH = "bounces@bounces.example.org"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://news.example.org", "MAIL_RETURN_PATH": RETURN_PATH}


class Listener:
    def __init__(self, app: Flask, redis_client: redis.Redis, limits: ListenerLimits) -> None:
        self.port = free_port()
        self.server = BounceListener(bounce_desk(redis_client, app.config), RETURN_PATH,
                                     host="127.0.0.1", port=self.port, limits=limits).start()

    def send(self, raw: bytes, rcpt: str = RETURN_PATH) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as relay:
            relay.ehlo()
            relay.mail("")
            assert relay.rcpt(rcpt)[0] == 250
            return relay.data(raw)


@pytest.fixture
def limits() -> ListenerLimits:
    return ListenerLimits()


@pytest.fixture
def listener(app: Flask, redis_client: redis.Redis, limits: ListenerLimits
             ) -> Iterator[Listener]:
    running = Listener(app, redis_client, limits)
    yield running
    running.server.stop()


def report(name: str, **fields: str) -> bytes:
    text = (FIXTURES / f"{name}.eml").read_text()
    for field, value in fields.items():
        text = text.replace("{" + field + "}", value)
    return text.replace("{return_path}", RETURN_PATH).replace("\n", "\r\n").encode()


def arf_naming_nobody(message_id: str) -> bytes:
    """A complaint about *message_id* with no Original-Rcpt-To and no To in the copy."""
    text = report("arf", recipient="", message_id=message_id).decode()
    text = text.replace("Original-Rcpt-To: <>\r\n", "").replace("To: \r\n", "")
    assert "Original-Rcpt-To" not in text and "\r\nTo: \r\n" not in text
    return text.encode()


def untouched(redis_client: redis.Redis, campaign_id: str, n: int) -> None:
    records = CampaignStore(redis_client).ledger(campaign_id).get(list(range(n)))
    assert [r.status for r in records] == ["sent"] * n
    assert len(SuppressionList(redis_client)) == 0


def test_a_forged_complaint_naming_nobody_changes_nothing(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis,
        listener: Listener) -> None:
    rows = people(3)
    campaign = create(client, csv_bytes(rows))
    mine = smtp_server.to(rows[0]["email"])[0]  # the attacker's own copy
    assert str(mine.message["Message-ID"]).startswith(f"<{campaign['id']}.0@")
    domain = str(mine.message["Message-ID"]).split("@")[1]
    for index in range(3):
        forged = arf_naming_nobody(f"<{campaign['id']}.{index}@{domain}")
        assert listener.send(forged)[0] == 250  # to the plain return path
        assert listener.send(forged, rcpt=mine.sender)[0] == 250  # with the attacker's token
        answer = client.post("/api/bounces", data=forged, headers=AUTH,
                             content_type="message/rfc822")
        assert answer.status_code == 422, answer.get_json()
    # the attacker's own signed token, about someone else
    other = report("arf", recipient=rows[1]["email"],
                   message_id=f"<{campaign['id']}.1@{domain}>")
    assert listener.send(other, rcpt=mine.sender)[0] == 250
    untouched(redis_client, campaign["id"], 3)
    assert redis_client.llen("postroom:bounces:unmatched") == 10

    # the genuine article still works: a recipient's token, a report naming that recipient
    victim = smtp_server.to(rows[2]["email"])[0]
    assert listener.send(report("arf", recipient=rows[2]["email"],
                                message_id=f"<{campaign['id']}.2@{domain}>"),
                         rcpt=victim.sender)[0] == 250
    [record] = CampaignStore(redis_client).ledger(campaign["id"]).get([2])
    assert record.status == "bounced"
    suppressed = SuppressionList(redis_client).get(rows[2]["email"])
    assert suppressed is not None and suppressed.reason == "complained"


def test_a_co_recipients_dsn_matched_only_by_message_id_changes_nothing_over_smtp(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis,
        listener: Listener) -> None:
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "bob@example.net"], "subject": "Hi", "body": "Hello"}
    ).get_json()
    bobs = smtp_server.to("bob@example.net")[0]  # one transaction: one token for both
    forged = report("postfix", recipient="ada@example.com",
                    message_id=str(bobs.message["Message-ID"]))
    assert listener.send(forged)[0] == 250
    assert listener.send(forged, rcpt=bobs.sender)[0] == 250  # names the message, not ada
    shown = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert [r["status"] for r in shown["recipients"]] == ["sent", "sent"]
    assert len(SuppressionList(redis_client)) == 0
    # an operator's authenticated forwarder keeps the Message-ID fallback
    answer = client.post("/api/bounces", data=forged, headers=AUTH,
                         content_type="message/rfc822")
    assert answer.status_code == 200 and answer.get_json()["matched"][0]["email"] == (
        "ada@example.com")
    assert MessageStore(redis_client).ledger(accepted["id"]).counts()["bounced"] == 1


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_data(port: int, source: str = "127.0.0.1") -> smtplib.SMTP:
    relay = smtplib.SMTP(timeout=10, source_address=(source, 0))
    relay.connect("127.0.0.1", port)
    relay.ehlo()
    relay.mail("")
    relay.rcpt(RETURN_PATH)
    relay.putcmd("data")
    assert relay.getreply()[0] == 354
    return relay


@pytest.mark.parametrize("limits", [ListenerLimits(data_timeout=1.5)])
def test_trickling_connections_are_cut_off_and_add_little_memory(listener: Listener) -> None:
    before = _rss()
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=5) as relay:
        assert relay.ehlo()[0] == 250 and relay.esmtp_features["size"] == str(1024 * 1024)
        assert relay.mail("", options=["SIZE=2000000"])[0] == 552  # announced too big
    flood, trickle = _open_data(listener.port), _open_data(listener.port)
    assert flood.sock is not None and trickle.sock is not None
    try:
        started = time.monotonic()
        line = b"abc\r\n" * 20_000  # 100 KB of 3-byte lines a send
        for _ in range(12):  # 1.2 MB: past the 1 MB cap
            flood.sock.sendall(line)
        flood.sock.sendall(b".\r\n")
        assert flood.getreply()[0] == 552
        closed = None
        while time.monotonic() - started < 6:
            try:
                trickle.sock.sendall(b"abc\r\n")
                if trickle.sock.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = time.monotonic() - started
                break
            time.sleep(0.1)
        assert closed is not None and 1.0 < closed < 4.0  # the whole DATA phase: 1.5 s
    finally:
        for relay in (flood, trickle):
            relay.close()
    assert _rss() - before < 100 * 1024 * 1024


@pytest.mark.parametrize("limits", [ListenerLimits(max_connections=3,
                                                   max_connections_per_client=2)])
def test_connections_are_capped_per_client_and_in_all(listener: Listener) -> None:
    def banner(source: str) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=5,
                                        source_address=(source, 0))
        return sock, sock.recv(200)

    held = []
    try:
        for _ in range(2):
            sock, greeting = banner("127.0.0.1")
            held.append(sock)
            assert greeting.startswith(b"220")
        sock, greeting = banner("127.0.0.1")
        sock.close()
        assert greeting.startswith(b"421")  # a third from the same client
        sock, greeting = banner("127.0.0.2")
        held.append(sock)
        assert greeting.startswith(b"220")
        sock, greeting = banner("127.0.0.3")
        sock.close()
        assert greeting.startswith(b"421")  # four in all
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 3
    while True:  # the slots come back once they close
        sock, greeting = banner("127.0.0.1")
        sock.close()
        if greeting.startswith(b"220") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert greeting.startswith(b"220")



def test_a_slot_is_not_held_for_ever_with_noops(listener: Listener) -> None:
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=5) as relay:
        assert all(relay.noop()[0] == 250 for _ in range(20))  # each resets the idle timer
        assert relay.noop()[0] == 421


def big_dsn(recipients: int) -> bytes:
    blocks = "".join(f"Final-Recipient: rfc822; r{i}@example.net\r\nAction: failed\r\n"
                     "Status: 5.1.1\r\n\r\n" for i in range(recipients))
    return ("From: MAILER-DAEMON@mx.example.net\r\nTo: " + RETURN_PATH + "\r\nSubject: x\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; "
            "report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\n"
            "Content-Type: text/plain\r\n\r\nfailed\r\n--B\r\n"
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net"
            "\r\n\r\n" + blocks + "--B--\r\n").encode()


@pytest.mark.parametrize("limits", [ListenerLimits(max_bytes=8 * 1024 * 1024)])
def test_another_clients_banner_within_a_second_during_a_5_mb_report(
        listener: Listener) -> None:
    raw = big_dsn(70_000)
    assert len(raw) > 5_000_000
    answers: list[int] = []
    sender = threading.Thread(target=lambda: answers.append(listener.send(raw)[0]))
    sender.start()
    waits: list[float] = []
    while sender.is_alive() and len(waits) < 100:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
            assert sock.recv(200).startswith(b"220")
        waits.append(time.monotonic() - started)
        time.sleep(0.05)
    sender.join(30)
    assert answers == [250]
    assert len(waits) >= 5  # the report took a while: banners were asked for meanwhile
    assert max(waits) < 1.0, waits


@pytest.mark.parametrize("limits", [ListenerLimits(max_bytes=4 * 1024 * 1024)])
def test_a_kept_report_is_at_most_a_few_kb(client: FlaskClient, smtp_server: SMTPTestServer,
                                           redis_client: redis.Redis,
                                           listener: Listener) -> None:
    rows = people(1)
    campaign = create(client, csv_bytes(rows))
    copy = smtp_server.to(rows[0]["email"])[0]
    diagnostic = "X-Postfix; " + "\r\n    ".join(["timed out " * 90] * 3400)  # ~3 MB
    delayed = report("delayed", recipient=rows[0]["email"],
                     message_id=str(copy.message["Message-ID"])).decode().replace(
        "X-Postfix; connect to mail.example.net[203.0.113.7]:25: Connection timed out",
        diagnostic).encode()
    assert len(delayed) > 3_000_000
    assert listener.send(delayed, rcpt=copy.sender)[0] == 250
    noise = bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"")
    junk = b"Subject: \xff\xfe junk\r\n\r\n" + b"\r\n".join([noise] * 400)  # 100 KB
    assert listener.send(junk)[0] == 250
    assert listener.send(delayed)[0] == 250  # no token: unmatched
    kept = (redis_client.lrange("postroom:bounces:delays", 0, -1)
            + redis_client.lrange("postroom:bounces:unmatched", 0, -1))
    assert len(kept) == 3
    assert all(len(entry) <= 4096 for entry in kept), [len(e) for e in kept]
    [record] = CampaignStore(redis_client).ledger(campaign["id"]).get([0])
    assert record.status == "sent"  # a delay is only recorded


MALFORMED = {
    "address header": report("postfix", recipient="a@example.net",
                             message_id="<m@x>").replace(
        f"To: {RETURN_PATH}".encode(), b"To: a@[1.2.3.4"),
    "quote in address": report("postfix", recipient="a@example.net",
                               message_id="<m@x>").replace(
        f"To: {RETURN_PATH}".encode(), b'To: ,"'),
    "bytes": b"\x00\x01\x02\xff\xfe\r\n\r\n" + bytes(range(1, 256)).replace(b"\n", b""),
    "nested mime": b"MIME-Version: 1.0\r\n" + b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(3000)),
    "mime": (b"Content-Type: multipart/report; report-type=delivery-status; boundary=\r\n"
             b"MIME-Version: 1.0\r\n\r\n--\r\nContent-Type: message/delivery-status\r\n\r\n"
             b"Final-Recipient: rfc822; =?x?q?\xff?= @ <\r\n--"),
}


def test_malformed_reports_are_250_over_smtp_and_4xx_on_the_api(
        client: FlaskClient, redis_client: redis.Redis, listener: Listener) -> None:
    for name, raw in MALFORMED.items():
        assert listener.send(raw)[0] == 250, name
        answer = client.post("/api/bounces", data=raw, headers=AUTH,
                             content_type="message/rfc822")
        assert 400 <= answer.status_code < 500, (name, answer.status_code)
        assert answer.get_json()["error"]["code"] in {"malformed_report", "unmatched"}
    answer = client.post("/api/bounces", data=MALFORMED["nested mime"], headers=AUTH,
                         content_type="message/rfc822")
    assert answer.status_code == 400  # the email package gives up (RecursionError)
    assert answer.get_json()["error"]["code"] == "malformed_report"
    assert all(len(e) <= 4096 for e in redis_client.lrange("postroom:bounces:unmatched", 0, -1))
    assert int(redis_client.get("postroom:bounces:unmatched-count") or 0) == len(MALFORMED)


def test_a_messages_own_token_bounces_its_only_recipient_over_smtp(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis,
        listener: Listener) -> None:
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com"], "subject": "Hi", "body": "Hello"}).get_json()
    [copy] = smtp_server.to("ada@example.com")
    assert copy.sender.startswith(f"bounces+m{accepted['id']}.")
    stranger = report("postfix", recipient="eve@example.org", message_id="<lost@x>")
    assert listener.send(stranger, rcpt=copy.sender)[0] == 250  # names someone else
    assert len(SuppressionList(redis_client)) == 0
    bounce = report("postfix", recipient="ada@example.com", message_id="<lost@x>")
    assert listener.send(bounce, rcpt=copy.sender)[0] == 250
    shown = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert [r["status"] for r in shown["recipients"]] == ["bounced"]
    suppressed = SuppressionList(redis_client).get("ada@example.com")
    assert suppressed is not None and suppressed.reason == "bounced"
