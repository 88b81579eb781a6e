"""Draft campaigns with Celery eager: nothing sent until started; a test send to the
operator is marked, goes only to the addresses given, and leaves the draft as it was."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.campaign_helpers import act, create, csv_bytes, people, show
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"MAIL_MAX_EMAILS": 20, "PUBLIC_URL": "https://mail.example.org",
            "CAMPAIGN_BATCH_SIZE": 100, "CAMPAIGN_BATCHES_AHEAD": 1}


def test_draft_sends_nothing_then_test_then_start(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    accepted = create(client, csv_bytes(people(3)), draft="true", name="Spring")
    assert accepted["status"] == "draft"
    time.sleep(0.3)
    assert smtp_server.received == []
    assert show(client, accepted["id"])["status"] == "draft"

    reply = client.post(f"/api/campaigns/{accepted['id']}/test", headers=AUTH,
                        json={"to": ["Operator@Example.org", "second@example.org"]})
    assert reply.status_code == 202, reply.get_json()
    body = reply.get_json()
    assert body["status"] == "draft" and body["to"] == ["Operator@example.org",
                                                        "second@example.org"]
    [test] = smtp_server.received
    assert sorted(test.recipients) == ["Operator@example.org", "second@example.org"]
    assert test.message["Subject"] == "[Test] Hello Person 0"
    assert "Dear Person 0, your code is C00000." in test.message.get_body(
        ("plain",)).get_content()
    shown = show(client, accepted["id"])
    assert shown["status"] == "draft"
    assert shown["counts"]["sent"] == 0 and shown["counts"]["queued"] == 3
    message = client.get(f"/api/messages/{body['message_id']}", headers=AUTH).get_json()
    assert message["status"] == "sent"

    started = act(client, accepted["id"], "start")
    assert started.status_code == 200, started.get_json()
    assert show(client, accepted["id"])["status"] == "completed"
    campaign_mail = [r for r in smtp_server.received if r is not test]
    assert sorted(r.recipients[0] for r in campaign_mail) == [p["email"] for p in people(3)]
    assert all(not r.message["Subject"].startswith("[Test]") for r in campaign_mail)
    # started once: a second start, or a test of a started campaign, is refused
    assert act(client, accepted["id"], "start").status_code == 409
    again = client.post(f"/api/campaigns/{accepted['id']}/test", headers=AUTH,
                        json={"to": ["operator@example.org"]})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "conflict"


def test_json_draft_with_send_at_is_scheduled_on_start(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    later = time.time() + 3600
    reply = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Hi", "body": "Hello", "draft": True, "send_at": later,
        "recipients": [{"email": "ada@example.com"}]})
    assert reply.status_code == 202, reply.get_json()
    campaign_id = reply.get_json()["id"]
    assert reply.get_json()["status"] == "draft"
    assert act(client, campaign_id, "pause").status_code == 409
    started = act(client, campaign_id, "start")
    assert started.get_json()["status"] == "scheduled"
    assert smtp_server.received == []
    assert act(client, campaign_id, "cancel").get_json()["status"] == "cancelled"


@pytest.mark.parametrize(("body", "field"), [
    ({"to": []}, "to"),
    ({"to": "ada@example.com"}, "to"),
    ({"to": ["not an address"]}, "to.0"),
    ({"to": [f"p{i}@example.com" for i in range(11)]}, "to"),
    ({"to": [7]}, "to.0"),
    ({"to": ["ada@example.com"], "cc": ["x@example.com"]}, "cc"),
])
def test_bad_test_requests_are_422(client: FlaskClient, smtp_server: SMTPTestServer,
                                   body: dict[str, Any], field: str) -> None:
    accepted = create(client, csv_bytes(people(1)), draft="true")
    reply = client.post(f"/api/campaigns/{accepted['id']}/test", headers=AUTH, json=body)
    assert reply.status_code == 422, reply.get_json()
    assert field in reply.get_json()["error"]["fields"]
    assert smtp_server.received == []


def test_test_and_start_of_unknown_campaign_are_404(client: FlaskClient, app: Flask) -> None:
    missing = "0" * 32
    assert client.post(f"/api/campaigns/{missing}/test", headers=AUTH,
                       json={"to": ["a@example.com"]}).status_code == 404
    assert act(client, missing, "start").status_code == 404
    spec = client.get("/api/openapi.json", headers=AUTH).get_json()
    assert "post" in spec["paths"]["/api/campaigns/{campaign_id}/test"]
    assert "post" in spec["paths"]["/api/campaigns/{campaign_id}/start"]
    assert "draft" in spec["components"]["schemas"]["CampaignIn"]["properties"]


def test_a_drafts_attachments_go_with_its_test_and_must_still_be_stored_to_start(
        client: FlaskClient, app: Flask, smtp_server: SMTPTestServer) -> None:
    reply = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Report", "body": "Attached", "draft": True,
        "attachments": [{"filename": "r.txt", "content": base64.b64encode(b"facts").decode()}],
        "recipients": [{"email": "ada@example.com"}]})
    assert reply.status_code == 202, reply.get_json()
    campaign_id = reply.get_json()["id"]
    tested = client.post(f"/api/campaigns/{campaign_id}/test", headers=AUTH,
                         json={"to": ["ops@example.org"]})
    assert tested.status_code == 202
    [test] = smtp_server.received
    [part] = list(test.message.iter_attachments())
    assert part.get_filename() == "r.txt" and part.get_content() == "facts"

    redis = app.extensions["redis"]
    for name in redis.scan_iter(match="*attachment:*"):
        redis.delete(name)
    refused = act(client, campaign_id, "start")
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "attachment_expired"
    assert show(client, campaign_id)["status"] == "draft"
    assert len(smtp_server.received) == 1
