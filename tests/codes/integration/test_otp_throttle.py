"""Resend throttling: per address and per client IP, across the form and the API, in Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.otp_support import csrf_token, request_code
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"OTP_RATE_LIMIT_PER_ADDRESS": "2/minute;3/hour", "OTP_RATE_LIMIT_PER_IP": "4/minute"}


def post_form(client: FlaskClient, email: str, **environ: Any) -> Any:
    return client.post("/verify", data={"email": email, "csrf_token": csrf_token(client)},
                       environ_base=environ)


def test_per_address_limit_on_the_form(client: FlaskClient, smtp_server: SMTPTestServer,
                                       redis_client: redis.Redis) -> None:
    request_code(client, "ada@example.com")
    request_code(client, "ADA@example.com ")
    response = post_form(client, "ada@example.com")
    assert response.status_code == 429
    page = response.get_data(as_text=True)
    assert "Too many codes were requested" in page and 'name="email"' in page
    assert len(smtp_server.received) == 2

    request_code(client, "bob@example.com")  # another address still gets its code
    assert len(smtp_server.received) == 3
    names = [name.decode() for name in redis_client.scan_iter("postroom:ratelimit*")]
    assert names and all(redis_client.ttl(name) > 0 for name in names)


def test_per_address_budget_is_shared_with_the_api(client: FlaskClient,
                                                   smtp_server: SMTPTestServer) -> None:
    request_code(client, "ada@example.com")
    assert client.post("/api/otp", json={"email": "ada@example.com"},
                       headers=AUTH).status_code == 202
    response = client.post("/api/otp", json={"email": "ada@example.com"}, headers=AUTH)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "too_many_requests"
    assert len(smtp_server.received) == 2


def test_per_ip_limit_on_the_form_spares_api_callers(client: FlaskClient,
                                                     smtp_server: SMTPTestServer) -> None:
    for n in range(4):
        request_code(client, f"user{n}@example.com")
    assert post_form(client, "user9@example.com").status_code == 429
    # the API's caller is a backend behind the same address: it is budgeted per token
    response = client.post("/api/otp", json={"email": "user8@example.com"}, headers=AUTH)
    assert response.status_code == 202
    assert len(smtp_server.received) == 5

    other = post_form(client, "user9@example.com", REMOTE_ADDR="192.0.2.7")
    assert other.status_code == 303
    assert len(smtp_server.received) == 6


def test_reading_pages_is_not_throttled(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    for _ in range(10):
        assert client.get("/verify").status_code == 200
    request_code(client, "ada@example.com")
