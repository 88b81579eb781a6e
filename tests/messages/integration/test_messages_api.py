"""The vertical slice: POST /api/messages in, the mail read back from the SMTP server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer


def post_message(client: FlaskClient, **fields: object) -> dict[str, Any]:
    body = {"to": ["ada@example.com"], "subject": "Hello", "body": "Hi Ada"} | fields
    response = client.post("/api/messages", json=body, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    accepted: dict[str, Any] = response.get_json()
    return accepted


def test_message_is_sent_and_status_is_recorded(client: FlaskClient,
                                                smtp_server: SMTPTestServer) -> None:
    accepted = post_message(client, to=["Ada <ada@example.com>"], cc=["bob@example.com"],
                            bcc=["eve@example.com"], html="<p>Hi Ada</p>")
    assert accepted["status"] == "queued"

    [received] = smtp_server.received
    assert sorted(received.recipients) == ["ada@example.com", "bob@example.com",
                                           "eve@example.com"]
    message = received.message
    assert message["To"] == "Ada <ada@example.com>"
    assert message["Cc"] == "bob@example.com"
    assert message["Bcc"] is None
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().strip() == "Hi Ada"

    status = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert status["status"] == "sent"
    assert [(r["email"], r["status"], r["attempts"]) for r in status["recipients"]] == [
        ("ada@example.com", "sent", 1), ("bob@example.com", "sent", 1),
        ("eve@example.com", "sent", 1)]


def test_text_only_message_is_not_multipart(client: FlaskClient,
                                            smtp_server: SMTPTestServer) -> None:
    post_message(client)
    [received] = smtp_server.received
    assert received.message.get_content_type() == "text/plain"
    assert received.message["From"] == "Postroom <noreply@postroom.test>"


def test_refused_recipient_fails_alone(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.1.1 no such user" if address.startswith("ghost") else None)
    accepted = post_message(client, to=["ada@example.com", "ghost@example.com"])

    [received] = smtp_server.received
    assert received.recipients == ["ada@example.com"]
    status = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert status["status"] == "partial"
    ghost = status["recipients"][1]
    assert (ghost["status"], ghost["smtp_code"]) == ("failed", 550)
    assert "no such user" in ghost["error"]


def test_temporary_failure_is_retried(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    replies = iter(["451 4.3.0 try again later"])
    smtp_server.handler.rcpt_reply = lambda address: next(replies, None)
    accepted = post_message(client)

    assert len(smtp_server.received) == 1
    status = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert status["status"] == "sent"
    assert status["recipients"][0]["attempts"] == 2


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dGVzdDp0ZXN0"}])
def test_token_is_required(client: FlaskClient, smtp_server: SMTPTestServer,
                           headers: dict[str, str]) -> None:
    response = client.post("/api/messages", json={"to": "a@example.com", "subject": "x",
                                                  "body": "y"}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert smtp_server.received == []


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"to": ["not-an-address"], "subject": "x", "body": "y"}, "to.0", "@-sign"),
    ({"to": [], "subject": "x", "body": "y"}, "to", "at least 1"),
    ({"to": "a@example.com", "subject": "x\r\nBcc: evil@example.com", "body": "y"},
     "subject", "line breaks"),
    ({"to": "a@example.com", "subject": "x", "body": "y",
      "sender": "me@example.com\nBcc: evil@example.com"}, "sender", "line breaks"),
    ({"to": "a@example.com", "subject": "x", "body": "y",
      "headers": {"X-Tag": "a\r\nBcc: b@example.com"}}, "headers.X-Tag", "line breaks"),
    ({"to": "a@example.com", "subject": "x", "body": "y", "headers": {"Bcc": "b@example.com"}},
     "headers", "set by Postroom"),
    ({"to": "a@example.com", "subject": "x", "body": "y", "headers": {"X-Token": "t" * 995}},
     "headers", "too long for one header line"),
    ({"to": "a@example.com", "subject": "x"}, "body", "give body, html or both"),
    ({"to": "a@example.com", "subject": 5, "body": "y"}, "subject", "string"),
    ({"to": "a@example.com", "subject": "x", "body": "y", "colour": "red"}, "colour",
     "Extra inputs"),
])
def test_bad_input_is_422_with_field_and_reason(client: FlaskClient, smtp_server: SMTPTestServer,
                                                body: dict[str, object], field: str,
                                                reason: str) -> None:
    response = client.post("/api/messages", json=body, headers=AUTH)
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert field in fields, fields
    assert reason in fields[field]
    assert smtp_server.received == []


@pytest.mark.parametrize(("data", "content_type", "status"), [
    ("{not json", "application/json", 400),
    ("[1, 2]", "application/json", 422),
    ("to=a@example.com", "application/x-www-form-urlencoded", 415),
])
def test_malformed_bodies_are_4xx(client: FlaskClient, data: str, content_type: str,
                                  status: int) -> None:
    response = client.post("/api/messages", data=data, content_type=content_type, headers=AUTH)
    assert response.status_code == status
    assert "error" in response.get_json()


def test_unknown_message_is_404(client: FlaskClient) -> None:
    response = client.get("/api/messages/nope", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_openapi_document_describes_messages(client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    schema = document["components"]["schemas"]["MessageIn"]
    assert set(schema["required"]) >= {"to", "subject"}
    assert "post" in document["paths"]["/api/messages"]


@pytest.mark.worker
def test_message_through_a_real_worker(worker_app: Flask, celery_worker: object,
                                       smtp_server: SMTPTestServer) -> None:
    client = worker_app.test_client()
    accepted = post_message(client, to=["grace@example.com"])
    deadline = time.monotonic() + 30
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
        if status["status"] == "sent":
            break
        time.sleep(0.05)
    assert status["status"] == "sent"
    assert [r.recipients for r in smtp_server.received] == [["grace@example.com"]]


def test_openapi_document_is_valid_openapi(client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").get_json()
    validate(document)  # raises with the path of the first problem
    assert {"/api/messages", "/api/otp", "/api/campaigns"} <= set(document["paths"])


def test_openapi_describes_the_multipart_form_and_idempotency_key(client: FlaskClient) -> None:
    operation = client.get("/api/openapi.json").get_json()["paths"]["/api/messages"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["attachments"]["items"]["format"] == "binary"
    assert {"to", "subject", "body"} <= set(form)
    assert {"name": "Idempotency-Key", "in": "header"}.items() <= operation["parameters"][0].items()
