"""Every event type arrives at a real HTTP receiver, signed, with the documented data
(Celery eager, real Redis and SMTP)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tasks.bounces.store import unsubscribe_token
from tests.conftest import AUTH
from tests.support.campaign_helpers import act, create, csv_bytes, people
from tests.support.paths import FIXTURES, ROOT
from tests.support.smtp_server import SMTPTestServer
from tests.support.webhook_receiver import Receiver, receiving

MESSAGE_DATA = {"message_id", "campaign_id", "email", "status", "smtp_code", "error"}
BOUNCES = FIXTURES / "bounces"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def register(client: FlaskClient, receiver: Receiver, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/webhooks", headers=AUTH,
                           json={"url": f"{receiver.url}/hook", **fields})
    assert response.status_code == 201, response.get_json()
    created: dict[str, Any] = response.get_json()
    return created


def test_a_sent_message_is_announced_signed_with_the_secret(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    secret = register(client, receiver)["secret"]
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com"], "subject": "Hi", "body": "Hello"}).get_json()
    [call] = receiver.calls
    assert call.path == "/hook" and call.headers["Content-Type"] == "application/json"
    assert call.headers["Postroom-Event"] == "message.sent"
    assert call.signed_with(secret) and not call.signed_with("another secret")
    timestamp = int(call.headers["Postroom-Signature"].split(",")[0].removeprefix("t="))
    assert abs(timestamp - time.time()) < 60
    event = call.event
    assert set(event) == {"id", "type", "created_at", "data"}
    assert re.fullmatch(r"[0-9a-f]{32}", event["id"]) and event["type"] == "message.sent"
    assert event["data"] == {"message_id": accepted["id"], "campaign_id": None,
                             "email": "ada@example.com", "status": "sent", "smtp_code": 250,
                             "error": None}


def test_a_refused_recipient_is_announced_failed_with_the_5xx_code(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    register(client, receiver)
    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.1.1 no such user" if address.startswith("bob") else None)
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "bob@example.net"], "subject": "Hi", "body": "Hello"}
    ).get_json()
    [failed] = receiver.events("message.failed")
    assert set(failed["data"]) == MESSAGE_DATA
    assert failed["data"]["message_id"] == accepted["id"]
    assert (failed["data"]["email"], failed["data"]["status"],
            failed["data"]["smtp_code"]) == ("bob@example.net", "failed", 550)
    assert "no such user" in failed["data"]["error"]
    assert [e["data"]["email"] for e in receiver.events("message.sent")] == ["ada@example.com"]


def test_a_greylisted_recipient_is_announced_deferred_then_failed(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    register(client, receiver)
    smtp_server.handler.rcpt_reply = lambda address: "451 4.7.1 greylisted"
    client.post("/api/messages", headers=AUTH,
                json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    deferred = receiver.events("message.deferred")
    assert deferred and all(e["data"]["smtp_code"] == 451 and e["data"]["status"] == "deferred"
                            for e in deferred)
    [failed] = receiver.events("message.failed")  # eager retries ran out
    assert failed["data"]["status"] == "failed" and failed["data"]["smtp_code"] == 451
    assert len({e["id"] for e in receiver.events()}) == len(receiver.calls)  # each its own id


def test_a_bounce_is_announced(client: FlaskClient, receiver: Receiver,
                               smtp_server: SMTPTestServer) -> None:
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["bob@example.net"], "subject": "Hi", "body": "Hello"}).get_json()
    register(client, receiver, events=["message.bounced"])
    [received] = smtp_server.to("bob@example.net")
    raw = (BOUNCES / "exim.eml").read_text()
    for field, value in (("{recipient}", "bob@example.net"),
                         ("{message_id}", str(received.message["Message-ID"])),
                         ("{return_path}", "bounces@example.org")):
        raw = raw.replace(field, value)
    answer = client.post("/api/bounces", data=raw.replace("\n", "\r\n").encode(),
                         headers=AUTH, content_type="message/rfc822")
    assert answer.status_code == 200, answer.get_json()
    [bounced] = receiver.events()
    assert bounced["type"] == "message.bounced"
    data = bounced["data"]
    assert set(data) == MESSAGE_DATA
    assert (data["message_id"], data["campaign_id"], data["email"], data["status"]) == (
        accepted["id"], None, "bob@example.net", "bounced")
    assert data["smtp_code"] and 500 <= data["smtp_code"] < 600 and data["error"]


def test_codes_are_announced_without_the_code(client: FlaskClient, receiver: Receiver,
                                              smtp_server: SMTPTestServer) -> None:
    register(client, receiver, events=["otp.sent", "otp.failed"])
    sent = client.post("/api/otp", headers=AUTH, json={"email": "ada@example.com"}).get_json()
    [received] = smtp_server.to("ada@example.com")
    found = re.search(r"\b\d{6}\b", received.message.get_body(("plain",)).get_content())
    assert found is not None
    code = found.group()
    smtp_server.handler.rcpt_reply = lambda address: "550 5.1.1 no such user"
    failed = client.post("/api/otp", headers=AUTH, json={"email": "bob@example.net"}).get_json()
    by_type = {e["type"]: e for e in receiver.events()}
    assert by_type["otp.sent"]["data"] == {"request_id": sent["id"], "status": "sent",
                                           "error": None}
    assert by_type["otp.failed"]["data"]["request_id"] == failed["id"]
    assert by_type["otp.failed"]["data"]["status"] == "failed"
    assert "no such user" in by_type["otp.failed"]["data"]["error"]
    assert all(code.encode() not in call.body for call in receiver.calls)


def test_a_campaign_is_announced_from_start_to_completion(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    register(client, receiver)
    rows = people(3)
    campaign = create(client, csv_bytes(rows))
    types = [e["type"] for e in receiver.events()]
    assert types[0] == "campaign.started" and types[-1] == "campaign.completed"
    assert sorted(types[1:-1]) == ["message.sent"] * 3
    started, completed = receiver.events("campaign.started")[0], receiver.events(
        "campaign.completed")[0]
    assert started["data"]["campaign_id"] == campaign["id"]
    assert completed["data"] == {"campaign_id": campaign["id"],
                                 "counts": {**completed["data"]["counts"], "sent": 3}}
    assert completed["data"]["counts"]["queued"] == 0
    sent = receiver.events("message.sent")
    assert {e["data"]["email"] for e in sent} == {row["email"] for row in rows}
    assert all(e["data"]["campaign_id"] == campaign["id"]
               and e["data"]["message_id"].startswith(campaign["id"] + ".") for e in sent)


def test_a_cancelled_campaign_and_an_unsubscribe_are_announced(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    register(client, receiver, events=["campaign.cancelled", "recipient.unsubscribed"])
    campaign = create(client, csv_bytes(people(2)), send_at=str(time.time() + 3600))
    assert act(client, campaign["id"], "cancel").status_code == 200
    [cancelled] = receiver.events()
    assert cancelled["type"] == "campaign.cancelled"
    assert cancelled["data"]["campaign_id"] == campaign["id"]
    assert cancelled["data"]["counts"]["cancelled"] == 2
    token = unsubscribe_token("test-secret-key", "Ada@Example.com", campaign["id"])
    assert client.post(f"/unsubscribe/{token}").status_code == 200
    unsubscribed = receiver.events("recipient.unsubscribed")
    assert [e["data"] for e in unsubscribed] == [{"email": "ada@example.com",
                                                  "campaign_id": campaign["id"]}]


def test_types_an_endpoint_did_not_ask_for_are_not_sent(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    register(client, receiver, events=["message.failed"])
    client.post("/api/messages", headers=AUTH,
                json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    assert receiver.calls == []
    assert len(smtp_server.received) == 1


def test_the_readme_signature_check_verifies_a_real_call(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("Checking a signature:\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102  (the README's own code)
    secret = register(client, receiver)["secret"]
    client.post("/api/messages", headers=AUTH,
                json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    [call] = receiver.calls
    header = call.headers["Postroom-Signature"]
    assert namespace["verified"](secret, header, call.body)
    assert not namespace["verified"](secret, header, call.body + b" ")
    assert not namespace["verified"]("not the secret", header, call.body)
