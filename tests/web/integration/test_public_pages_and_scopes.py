"""What public pages show and forbid (relay details, framing) and what each API token may do."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tasks.codes.store import OTPStore
from tests.conftest import API_TOKEN, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.config import ConfigError
from web.testing import free_port

READER, SENDER, ADMIN = "reader-token-1", "sender-token-2", "admin-token-3"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"API_TOKENS": [API_TOKEN, f"{READER}:read", f"{SENDER}:send+read", f"{ADMIN}:admin"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_token(client: FlaskClient, path: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                      client.get(path).get_data(as_text=True))
    assert match
    return match.group(1)


def test_the_public_page_with_the_relay_down_shows_no_host_port_or_exception(
        redis_client: redis.Redis, redis_url: str) -> None:
    closed = free_port()  # nothing listens: the relay is down
    app = create_app(app_config(redis_url, closed, CELERY={}))  # queued for a worker
    client = app.test_client()
    asked = client.post("/verify", data={"email": "ada@example.com",
                                         "csrf_token": csrf_token(client, "/verify")})
    assert asked.status_code == 303
    request_id = asked.location.split("request=")[1]
    # what the worker records when the relay refuses the connection (tasks.delivery.engine.session)
    error = (f"connection to 127.0.0.1:{closed} failed: "
             "ConnectionRefusedError(111, 'Connection refused')")
    with app.app_context():
        store = OTPStore.from_config(redis_client, app.config)
        assert store.record_delivery(request_id, "deferred", None, error) is not None
    kept = client.get(f"/api/otp/{request_id}", headers=bearer(API_TOKEN)).get_json()
    assert kept["status"] == "deferred" and kept["error"] == error  # the operator's API
    page = client.get(f"/validate?request={request_id}").get_data(as_text=True)
    poll = client.get(f"/verify/status/{request_id}")
    for shown in (page, poll.get_data(as_text=True)):
        assert str(closed) not in shown and "127.0.0.1" not in shown
        assert "ConnectionRefusedError" not in shown and "refused" not in shown.lower()
    assert "We could not send the code yet; retrying." in page
    assert poll.get_json()["reason"] is None


def test_a_refused_address_still_shows_the_servers_answer(client: FlaskClient,
                                                          smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = lambda address: "550 5.1.1 no such user here"
    asked = client.post("/verify", data={"email": "ghost@example.com",
                                         "csrf_token": csrf_token(client, "/verify")})
    request_id = asked.location.split("request=")[1]
    poll = client.get(f"/verify/status/{request_id}").get_json()
    assert poll["status"] == "failed" and poll["reason"] == "550 5.1.1 no such user here"


@pytest.mark.parametrize("path", ["/", "/verify", "/validate?request=nope",
                                  "/campaigns/login", "/api/openapi.json", "/healthz"])
def test_pages_may_not_be_framed(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_a_policy_a_view_sets_keeps_its_own_directives(client: FlaskClient) -> None:
    created = client.post("/api/messages", json={"to": ["ada@example.com"], "subject": "x",
                                                 "body": "x"}, headers=bearer(API_TOKEN))
    assert created.headers["X-Frame-Options"] == "DENY"
    assert created.headers["Content-Security-Policy"].count("frame-ancestors") == 1


def test_a_read_only_token_cannot_send(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    message = {"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"}
    refused = client.post("/api/messages", json=message, headers=bearer(READER))
    assert refused.status_code == 403
    error = refused.get_json()["error"]
    assert error["code"] == "forbidden" and "send" in error["message"]
    for _ in range(5):  # more than OTP_RATE_LIMIT_PER_ADDRESS allows in a minute
        assert client.post("/api/otp", json={"email": "ada@example.com"},
                           headers=bearer(READER)).status_code == 403
    assert smtp_server.received == []
    # refused before the throttles: the address's budget is untouched
    assert client.post("/api/otp", json={"email": "ada@example.com"},
                       headers=bearer(SENDER)).status_code == 202
    smtp_server.reset()
    sent = client.post("/api/messages", json=message, headers=bearer(SENDER))
    assert sent.status_code == 202
    shown = client.get(sent.location, headers=bearer(READER))
    assert shown.status_code == 200 and shown.get_json()["id"] == sent.get_json()["id"]


def test_admin_operations_need_the_admin_scope(client: FlaskClient) -> None:
    for token in (READER, SENDER):
        assert client.put("/api/suppressions/ada@example.com",
                          headers=bearer(token)).status_code == 403
        assert client.get("/api/suppressions", headers=bearer(token)).status_code == 403
        assert client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/hook"},
                           headers=bearer(token)).status_code == 403
    assert client.put("/api/suppressions/ada@example.com",
                      headers=bearer(ADMIN)).status_code == 200
    message = {"to": ["ada@example.com"], "subject": "x", "body": "x"}
    assert client.post("/api/messages", json=message, headers=bearer(ADMIN)).status_code == 403


def test_a_token_listed_without_scopes_keeps_every_scope(client: FlaskClient) -> None:
    full = bearer(API_TOKEN)
    sent = client.post("/api/messages", json={"to": ["ada@example.com"], "subject": "x",
                                              "body": "x"}, headers=full)
    assert sent.status_code == 202
    assert client.get(sent.location, headers=full).status_code == 200
    assert client.put("/api/suppressions/bo@example.com", headers=full).status_code == 200
    assert client.get("/api/suppressions", headers=full).status_code == 200
    assert client.post("/api/messages", json={}, headers=bearer("nobody")).status_code == 401


def test_the_openapi_document_names_each_operations_scope_and_its_403(
        client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert paths["/api/messages"]["post"]["x-postroom-scope"] == "send"
    assert paths["/api/messages/{message_id}"]["get"]["x-postroom-scope"] == "read"
    assert paths["/api/suppressions/{email}"]["put"]["x-postroom-scope"] == "admin"
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "401" in operation["responses"]:
                assert "403" in operation["responses"], (method, path)


@pytest.mark.parametrize("entry", ["tok:sned", "tok:", ":read"])
def test_a_malformed_scope_stops_start_up(redis_url: str, entry: str) -> None:
    with pytest.raises(ConfigError, match="API_TOKENS"):
        create_app(app_config(redis_url, 25, API_TOKENS=[entry]))
