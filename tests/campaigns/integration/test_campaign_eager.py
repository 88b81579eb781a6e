"""Campaigns end to end with Celery eager: the CSV in, every message read back from SMTP."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks.bounces.store import SuppressionList
from tasks.campaigns.tasks import start_due_campaigns
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people, recipients, show, upload
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"MAIL_MAX_EMAILS": 20, "PUBLIC_URL": "https://mail.example.org",
            "CAMPAIGN_BATCH_SIZE": 100, "CAMPAIGN_BATCHES_AHEAD": 1}


def test_250_recipient_csv_campaign_is_personalised_and_batched(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    rows = people(250)
    accepted = create(client, csv_bytes(rows, bom=True),
                      html="<p>Hi {{ name }} &amp; welcome, {{ code }}</p>", name="Launch")
    assert (accepted["status"], accepted["total"], accepted["rejected"]) == ("queued", 250, 0)

    received = smtp_server.received
    assert len(received) == 250
    by_address = {r.recipients[0]: r for r in received}
    assert sorted(by_address) == sorted(row["email"] for row in rows)
    assert all(len(r.recipients) == 1 for r in received)
    for row in rows:
        message = by_address[row["email"]].message
        assert message["Subject"] == f"Hello {row['name']}"
        assert message["To"] == row["email"]
        text = message.get_body(("plain",)).get_content()
        assert f"Dear {row['name']}, your code is {row['code']}." in text
        html = message.get_body(("html",)).get_content()
        assert f"<p>Hi {row['name']} &amp; welcome, {row['code']}</p>" in html
        assert message["List-Unsubscribe"].startswith("<https://mail.example.org/unsubscribe/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # batches of 100, 100 and 50 recipients; MAIL_MAX_EMAILS=20 -> 5 + 5 + 3 sessions
    assert smtp_server.session_count == 13
    status = show(client, accepted["id"])
    assert status["status"] == "completed"
    assert status["counts"]["sent"] == 250 and status["total"] == 250
    assert status["started_at"] <= status["finished_at"]
    assert {r["status"] for r in recipients(client, accepted["id"])} == {"sent"}


def test_bad_rows_duplicates_and_suppressed_addresses(
        client: FlaskClient, app: Flask, smtp_server: SMTPTestServer) -> None:
    SuppressionList(app.extensions["redis"]).add("Gone@Example.com")
    data = (b"email,name\n"
            b"ada@example.com,Ada\n"
            b"not-an-address,Nobody\n"       # line 3
            b",Empty\n"                      # line 4
            b"ADA@example.com,Ada again\n"   # duplicate of line 2
            b"gone@example.com,Gone\n"
            b"bob@example.com,Bob,extra\n"   # line 7: too many fields
            b"\n"
            b"cy@example.com,Cy\n")
    accepted = create(client, data, subject="Hi {{ name }}", body="Hello {{ name }}")
    assert accepted["total"] == 3
    assert (accepted["duplicates"], accepted["suppressed"], accepted["rejected"]) == (1, 1, 3)
    assert [row["line"] for row in accepted["rejected_rows"]] == [3, 4, 7]
    assert "invalid email" in accepted["rejected_rows"][0]["reason"]
    assert accepted["rejected_rows"][1]["reason"] == "missing email"

    assert sorted(r.recipients[0] for r in smtp_server.received) == [
        "ada@example.com", "cy@example.com"]
    assert smtp_server.to("ada@example.com")[0].message["Subject"] == "Hi Ada"
    people_by_status = {r["email"]: r["status"] for r in recipients(client, accepted["id"])}
    assert people_by_status == {"ada@example.com": "sent", "gone@example.com": "suppressed",
                                "cy@example.com": "sent"}
    assert show(client, accepted["id"])["status"] == "completed"


def test_json_campaign_with_variables(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    body = {"name": "JSON", "subject": "{{ greeting }}, {{ name|upper }}",
            "body": "{% if vip %}VIP {% endif %}{{ email }}",
            "recipients": [{"email": "ada@example.com", "name": "Ada", "greeting": "Hi",
                            "vip": True},
                           {"email": "bob@example.com", "name": "Bob", "greeting": "Yo",
                            "vip": False},
                           {"email": "cy@example.com", "greeting": "Hey"}]}
    response = client.post("/api/campaigns", json=body, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    accepted = response.get_json()
    assert accepted["total"] == 2
    assert accepted["rejected_rows"] == [{"index": 2, "reason":
                                          "missing variable 'name' used by the templates"}]
    [ada] = smtp_server.to("ada@example.com")
    assert ada.message["Subject"] == "Hi, ADA"
    assert ada.message.get_content().strip() == "VIP ada@example.com"
    [bob] = smtp_server.to("bob@example.com")
    assert bob.message.get_content().strip() == "bob@example.com"


def test_list_and_recipient_paging(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.1.1 no such user" if address.endswith("7@example.com") else None)
    first = create(client, csv_bytes(people(30)), name="first")
    second = create(client, csv_bytes(people(5, domain="example.net")), name="second")

    listed = client.get("/api/campaigns", headers=AUTH).get_json()["campaigns"]
    assert [c["name"] for c in listed] == ["second", "first"]
    page = client.get(f"/api/campaigns/{first['id']}/recipients?limit=10",
                      headers=AUTH).get_json()
    assert [r["index"] for r in page["recipients"]] == list(range(10))
    assert page["next_cursor"] == 10
    failed = recipients(client, first["id"], "failed")
    assert [r["email"] for r in failed] == ["person00007@example.com",
                                            "person00017@example.com",
                                            "person00027@example.com"]
    assert all(r["smtp_code"] == 550 and "no such user" in r["error"] for r in failed)
    assert show(client, second["id"])["counts"]["sent"] == 5
    response = client.get(f"/api/campaigns/{first['id']}/recipients?status=lost", headers=AUTH)
    assert response.status_code == 422
    assert "status" in response.get_json()["error"]["fields"]
    response = client.get(f"/api/campaigns/{first['id']}/recipients?cursor=x", headers=AUTH)
    assert response.status_code == 422


def test_unknown_campaign_and_action(client: FlaskClient) -> None:
    assert client.get("/api/campaigns/nope", headers=AUTH).status_code == 404
    assert client.post("/api/campaigns/nope/pause", headers=AUTH).status_code == 404
    assert client.get("/api/campaigns", headers={}).status_code == 401


def test_openapi_describes_campaigns(client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").get_json()
    assert "post" in document["paths"]["/api/campaigns"]
    assert "409" in document["paths"]["/api/campaigns/{campaign_id}/pause"]["post"]["responses"]
    assert "recipients" in document["components"]["schemas"]["CampaignIn"]["properties"]


def test_temporary_failures_are_retried_within_the_batch(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    deferred_once: set[str] = set()

    def rcpt_reply(address: str) -> str | None:
        if address.endswith(("3@example.com", "8@example.com")) and address not in deferred_once:
            deferred_once.add(address)
            return "451 4.3.0 greylisted, try again"
        return None

    smtp_server.handler.rcpt_reply = rcpt_reply
    accepted = create(client, csv_bytes(people(40)))
    assert len(deferred_once) == 8
    assert len({r.recipients[0] for r in smtp_server.received}) == len(smtp_server.received) == 40
    shown = show(client, accepted["id"])
    assert shown["status"] == "completed" and shown["counts"]["sent"] == 40
    attempts = {r["email"]: r["attempts"] for r in recipients(client, accepted["id"])}
    assert {attempts[a] for a in deferred_once} == {2}
    assert {n for a, n in attempts.items() if a not in deferred_once} == {1}


@pytest.mark.parametrize("config_overrides", [
    {"MAIL_MAX_CONNECTIONS": 2, "MAIL_RATE_LIMIT": 1000.0, "MAIL_MAX_EMAILS": 20}])
def test_campaign_honours_the_shared_limits(client: FlaskClient, app: Flask,
                                            smtp_server: SMTPTestServer) -> None:
    accepted = create(client, csv_bytes(people(45)))
    assert show(client, accepted["id"])["counts"]["sent"] == 45
    assert smtp_server.session_count == 3  # 20 + 20 + 5 on one batch's connection
    leftovers = [k for k in app.extensions["redis"].scan_iter("postroom:throttle:*")
                 if app.extensions["redis"].ttl(k) == -1]
    assert leftovers == []


def test_attachments_go_to_every_recipient(client: FlaskClient, app: Flask,
                                           smtp_server: SMTPTestServer) -> None:
    pdf = b"%PDF-1.4 programme " * 50
    response = upload(client, csv_bytes(people(5)),
                      attachments=[(io.BytesIO(pdf), "Programme été.pdf"),
                                   (io.BytesIO(b"a,b\n1,2\n"), "data.csv")],
                      send_at=str(time.time() + 3 * 24 * 3600))
    assert response.status_code == 202, response.get_json()
    campaign_id = response.get_json()["id"]
    redis_client = app.extensions["redis"]
    digest = hashlib.sha256(pdf).hexdigest()
    assert redis_client.ttl(f"postroom:attachment:{digest}") > 9 * 24 * 3600  # outlives send_at

    redis_client.zadd("postroom:campaigns:scheduled", {campaign_id: time.time() - 1})
    start_due_campaigns.delay()
    assert len(smtp_server.received) == 5
    for received in smtp_server.received:
        files = {part.get_filename(): part.get_content()
                 for part in received.message.iter_attachments()}
        assert files == {"Programme été.pdf": pdf, "data.csv": "a,b\n1,2\n"}

    json_body = {"subject": "x", "body": "y", "recipients": [{"email": "ada@example.com"}],
                 "attachments": [{"filename": "note.txt",
                                  "content": base64.b64encode(b"hello").decode()}]}
    assert client.post("/api/campaigns", json=json_body, headers=AUTH).status_code == 202
    [note] = list(smtp_server.to("ada@example.com")[0].message.iter_attachments())
    assert note.get_filename() == "note.txt" and note.get_content() == "hello"


def test_oversized_attachment_is_413(client: FlaskClient, app: Flask,
                                     smtp_server: SMTPTestServer) -> None:
    app.config["MAX_ATTACHMENT_BYTES"] = 100
    response = upload(client, csv_bytes(people(2)),
                      attachments=[(io.BytesIO(b"x" * 101), "big.bin")])
    assert response.status_code == 413
    assert "big.bin" in response.get_json()["error"]["fields"]["attachments"]
    assert smtp_server.received == []
