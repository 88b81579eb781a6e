"""The OTP JSON API: ``POST /api/otp``, ``GET /api/otp/<id>``, ``POST /api/otp/<id>/verify``."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.otp_support import latest_code
from tests.support.smtp_server import SMTPTestServer


def create(client: FlaskClient, email: str = "ada@example.com") -> str:
    response = client.post("/api/otp", json={"email": email}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued"
    request_id: str = body["id"]
    return request_id


def verify(client: FlaskClient, request_id: str, code: Any) -> Any:
    return client.post(f"/api/otp/{request_id}/verify", json={"code": code}, headers=AUTH)


def test_api_round_trip(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    request_id = create(client)
    shown = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
    assert set(shown) == {"id", "status", "attempts_left", "expires_at", "updated_at"}
    assert (shown["id"], shown["status"], shown["attempts_left"]) == (request_id, "sent", 5)

    code = latest_code(smtp_server, "ada@example.com")
    response = verify(client, request_id, code)
    assert (response.status_code, response.get_json()) == (200, {"verified": True})
    assert client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()["status"] == "verified"

    again = verify(client, request_id, code)
    assert again.status_code == 422
    assert again.get_json()["error"]["code"] == "invalid_code"


def test_concurrent_verifications_over_http_succeed_once(app: Flask,
                                                          smtp_server: SMTPTestServer) -> None:
    request_id = create(app.test_client())
    code = latest_code(smtp_server, "ada@example.com")
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def submit() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(verify(client, request_id, code).status_code)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 422, 422, 422, 422, 422]


def test_wrong_codes_get_one_generic_answer_then_lock(client: FlaskClient,
                                                      smtp_server: SMTPTestServer) -> None:
    request_id = create(client)
    code = latest_code(smtp_server, "ada@example.com")
    wrong = f"{(int(code) + 7) % 10 ** 6:06d}"
    answers = [verify(client, request_id, wrong) for _ in range(5)]
    assert {a.status_code for a in answers} == {422}
    assert len({a.get_data() for a in answers}) == 1
    shown = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
    assert (shown["status"], shown["attempts_left"]) == ("locked", 0)
    assert verify(client, request_id, code).get_data() == answers[0].get_data()


@pytest.mark.parametrize(("code", "reason"), [
    ("12345", "must be exactly 6 digits"),
    ("1234567", "must be exactly 6 digits"),
    ("12 34 5x", "must be exactly 6 digits"),
    (123456, "must be a string of digits (leading zeros matter)"),
    (None, "must be a string of digits (leading zeros matter)"),
])
def test_malformed_code_is_422_with_the_field(client: FlaskClient, smtp_server: SMTPTestServer,
                                              code: Any, reason: str) -> None:
    request_id = create(client)
    response = verify(client, request_id, code)
    assert response.status_code == 422
    assert response.get_json()["error"]["fields"] == {"code": reason}
    shown = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
    assert shown["attempts_left"] == 5


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "not-an-address"}, "email"),
    ({"email": 42}, "email"),
    ({}, "email"),
    ({"email": "ada@example.com", "name": "Ada"}, "name"),
])
def test_bad_address_is_422(client: FlaskClient, smtp_server: SMTPTestServer,
                            body: dict[str, Any], field: str) -> None:
    response = client.post("/api/otp", json=body, headers=AUTH)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]
    assert smtp_server.received == []


def test_bad_requests_are_clear_4xx(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    assert client.post("/api/otp", json={"email": "ada@example.com"}).status_code == 401
    assert client.get("/api/otp/abc").status_code == 401
    assert client.post("/api/otp", data="email=x", headers=AUTH).status_code == 415
    assert client.post("/api/otp", data="{", headers=AUTH,
                       content_type="application/json").status_code == 400
    assert client.get("/api/otp/nope", headers=AUTH).status_code == 404
    assert verify(client, "nope", "123456").status_code == 404
    assert client.post("/api/otp/nope/verify", json=["123456"], headers=AUTH).status_code == 422
    assert smtp_server.received == []


def test_openapi_describes_the_otp_routes(client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").get_json()
    assert {"/api/otp", "/api/otp/{request_id}", "/api/otp/{request_id}/verify"} <= set(
        document["paths"])
    assert "429" in document["paths"]["/api/otp"]["post"]["responses"]
    assert {"OTPRequestIn", "OTPCodeIn", "OTPStatusOut"} <= set(document["components"]["schemas"])
