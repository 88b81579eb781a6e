"""POST /api/messages with an Idempotency-Key: a repeat sends nothing new."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import API_TOKEN, AUTH
from tests.support.smtp_server import SMTPTestServer

BODY = {"to": ["ada@example.com"], "subject": "Receipt", "body": "Thank you"}


def post(client: FlaskClient, body: Mapping[str, object], key: str,
         token: str = API_TOKEN) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = client.post("/api/messages", json=body, headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": key})
    return response.status_code, response.get_json(), dict(response.headers)


def test_same_key_and_body_returns_the_first_message(client: FlaskClient,
                                                     smtp_server: SMTPTestServer) -> None:
    status, first, headers = post(client, BODY, "order-1001")
    assert status == 202 and first["status"] == "queued"
    assert "Idempotent-Replayed" not in headers
    status, again, headers = post(client, BODY, "order-1001")
    assert status == 202
    assert again["id"] == first["id"]
    assert again["status"] == "sent"  # where the first one is now
    assert headers["Idempotent-Replayed"] == "true"
    assert len(smtp_server.received) == 1


def test_same_key_with_another_body_is_409(client: FlaskClient,
                                           smtp_server: SMTPTestServer) -> None:
    post(client, BODY, "order-1002")
    status, error, _ = post(client, BODY | {"body": "Thank you!"}, "order-1002")
    assert status == 409
    assert error["error"]["code"] == "idempotency_conflict"
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize("config_overrides", [{"API_TOKENS": [API_TOKEN, "other-token"]}])
def test_keys_belong_to_one_client(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    _, mine, _ = post(client, BODY, "shared-key")
    _, theirs, _ = post(client, BODY, "shared-key", token="other-token")
    assert mine["id"] != theirs["id"]
    assert len(smtp_server.received) == 2


def test_without_a_key_every_post_is_a_new_message(client: FlaskClient,
                                                   smtp_server: SMTPTestServer) -> None:
    ids = {client.post("/api/messages", json=BODY, headers=AUTH).get_json()["id"]
           for _ in range(2)}
    assert len(ids) == 2
    assert len(smtp_server.received) == 2


def test_key_is_kept_for_24_hours(client: FlaskClient, redis_client: redis.Redis) -> None:
    post(client, BODY, "order-1003")
    [name] = list(redis_client.scan_iter(match="postroom:idempotency:*"))
    assert 24 * 3600 - 5 <= redis_client.ttl(name) <= 24 * 3600


def test_multipart_repeat_with_the_same_file_is_recognised(client: FlaskClient,
                                                           smtp_server: SMTPTestServer) -> None:
    def send(content: bytes) -> tuple[int, dict[str, object]]:
        response = client.post("/api/messages", content_type="multipart/form-data",
                               headers=AUTH | {"Idempotency-Key": "upload-7"},
                               data={"to": "ada@example.com", "subject": "x", "body": "x",
                                     "file": (io.BytesIO(content), "a.txt")})
        return response.status_code, response.get_json()

    first = send(b"version 1")
    assert send(b"version 1") == (202, {"id": first[1]["id"], "status": "sent"})
    assert send(b"version 2")[0] == 409
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve"])
def test_malformed_key_is_422(client: FlaskClient, smtp_server: SMTPTestServer,
                              key: str) -> None:
    response = client.post("/api/messages", json=BODY,
                           headers=AUTH | {"Idempotency-Key": key.encode().decode("latin-1")})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["error"]["fields"]
    assert smtp_server.received == []
