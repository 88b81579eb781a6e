"""The verification pages, eager Celery: /verify in, the code read from the SMTP server,
/validate out; reuse, lock-out, expiry, replacement, SMTP 4xx and 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tasks.codes.store import OTPStore
from tests.conftest import AUTH
from tests.support.otp_support import (
    Clock,
    code_in,
    csrf_token,
    latest_code,
    request_code,
    submit_code,
)
from tests.support.smtp_server import SMTPTestServer

GENERIC = "That code did not work"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config_overrides(clock: Clock) -> dict[str, Any]:
    return {"OTP_CLOCK": clock, "OTP_RECORD_TTL": 3600}


def otp_status(client: FlaskClient, request_id: str) -> dict[str, Any]:
    response = client.get(f"/api/otp/{request_id}", headers=AUTH)
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_code_mailed_then_validated_once(client: FlaskClient,
                                         smtp_server: SMTPTestServer) -> None:
    page = client.get("/verify")
    assert page.status_code == 200 and 'name="email"' in page.get_data(as_text=True)

    request_id = request_code(client, "ada@example.com")

    [received] = smtp_server.to("ada@example.com")
    message = received.message
    assert message["From"] == "Postroom <noreply@postroom.test>"
    assert message["Subject"] == "Your verification code"
    assert message.get_content_type() == "multipart/alternative"
    code = latest_code(smtp_server, "ada@example.com")
    assert len(code) == 6 and code.isdigit()
    assert "10 minutes" in message.get_body(("plain",)).get_content()
    assert "10 minutes" in message.get_body(("html",)).get_content()

    validate_page = client.get(f"/validate?request={request_id}").get_data(as_text=True)
    assert 'data-status="sent"' in validate_page
    assert code not in validate_page

    status, page_text = submit_code(client, request_id, code)
    assert status == 200 and "Email address verified" in page_text
    assert otp_status(client, request_id)["status"] == "verified"

    status, page_text = submit_code(client, request_id, code)
    assert status == 422 and GENERIC in page_text


def test_spaces_in_the_code_are_ignored(client: FlaskClient,
                                       smtp_server: SMTPTestServer) -> None:
    request_id = request_code(client, "ada@example.com")
    code = latest_code(smtp_server, "ada@example.com")
    status, _ = submit_code(client, request_id, f" {code[:3]} {code[3:]} ")
    assert status == 200


@pytest.mark.parametrize("typed", ["12345", "1234567", "12a456", "١٢٣٤٥٦", "", "-12345"])
def test_malformed_code_is_a_form_error_and_costs_no_attempt(
        client: FlaskClient, smtp_server: SMTPTestServer, typed: str) -> None:
    request_id = request_code(client, "ada@example.com")
    status, page_text = submit_code(client, request_id, typed)
    assert status == 422
    assert "code from the email" in page_text
    assert GENERIC not in page_text
    assert otp_status(client, request_id)["attempts_left"] == 5


def test_five_wrong_codes_lock_the_request(client: FlaskClient,
                                           smtp_server: SMTPTestServer) -> None:
    request_id = request_code(client, "ada@example.com")
    code = latest_code(smtp_server, "ada@example.com")
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    for attempt in range(5):
        status, page_text = submit_code(client, request_id, wrong)
        assert status == 422 and GENERIC in page_text
        assert wrong not in page_text  # the field is cleared, not echoed
        assert otp_status(client, request_id)["attempts_left"] == 4 - attempt
    assert otp_status(client, request_id)["status"] == "locked"

    status, page_text = submit_code(client, request_id, code)
    assert status == 422 and GENERIC in page_text
    assert 'data-status="locked"' in page_text


def test_expired_code_fails(client: FlaskClient, smtp_server: SMTPTestServer,
                            clock: Clock) -> None:
    request_id = request_code(client, "ada@example.com")
    code = latest_code(smtp_server, "ada@example.com")
    expires_at = otp_status(client, request_id)["expires_at"]
    assert expires_at == pytest.approx(clock.now + 600)

    clock.advance(599)
    assert otp_status(client, request_id)["status"] == "sent"
    clock.advance(1)
    assert otp_status(client, request_id)["status"] == "expired"
    status, page_text = submit_code(client, request_id, code)
    assert status == 422 and GENERIC in page_text
    assert otp_status(client, request_id)["status"] == "expired"


def test_new_request_replaces_the_old_code(client: FlaskClient,
                                           smtp_server: SMTPTestServer) -> None:
    first = request_code(client, "ada@example.com")
    first_code = latest_code(smtp_server, "ada@example.com")
    second = request_code(client, "Ada@Example.com")  # the same address, spelt differently
    assert len(smtp_server.received) == 2
    second_code = code_in(smtp_server.received[-1])

    old = otp_status(client, first)
    assert (old["status"], old["error"]) == ("expired", "replaced by a newer request")
    assert submit_code(client, first, first_code)[0] == 422
    assert submit_code(client, second, second_code)[0] == 200


def test_verify_form_needs_csrf_and_a_valid_address(client: FlaskClient,
                                                    smtp_server: SMTPTestServer) -> None:
    assert client.post("/verify", data={"email": "ada@example.com"}).status_code == 400
    response = client.post("/verify", data={"email": "not an address",
                                            "csrf_token": csrf_token(client)})
    assert response.status_code == 422
    assert 'class="field-error"' in response.get_data(as_text=True)
    assert smtp_server.received == []


def test_validate_form_needs_csrf(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    request_id = request_code(client, "ada@example.com")
    code = latest_code(smtp_server, "ada@example.com")
    response = client.post("/validate", data={"request_id": request_id, "code": code})
    assert response.status_code == 400
    assert otp_status(client, request_id)["status"] == "sent"


def test_temporary_failure_defers_then_sends(client: FlaskClient,
                                             smtp_server: SMTPTestServer,
                                             redis_client: Any) -> None:
    replies = iter(["451 4.3.0 mailbox busy, try later"])
    smtp_server.handler.rcpt_reply = lambda address: next(replies, None)
    request_id = request_code(client, "ada@example.com")

    assert len(smtp_server.to("ada@example.com")) == 1
    record = json.loads(redis_client.get(OTPStore.record_key(request_id)))
    history = [step["status"] for step in record["history"]]
    assert history == ["queued", "sending", "deferred", "sending", "sent"]
    assert otp_status(client, request_id)["status"] == "sent"
    assert "error" not in otp_status(client, request_id)
    status, _ = submit_code(client, request_id, latest_code(smtp_server, "ada@example.com"))
    assert status == 200

    names = [name.decode() for name in redis_client.scan_iter("*")
             if not name.startswith(b"postroom:metrics:")]  # the deployment's counters stay
    assert any(name.startswith("postroom:delivery:otp:") for name in names)
    for name in names:  # the record, the address, the ledger and its indexes, the rate limits
        assert name.startswith("postroom:") and 0 < redis_client.ttl(name) <= 3600, name


def test_permanent_failure_is_shown_with_the_reason(client: FlaskClient,
                                                    smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = lambda address: "550 5.1.1 no such user here"
    request_id = request_code(client, "ghost@example.com")

    assert smtp_server.received == []
    shown = otp_status(client, request_id)
    assert shown["status"] == "failed" and "no such user here" in shown["error"]
    page = client.get(f"/validate?request={request_id}").get_data(as_text=True)
    assert 'data-status="failed"' in page
    assert "550 5.1.1 no such user here" in page

    poll = client.get(f"/verify/status/{request_id}").get_json()
    assert poll["status"] == "failed" and poll["final"] is True
    assert poll["reason"] == "550 5.1.1 no such user here"


def test_status_poll_shows_words_not_secrets(client: FlaskClient,
                                             smtp_server: SMTPTestServer) -> None:
    request_id = request_code(client, "ada@example.com")
    code = latest_code(smtp_server, "ada@example.com")
    response = client.get(f"/verify/status/{request_id}")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"status", "label", "reason", "final", "expires_at", "attempts_left",
                         "updated_at"}
    assert body["status"] == "sent"
    raw = response.get_data(as_text=True)
    assert code not in raw and "ada@example.com" not in raw
    assert client.get("/verify/status/nope").status_code == 404
    assert client.get("/validate?request=nope").status_code == 404
    assert client.get("/static/otp.js").status_code == 200


def test_responses_are_the_same_for_new_and_known_addresses(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    request_code(client, "known@example.com")

    def answer(email: str) -> tuple[int, str, str, list[str]]:
        response = client.post("/verify", data={"email": email,
                                                "csrf_token": csrf_token(client)})
        location = response.headers["Location"]
        request_id = location.split("=", 1)[1]
        body = response.get_data(as_text=True).replace(request_id, "<id>")
        return (response.status_code, location.replace(request_id, "<id>"), body,
                sorted(response.headers.keys()))

    assert answer("known@example.com") == answer("new@example.com")

    def api_answer(email: str) -> tuple[int, list[str], str]:
        response = client.post("/api/otp", json={"email": email}, headers=AUTH)
        body = response.get_json()
        return response.status_code, sorted(body), body["status"]

    assert api_answer("known@example.com") == api_answer("new2@example.com") == (
        202, ["id", "status"], "queued")
