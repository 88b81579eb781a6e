"""Bad campaign input: each a clear 4xx naming the problem; nothing sent, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.campaign_helpers import csv_bytes, people, upload
from tests.support.smtp_server import SMTPTestServer


def assert_nothing_happened(client: FlaskClient, smtp_server: SMTPTestServer,
                            redis_client: redis.Redis) -> None:
    assert smtp_server.received == []
    assert client.get("/api/campaigns", headers=AUTH).get_json()["campaigns"] == []
    leftovers = [k for k in redis_client.scan_iter("postroom:*")
                 if b"campaign" in k and not k.startswith(b"postroom:celery")]
    assert leftovers == []


def error_of(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    error: dict[str, Any] = response.get_json()["error"]
    return error


@pytest.mark.parametrize(("data", "code", "field", "reason"), [
    (b"address,name\na@example.com,A\n", "no_email_column", "file", "no 'email' column"),
    (b"", "empty_file", "file", "empty"),
    (b"\xef\xbb\xbf", "empty_file", "file", "empty"),
    (b"email,name\n", "no_recipients", "recipients", "at least one"),
    ("email,name\nzoë@example.com,Zoë\n".encode("latin-1"), "not_utf8", "file", "UTF-8"),
    (b"email,name\n\"a@example.com,A\n", "no_recipients", None, None),
])
def test_unusable_files(client: FlaskClient, smtp_server: SMTPTestServer,
                        redis_client: redis.Redis, data: bytes, code: str, field: str | None,
                        reason: str | None) -> None:
    error = error_of(upload(client, data, subject="Hi", body="Hello"))
    assert error["code"] == code
    if field is not None:
        assert reason in error["fields"][field]
    assert_nothing_happened(client, smtp_server, redis_client)


def test_non_utf8_late_in_a_large_file(client: FlaskClient, smtp_server: SMTPTestServer,
                                       redis_client: redis.Redis) -> None:
    data = csv_bytes(people(3000)) + "zoë@example.com,Zoë,C1\n".encode("cp1252")
    error = error_of(upload(client, data))
    assert error["code"] == "not_utf8"
    assert_nothing_happened(client, smtp_server, redis_client)


def test_ten_thousand_bad_rows(client: FlaskClient, smtp_server: SMTPTestServer,
                               redis_client: redis.Redis) -> None:
    data = ("email,name\n" + "".join(f"user{i}-at-example.com,U{i}\n"
                                     for i in range(10_000))).encode()
    error = error_of(upload(client, data, subject="Hi {{ name }}", body="x"))
    assert error["code"] == "no_recipients"
    assert "10000 row(s) rejected" in error["message"]
    assert len(error["fields"]) == 20  # capped
    assert "invalid email 'user0-at-example.com'" in error["fields"]["line 2"]
    assert "line 21" in error["fields"]
    assert_nothing_happened(client, smtp_server, redis_client)


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({"subject": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}, "subject", "private"),
    ({"body": "{{ name['__class__'] }}"}, "body", "private"),
    ({"html": "{{ name|attr('__globals__') }}"}, "html", "private"),
    ({"body": "{% set x = [] %}{{ x.append(1) }}"}, "body", "unsafe"),
    ({"body": "{{ name "}, "body", "does not compile"),
    ({"subject": "{% if %}"}, "subject", "does not compile"),
    ({"body": "Hi {{ nickname }}"}, "file", "no column 'nickname'"),
    ({"body": "{{ 1 / 0 }}"}, "body", "division by zero"),
])
def test_templates_that_cannot_be_used(client: FlaskClient, smtp_server: SMTPTestServer,
                                       redis_client: redis.Redis, fields: dict[str, str],
                                       field: str, reason: str) -> None:
    error = error_of(upload(client, csv_bytes(people(3)), **fields))
    assert reason in error["fields"][field], error
    assert_nothing_happened(client, smtp_server, redis_client)


@pytest.mark.parametrize(("send_at", "reason"), [
    ("2020-01-01T00:00:00Z", "in the past"),
    ("1000", "in the past"),
    ("next tuesday", "not an ISO 8601"),
    ("2030-13-45T99:00", "not an ISO 8601"),
])
def test_bad_send_at(client: FlaskClient, smtp_server: SMTPTestServer,
                     redis_client: redis.Redis, send_at: str, reason: str) -> None:
    error = error_of(upload(client, csv_bytes(people(3)), send_at=send_at))
    assert reason in error["fields"]["send_at"]
    assert_nothing_happened(client, smtp_server, redis_client)


@pytest.mark.parametrize(("body", "field"), [
    ({"subject": "x", "body": "y", "recipients": []}, "recipients"),
    ({"subject": "x", "recipients": [{"email": "a@example.com"}]}, "body"),
    ({"subject": "x\nBcc: evil@example.com", "body": "y",
      "recipients": [{"email": "a@example.com"}]}, "subject"),
    ({"subject": "x", "body": "y", "recipients": [{"email": "a@example.com"}],
      "send_at": True}, "send_at"),
    ({"subject": "x", "body": "y", "recipients": [{"email": "a@example.com"}],
      "sender": "not an address"}, "sender"),
])
def test_bad_json(client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis,
                  body: dict[str, Any], field: str) -> None:
    error = error_of(client.post("/api/campaigns", json=body, headers=AUTH))
    assert field in error["fields"], error
    assert_nothing_happened(client, smtp_server, redis_client)


def test_json_recipients_all_bad(client: FlaskClient, smtp_server: SMTPTestServer,
                                 redis_client: redis.Redis) -> None:
    body = {"subject": "x", "body": "y",
            "recipients": ["a@example.com", {"name": "no address"}, {"email": "a@b"},
                           {"email": "c@example.com", "tags": ["a"]}]}
    error = error_of(client.post("/api/campaigns", json=body, headers=AUTH))
    assert error["fields"] == {
        "index 0": "must be an object with an 'email' key",
        "index 1": "missing email",
        "index 2": error["fields"]["index 2"],
        "index 3": "variable 'tags' must be a string, number or boolean"}
    assert error["fields"]["index 2"].startswith("invalid email 'a@b'")
    assert_nothing_happened(client, smtp_server, redis_client)


def test_upload_without_a_file(client: FlaskClient, smtp_server: SMTPTestServer,
                               redis_client: redis.Redis) -> None:
    response = client.post("/api/campaigns", data={"subject": "x", "body": "y"}, headers=AUTH,
                           content_type="multipart/form-data")
    assert error_of(response)["fields"] == {"file": "missing"}
    assert_nothing_happened(client, smtp_server, redis_client)


def test_upload_too_large(client: FlaskClient, app: Any, smtp_server: SMTPTestServer,
                          redis_client: redis.Redis) -> None:
    app.config["CAMPAIGN_MAX_UPLOAD_BYTES"] = 10_000
    response = upload(client, csv_bytes(people(1000)))
    assert error_of(response, 413)["code"] == "request_entity_too_large"
    assert_nothing_happened(client, smtp_server, redis_client)
