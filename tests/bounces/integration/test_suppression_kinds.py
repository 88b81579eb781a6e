"""Suppression by kind, end to end (real web app, Celery eager, real Redis and SMTP): a hard
bounce or a complaint stops every later message, campaign recipient and code to the
address until an operator lifts it; an unsubscribe stops campaigns only."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tasks.bounces.store import SuppressionList
from tests.campaigns.integration.test_campaign_pages import sign_in
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, recipients
from tests.support.paths import FIXTURES
from tests.support.smtp_server import SMTPTestServer

FIXTURES = FIXTURES / "bounces"
ADA = "ada@example.com"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://news.example.org", "ADMIN_USERNAME": "operator",
            "ADMIN_PASSWORD": "correct horse battery"}


def send_message(client: FlaskClient, *to: str) -> dict[str, Any]:
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": list(to), "subject": "Your invoice", "body": "Attached."})
    assert accepted.status_code == 202, accepted.get_json()
    shown = client.get(f"/api/messages/{accepted.get_json()['id']}", headers=AUTH)
    body: dict[str, Any] = shown.get_json()
    return body


def request_code(client: FlaskClient, email: str) -> dict[str, Any]:
    answer = client.post("/api/otp", json={"email": email}, headers=AUTH)
    assert answer.status_code == 202, answer.get_json()
    assert set(answer.get_json()) == {"id", "status"}
    shown: dict[str, Any] = client.get(f"/api/otp/{answer.get_json()['id']}",
                                       headers=AUTH).get_json()
    return shown


def report_back(client: FlaskClient, shape: str, smtp_server: SMTPTestServer) -> None:
    [received] = smtp_server.to(ADA)
    text = (FIXTURES / f"{shape}.eml").read_text()
    for field, value in (("{recipient}", ADA), ("{return_path}", "bounces@example.org"),
                         ("{message_id}", str(received.message["Message-ID"]))):
        text = text.replace(field, value)
    answer = client.post("/api/bounces", data=text.replace("\n", "\r\n").encode(),
                         headers=AUTH, content_type="message/rfc822")
    assert answer.status_code == 200, answer.get_json()


@pytest.mark.parametrize(("shape", "reason"), [("postfix", "bounced"), ("arf", "complained")])
def test_a_bounce_or_complaint_stops_messages_campaigns_and_codes_until_lifted(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis,
        shape: str, reason: str) -> None:
    send_message(client, ADA)
    report_back(client, shape, smtp_server)
    suppressed = SuppressionList(redis_client).get(ADA)
    assert suppressed is not None and suppressed.reason == reason
    smtp_server.reset()

    later = send_message(client, ADA, "bob@example.net")
    assert [(r["email"], r["status"], r.get("error")) for r in later["recipients"]] == [
        (ADA, "suppressed", f"on the suppression list ({reason})"),
        ("bob@example.net", "sent", None)]
    [to_bob] = smtp_server.received
    assert to_bob.recipients == ["bob@example.net"]  # ada was not in the envelope

    stranger = request_code(client, "carol@example.org")
    barred = request_code(client, ADA)
    # the OTP API answers alike: nobody learns from it which addresses bounced
    assert {k: v for k, v in barred.items() if k not in {"id", "expires_at", "updated_at"}} \
        == {k: v for k, v in stranger.items() if k not in {"id", "expires_at", "updated_at"}}
    assert barred["status"] == "sent"
    assert smtp_server.to(ADA) == [] and len(smtp_server.to("carol@example.org")) == 1

    campaign = create(client, csv_bytes([{"email": ADA, "name": "Ada", "code": "A1"}]))
    assert [(r["status"], r.get("error")) for r in recipients(client, campaign["id"])] == [
        ("suppressed", f"on the suppression list ({reason})")]
    assert smtp_server.to(ADA) == []
    sign_in(client)
    page = client.get(f"/campaigns/{campaign['id']}/recipients").get_data(as_text=True)
    assert f"on the suppression list ({reason})" in page

    shown = client.get(f"/api/suppressions/{ADA}", headers=AUTH).get_json()
    assert shown["reason"] == reason
    assert client.delete(f"/api/suppressions/{ADA}", headers=AUTH).status_code == 204
    again = send_message(client, ADA)
    assert [r["status"] for r in again["recipients"]] == ["sent"]
    assert request_code(client, ADA)["status"] == "sent"
    assert len(smtp_server.to(ADA)) == 2  # the message and the code


def test_an_unsubscribe_stops_campaigns_only(client: FlaskClient,
                                            smtp_server: SMTPTestServer) -> None:
    put = client.put(f"/api/suppressions/{ADA}", json={"reason": "unsubscribed"},
                     headers=AUTH)
    assert put.status_code == 200
    assert request_code(client, ADA)["status"] == "sent"
    [code_mail] = smtp_server.to(ADA)
    assert "verification code" in str(code_mail.message["Subject"])
    assert [r["status"] for r in send_message(client, ADA)["recipients"]] == ["sent"]
    assert len(smtp_server.to(ADA)) == 2  # a password reset still arrives
    campaign = create(client, csv_bytes([
        {"email": ADA, "name": "Ada", "code": "A1"},
        {"email": "bob@example.net", "name": "Bob", "code": "B1"}]))
    assert [r["status"] for r in recipients(client, campaign["id"])] == ["suppressed", "sent"]
    assert len(smtp_server.to(ADA)) == 2  # no newsletter
