"""Bounces and complaints through ``POST /api/bounces``, with reports in the shapes Postfix,
Exim and a large mailbox provider send, an ARF complaint, a delay, and junk; each applied to
mail that was really sent (Celery eager, real Redis and SMTP)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore
from tasks.messages.store import MessageStore
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.paths import FIXTURES
from tests.support.smtp_server import SMTPTestServer

FIXTURES = FIXTURES / "bounces"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://news.example.org"}


def report(name: str, *, recipient: str, message_id: str) -> bytes:
    text = (FIXTURES / f"{name}.eml").read_text()
    for field, value in (("{recipient}", recipient), ("{message_id}", message_id),
                         ("{return_path}", "bounces@example.org")):
        text = text.replace(field, value)
    return text.replace("\n", "\r\n").encode()


def post(client: FlaskClient, raw: bytes, content_type: str = "message/rfc822") -> Any:
    return client.post("/api/bounces", data=raw, headers=AUTH, content_type=content_type)


def sent_message_id(smtp_server: SMTPTestServer, address: str) -> str:
    [received] = smtp_server.to(address)
    return str(received.message["Message-ID"])


def test_a_postfix_bounce_for_a_campaign_recipient(client: FlaskClient,
                                                   smtp_server: SMTPTestServer,
                                                   redis_client: redis.Redis) -> None:
    rows = people(3)
    campaign = create(client, csv_bytes(rows))
    gone = rows[1]["email"]
    answer = post(client, report("postfix", recipient=gone,
                                 message_id=sent_message_id(smtp_server, gone)))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["matched"] == [
        {"email": gone, "action": "failed", "campaign_id": campaign["id"]}]
    ledger = CampaignStore(redis_client).ledger(campaign["id"])
    records = ledger.get([0, 1, 2])
    assert [r.status for r in records] == ["sent", "bounced", "sent"]
    assert records[1].smtp_code == 550 and "User unknown" in (records[1].error or "")
    assert ledger.counts()["bounced"] == 1
    entry = SuppressionList(redis_client).get(gone)
    assert entry is not None and (entry.reason, entry.campaign_id) == ("bounced",
                                                                        campaign["id"])


@pytest.mark.parametrize("shape", ["exim", "provider"])
def test_a_bounce_for_one_recipient_of_a_message(client: FlaskClient, shape: str,
                                                 smtp_server: SMTPTestServer,
                                                 redis_client: redis.Redis) -> None:
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "bob@example.net"], "subject": "Hi", "body": "Hello"}
    ).get_json()
    message_id = sent_message_id(smtp_server, "bob@example.net")
    answer = post(client, report(shape, recipient="bob@example.net", message_id=message_id))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["matched"] == [
        {"email": "bob@example.net", "action": "failed", "message_id": accepted["id"]}]
    shown = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert [(r["email"], r["status"]) for r in shown["recipients"]] == [
        ("ada@example.com", "sent"), ("bob@example.net", "bounced")]
    assert shown["status"] == "partial"
    assert "bob@example.net" in SuppressionList(redis_client)
    assert MessageStore(redis_client).ledger(accepted["id"]).counts()["bounced"] == 1


def test_a_complaint_suppresses_as_complained(client: FlaskClient,
                                              smtp_server: SMTPTestServer,
                                              redis_client: redis.Redis) -> None:
    rows = people(2)
    campaign = create(client, csv_bytes(rows))
    angry = rows[0]["email"]
    answer = post(client, report("arf", recipient=angry,
                                 message_id=sent_message_id(smtp_server, angry)))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["matched"][0]["action"] == "complaint"
    [record] = CampaignStore(redis_client).ledger(campaign["id"]).get([0])
    assert record.status == "bounced" and record.error == "complaint: abuse"
    entry = SuppressionList(redis_client).get(angry)
    assert entry is not None and entry.reason == "complained"


def test_a_delay_is_only_recorded(client: FlaskClient, smtp_server: SMTPTestServer,
                                  redis_client: redis.Redis) -> None:
    rows = people(1)
    campaign = create(client, csv_bytes(rows))
    slow = rows[0]["email"]
    answer = post(client, report("delayed", recipient=slow,
                                 message_id=sent_message_id(smtp_server, slow)))
    assert answer.status_code == 200
    assert answer.get_json()["matched"][0]["action"] == "delayed"
    [record] = CampaignStore(redis_client).ledger(campaign["id"]).get([0])
    assert record.status == "sent" and slow not in SuppressionList(redis_client)
    assert redis_client.llen("postroom:bounces:delays") == 1


def test_junk_and_strangers_match_nothing_and_are_kept(client: FlaskClient,
                                                       smtp_server: SMTPTestServer,
                                                       redis_client: redis.Redis) -> None:
    assert post(client, report("junk", recipient="x", message_id="x")).status_code == 422
    rows = people(1)
    create(client, csv_bytes(rows))
    stranger = report("postfix", recipient="someone-else@example.com",
                      message_id=sent_message_id(smtp_server, rows[0]["email"]))
    refused = post(client, stranger)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "unmatched"
    assert redis_client.llen("postroom:bounces:unmatched") == 2
    assert len(SuppressionList(redis_client)) == 0


def test_the_wrong_body_is_a_clear_4xx(client: FlaskClient) -> None:
    assert post(client, b"From: x\r\n\r\nhi", content_type="text/plain").status_code == 415
    assert post(client, b"").status_code == 400
    too_big = post(client, b"Subject: x\r\n\r\n" + b"y" * (1024 * 1024))  # BOUNCE_MAX_BYTES
    assert too_big.status_code == 413 and too_big.get_json()["error"]["code"] == "too_large"
    assert client.post("/api/bounces", data=b"x", content_type="message/rfc822"
                       ).status_code == 401


@pytest.mark.parametrize("config_overrides", [{
    "PUBLIC_URL": "https://news.example.org",
    "MAIL_RETURN_PATH": "bounces@bounces.example.org"}])
def test_verp_return_paths_and_the_inbound_listener(app: Any, client: FlaskClient,
                                                    smtp_server: SMTPTestServer,
                                                    redis_client: redis.Redis) -> None:
    import smtplib

    from cli.bounces import BounceListener
    from tasks.bounces.service import bounce_desk
    from web.testing import free_port

    rows = people(2)
    campaign = create(client, csv_bytes(rows))
    gone = rows[1]["email"]
    [received] = smtp_server.to(gone)
    verp = received.sender
    assert verp.startswith("bounces+c" + campaign["id"] + ".1.")
    assert verp.endswith("@bounces.example.org")
    other = smtp_server.to(rows[0]["email"])[0].sender
    assert other != verp  # one return path per recipient

    port = free_port()
    listener = BounceListener(bounce_desk(redis_client, app.config),
                              "bounces@bounces.example.org", host="127.0.0.1",
                              port=port).start()
    try:
        # the report's copy of the original lost its Message-ID: the VERP address decides
        bounce = report("postfix", recipient=gone, message_id="<lost@elsewhere.example>")
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as relay:
            relay.ehlo()
            assert relay.rcpt("x@example.org")[0] == 503  # MAIL FROM first
            relay.mail("")
            assert relay.rcpt("postmaster@example.org")[0] == 550  # not the return path
            assert relay.rcpt(verp)[0] == 250
            assert relay.data(bounce)[0] == 250
            relay.mail("")
            relay.rcpt("bounces@bounces.example.org")
            assert relay.data(report("junk", recipient="x", message_id="x"))[0] == 250
    finally:
        listener.stop()
    [record] = CampaignStore(redis_client).ledger(campaign["id"]).get([1])
    assert record.status == "bounced"
    assert gone in SuppressionList(redis_client)
    assert int(redis_client.get("postroom:bounces:unmatched-count") or 0) == 1
    forged = verp.replace(verp.split(".")[-1].split("@")[0], "0000000000")
    assert bounce_desk(redis_client, app.config).take(
        report("postfix", recipient=rows[0]["email"], message_id="<lost@x>"),
        [forged]) == []  # a token that was not signed here matches nothing
