"""Flask-Mail's testing habits hold for apps built on Postroom, with Celery eager:
``MAIL_SUPPRESS_SEND`` follows ``app.testing``, ``email_dispatched`` fires for every
message sent or suppressed, and ``mail.record_messages()`` captures API messages,
one-time-code mail and campaign mail."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import pytest
import redis
from flask import Flask
from flask_mail import Message

from tests.conftest import AUTH, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.extensions import mail

SENDER = "Postroom <noreply@postroom.test>"


def app_under_test(redis_url: str, smtp_port: int, **overrides: Any) -> Flask:
    """The app as a Flask developer's test builds it: TESTING on, MAIL_SUPPRESS_SEND unset."""
    config = app_config(redis_url, smtp_port, WTF_CSRF_ENABLED=False, **overrides)
    if "MAIL_SUPPRESS_SEND" not in overrides:
        del config["MAIL_SUPPRESS_SEND"]
    return create_app(config)


def code_in(message: Message) -> str:
    match = re.search(r"^\s+([0-9]{6})\s*$", message.body or "", flags=re.MULTILINE)
    assert match, message.body
    return match.group(1)


def test_suppress_send_follows_testing_unless_set(redis_client: redis.Redis, redis_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAIL_SUPPRESS_SEND", raising=False)
    testing = create_app({"TESTING": True, "REDIS_URL": redis_url})
    assert testing.config["MAIL_SUPPRESS_SEND"] is True
    assert testing.extensions["mail"].suppress is True
    development = create_app({"POSTROOM_ENV": "development", "REDIS_URL": redis_url})
    assert development.config["MAIL_SUPPRESS_SEND"] is False
    explicit = create_app({"TESTING": True, "REDIS_URL": redis_url, "MAIL_SUPPRESS_SEND": False})
    assert explicit.config["MAIL_SUPPRESS_SEND"] is False
    assert explicit.extensions["mail"].suppress is False
    monkeypatch.setenv("MAIL_SUPPRESS_SEND", "no")
    from_environment = create_app({"TESTING": True, "REDIS_URL": redis_url})
    assert from_environment.config["MAIL_SUPPRESS_SEND"] is False


def test_api_message_is_recorded_and_not_sent_when_testing(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    app = app_under_test(redis_url, smtp_server.port)
    payload = {"to": ["ada@example.com"], "cc": ["bob@example.com"], "subject": "Report",
               "body": "See attached.", "html": "<p>See attached.</p>",
               "reply_to": "desk@example.com",
               "attachments": [{"filename": "report.txt", "content_type": "text/plain",
                                "content": base64.b64encode(b"figures").decode()}]}
    with app.extensions["mail"].record_messages() as outbox:
        response = app.test_client().post("/api/messages", json=payload, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    [message] = outbox
    assert isinstance(message, Message)
    assert message.subject == "Report"
    assert message.recipients == ["ada@example.com"] and message.cc == ["bob@example.com"]
    assert message.sender == SENDER
    assert message.body == "See attached." and message.html == "<p>See attached.</p>"
    assert message.reply_to == "desk@example.com"
    [attachment] = message.attachments
    assert (attachment.filename, attachment.content_type, attachment.data) == (
        "report.txt", "text/plain", b"figures")
    assert message.msgId.startswith(f"<{response.get_json()['id']}@")
    assert smtp_server.session_count == 0  # suppressed: TESTING and no MAIL_SUPPRESS_SEND
    status = app.test_client().get(f"/api/messages/{response.get_json()['id']}",
                                   headers=AUTH).get_json()
    assert {r["status"] for r in status["recipients"]} == {"suppressed"}


def test_sent_messages_are_signalled_and_refused_ones_are_not(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    app = app_under_test(redis_url, smtp_server.port, MAIL_SUPPRESS_SEND=False)
    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.1.1 no such user" if address.startswith("refused@") else None)
    client = app.test_client()
    with app.extensions["mail"].record_messages() as outbox:
        sent = client.post("/api/messages", headers=AUTH, json={
            "to": "ada@example.com", "subject": "Hello", "html": "<p>Hello <b>Ada</b></p>"})
        refused = client.post("/api/messages", headers=AUTH, json={
            "to": "refused@example.com", "subject": "Nope", "body": "x"})
    assert sent.status_code == refused.status_code == 202
    [message] = outbox
    assert message.subject == "Hello" and message.recipients == ["ada@example.com"]
    assert message.body is not None and "Hello Ada" in message.body  # the derived text part
    [received] = smtp_server.to("ada@example.com")
    assert received.message["Message-ID"] == message.msgId


def test_verify_then_validate_with_the_code_from_the_outbox(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    app = app_under_test(redis_url, smtp_server.port)
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    with app.extensions["mail"].record_messages() as outbox:
        response = client.post("/verify", data={"email": "ada@example.com"})
    assert response.status_code == 303
    request_id = response.headers["Location"].split("request=", 1)[1]
    [message] = outbox
    assert message.recipients == ["ada@example.com"]
    assert message.subject == "Your verification code"
    code = code_in(message)
    assert message.html is not None and code in message.html
    assert smtp_server.session_count == 0
    status = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
    assert status["status"] == "sent"  # suppressed counts as sent, as Flask-Mail has it
    assert "MAIL_SUPPRESS_SEND" in status["error"]

    page = client.post("/validate", data={"request_id": request_id, "code": code})
    assert page.status_code == 200
    assert "Email address verified" in page.get_data(as_text=True)
    assert code not in caplog.text  # the code went into the message and nowhere else
    assert not any(code in str(record.args) for record in caplog.records)


def test_campaign_mail_is_recorded_per_recipient(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    app = app_under_test(redis_url, smtp_server.port, PUBLIC_URL="https://mail.example.org")
    with mail.record_messages() as outbox:  # the app's Mail object works as well
        response = app.test_client().post("/api/campaigns", headers=AUTH, json={
            "name": "Launch", "subject": "Hello {{ name }}", "body": "Dear {{ name }}",
            "recipients": [{"email": "ada@example.com", "name": "Ada"},
                           {"email": "bob@example.com", "name": "Bob"}]})
    assert response.status_code == 202, response.get_json()
    by_address = {message.recipients[0]: message for message in outbox}
    assert sorted(by_address) == ["ada@example.com", "bob@example.com"]
    assert by_address["ada@example.com"].subject == "Hello Ada"
    assert by_address["bob@example.com"].body is not None
    assert "Dear Bob" in by_address["bob@example.com"].body
    assert by_address["ada@example.com"].extra_headers is not None
    assert by_address["ada@example.com"].extra_headers["List-Unsubscribe"].startswith(
        "<https://mail.example.org/unsubscribe/")
    assert smtp_server.session_count == 0
