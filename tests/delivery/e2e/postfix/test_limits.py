"""Against a real Postfix with its limits switched on for loopback: too many recipients
(``smtpd_recipient_limit``), a message rate (anvil's ``smtpd_client_message_rate_limit``),
a connection count, a short ``smtpd_timeout``. Each counts what Postfix forwarded against
Postroom's records: every recipient sent exactly once, none failed by a relay-wide refusal.
Postroom runs with a real Celery worker, so retries wait their countdown, and with two
attempts a recipient: a relay-wide refusal (a limit that names no recipient) must use none."""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter

import pytest

from tests.delivery.e2e.postfix.conftest import (
    StartApp,
    StartPostfix,
    forwarded,
    send,
    settled_campaign,
    settled_message,
    wait_forwarded,
)
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.smtp_server import SMTPTestServer

# anvil limits apply to every client, loopback included
LIMITED = {"smtpd_client_event_limit_exceptions": ""}


@pytest.mark.timeout(60)
def test_too_many_recipients_go_in_the_next_transaction(
        start_postfix: StartPostfix, postroom_worker: StartApp, sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={"smtpd_recipient_limit": "3"})
    # two attempts: a 452 for too many recipients must not use one (RFC 5321 .4.5.3.1.10)
    client = postroom_worker(relay, DELIVERY_MAX_ATTEMPTS=2).test_client()
    to = [f"r{i}@example.com" for i in range(10)]
    message = send(client, to)
    records = settled_message(client, message["id"])
    assert records == dict.fromkeys(to, "sent")
    wait_forwarded(sink, 10)
    assert forwarded(sink) == dict.fromkeys(to, 1)
    accepted = relay.accepted()  # queue id -> recipients: the limit was really applied
    assert sum(accepted.values()) == 10 and max(accepted.values()) <= 3
    # the rest went at once in the next transactions of the same session
    assert len(relay.logged(r"disconnect from .* mail=")) == 1


@pytest.mark.timeout(90)
def test_a_message_rate_limit_is_ridden_out(
        start_postfix: StartPostfix, postroom_worker: StartApp, sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={**LIMITED, "smtpd_client_message_rate_limit": "2",
                                    "anvil_rate_time_unit": "3s"})
    client = postroom_worker(relay, DELIVERY_BACKOFF_BASE=0.2, DELIVERY_BACKOFF_CAP=1.0,
                             DELIVERY_MAX_ATTEMPTS=2, DELIVERY_MAX_AGE=60.0).test_client()
    rows = people(6)
    campaign = create(client, csv_bytes(rows))
    records = settled_campaign(client, campaign["id"], timeout=60)
    assert relay.logged(r"Message delivery request rate limit exceeded|too much mail")
    assert Counter(records.values()) == {"sent": 6}
    wait_forwarded(sink, 6)
    assert forwarded(sink) == {row["email"]: 1 for row in rows}
    assert not relay.logged(r"too many errors")


@pytest.mark.timeout(60)
def test_a_connection_count_limit_is_ridden_out(
        start_postfix: StartPostfix, postroom_worker: StartApp, sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={**LIMITED, "smtpd_client_connection_count_limit": "1"})
    held = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)  # another client's session
    held.ehlo()
    refused = r"Connection concurrency limit exceeded: 2 from"

    def release() -> None:  # once Postroom has been refused at least once (at most 15 s)
        deadline = time.monotonic() + 15
        while not relay.logged(refused) and time.monotonic() < deadline:
            time.sleep(0.05)
        held.quit()

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        client = postroom_worker(relay, DELIVERY_MAX_ATTEMPTS=2,
                                 DELIVERY_MAX_AGE=60.0).test_client()
        to = ["ada@example.com", "bob@example.net"]
        message = send(client, to)
        rows = people(3)
        campaign = create(client, csv_bytes(rows))
        records = settled_message(client, message["id"])
        campaign_records = settled_campaign(client, campaign["id"])
    finally:
        releaser.join(timeout=20)
        held.close()
    assert relay.logged(refused)
    wait_forwarded(sink, 5)
    assert forwarded(sink) == dict.fromkeys(to + [row["email"] for row in rows], 1)
    assert records == dict.fromkeys(to, "sent")
    assert Counter(campaign_records.values()) == {"sent": 3}


@pytest.mark.timeout(60)
def test_a_connection_rate_limit_is_ridden_out(
        start_postfix: StartPostfix, postroom_worker: StartApp, sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={**LIMITED, "smtpd_client_connection_rate_limit": "2",
                                    "anvil_rate_time_unit": "3s"})
    client = postroom_worker(relay, DELIVERY_MAX_ATTEMPTS=2,
                             DELIVERY_MAX_AGE=60.0).test_client()
    to = [f"r{i}@example.com" for i in range(4)]
    messages = [send(client, [address]) for address in to]  # a session each
    records = {}
    for message in messages:
        records.update(settled_message(client, message["id"]))
    assert relay.logged(r"Connection rate limit exceeded")
    assert records == dict.fromkeys(to, "sent")
    wait_forwarded(sink, 4)
    assert forwarded(sink) == dict.fromkeys(to, 1)


@pytest.mark.timeout(60)
def test_a_short_smtpd_timeout_while_pacing(
        start_postfix: StartPostfix, postroom_worker: StartApp, sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={"smtpd_timeout": "2s"})
    # one message every 2.5 s: longer than Postfix waits for the next command
    client = postroom_worker(relay, MAIL_RATE_LIMIT=0.4, DELIVERY_MAX_ATTEMPTS=2,
                             DELIVERY_MAX_AGE=60.0).test_client()
    rows = people(3)
    started = time.monotonic()
    campaign = create(client, csv_bytes(rows))
    records = settled_campaign(client, campaign["id"], timeout=45)
    assert Counter(records.values()) == {"sent": 3}
    wait_forwarded(sink, 3)
    assert forwarded(sink) == {row["email"]: 1 for row in rows}
    assert not relay.logged(r"timeout after (DATA|END-OF-MESSAGE)")  # never mid-transaction
    assert time.monotonic() - started >= 4.5  # the pacing was kept: 3 messages, 2 gaps
