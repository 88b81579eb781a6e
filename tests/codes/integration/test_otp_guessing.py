"""Guessing a code is bounded per mailbox, whatever the spelling, request, network or token.

Each test is an attack from the hardening review, run against the app with a
real Redis and a real SMTP server: the budgets must hold.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tasks.codes.store import OTPPolicy, OTPStore
from tasks.shared.mailbox import canonical_mailbox
from tests.conftest import API_TOKEN, AUTH
from tests.support.otp_support import csrf_token, latest_code, request_code, submit_code
from tests.support.smtp_server import SMTPTestServer
from web.config import guess_chance

GUESSES = 4
SPELLINGS = ["victim@example.com", "Victim@EXAMPLE.com", "victim@\uff45xample.com",
             "VICTIM@Example.Com", "\uff56ictim@example.com"]
OTHER_TOKEN = "second-backend-token"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"OTP_GUESSES_PER_DAY": GUESSES, "OTP_RATE_LIMIT_PER_ADDRESS": "100/minute",
            "OTP_RATE_LIMIT_PER_IP": "100/minute", "OTP_VERIFY_RATE_LIMIT_PER_IP": "100/minute",
            "API_TOKENS": [API_TOKEN, OTHER_TOKEN]}


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def api_create(client: FlaskClient, email: str, token: str = API_TOKEN) -> str:
    response = client.post("/api/otp", json={"email": email},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202, response.get_json()
    request_id: str = response.get_json()["id"]
    return request_id


def api_verify(client: FlaskClient, request_id: str, code: str,
               token: str = API_TOKEN) -> int:
    return client.post(f"/api/otp/{request_id}/verify", json={"code": code},
                       headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_names_one_mailbox(spelling: str) -> None:
    assert canonical_mailbox(spelling) == "victim@example.com"


def test_wrong_codes_count_across_requests_spellings_and_tokens(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    """New requests, other spellings and a second token never reset the guess budget."""
    tokens = [API_TOKEN, OTHER_TOKEN]
    for n in range(GUESSES):
        request_id = api_create(client, SPELLINGS[n % len(SPELLINGS)], tokens[n % 2])
        code = latest_code(smtp_server, "victim@example.com")
        assert api_verify(client, request_id, wrong(code), tokens[n % 2]) == 422
    # the budget is spent: even the right code of a brand-new request is refused
    request_id = api_create(client, SPELLINGS[-1], OTHER_TOKEN)
    code = latest_code(smtp_server, "victim@example.com")
    assert api_verify(client, request_id, code, OTHER_TOKEN) == 422
    shown = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
    assert shown["status"] == "locked"
    # another mailbox is untouched
    other = api_create(client, "someone@example.com")
    assert api_verify(client, other, latest_code(smtp_server, "someone@example.com")) == 200


def test_the_form_and_the_api_share_the_guess_budget(client: FlaskClient,
                                                     smtp_server: SMTPTestServer) -> None:
    for n in range(GUESSES):
        request_id = request_code(client, SPELLINGS[n % len(SPELLINGS)])
        status, _ = submit_code(client, request_id,
                                wrong(latest_code(smtp_server, "victim@example.com")))
        assert status == 422
    request_id = api_create(client, "victim@example.com")
    assert api_verify(client, request_id, latest_code(smtp_server, "victim@example.com")) == 422


def test_a_right_code_does_not_spend_the_budget(client: FlaskClient,
                                                smtp_server: SMTPTestServer,
                                                redis_client: redis.Redis) -> None:
    for _ in range(GUESSES + 2):
        request_id = api_create(client, "ada@example.com")
        assert api_verify(client, request_id, latest_code(smtp_server, "ada@example.com")) == 200
    assert not list(redis_client.scan_iter("postroom:otp-guesses:*"))


def test_the_budget_keeps_the_daily_chance_below_one_in_ten_thousand() -> None:
    assert guess_chance(6, 20) < 1 / 10_000  # the defaults
    assert guess_chance(6, GUESSES) < 1 / 10_000


@pytest.mark.parametrize("value", [["victim@example.com", "other@example.com"],
                                   {"address": "victim@example.com"}, 42, True])
def test_an_email_that_is_not_a_string_is_refused_on_the_api(client: FlaskClient, value: Any,
                                                              smtp_server: SMTPTestServer) -> None:
    response = client.post("/api/otp", json={"email": value}, headers=AUTH)
    assert response.status_code == 422
    assert "email" in response.get_json()["error"]["fields"]
    assert smtp_server.received == []


@pytest.mark.parametrize("value", [["victim@example.com", "other@example.com"], 42])
def test_an_email_that_is_not_a_string_is_refused_on_the_form(client: FlaskClient, value: Any,
                                                               smtp_server: SMTPTestServer) -> None:
    token = csrf_token(client)
    response = client.post("/verify", json={"email": value, "csrf_token": token},
                           headers={"X-CSRFToken": token})
    assert response.status_code == 422
    assert "Email address must be an email address as a string" in response.get_data(True)
    assert smtp_server.received == []


class TestResendBudgets:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return {"OTP_RATE_LIMIT_PER_ADDRESS": "2/hour", "OTP_RATE_LIMIT_PER_IP": "3/hour",
                "OTP_RATE_LIMIT_PER_TOKEN": "3/hour", "API_TOKENS": [API_TOKEN, OTHER_TOKEN]}

    def test_the_address_budget_keys_on_the_mailbox(self, client: FlaskClient,
                                                    smtp_server: SMTPTestServer) -> None:
        api_create(client, "victim@example.com")
        api_create(client, "Victim@EXAMPLE.com", OTHER_TOKEN)
        for spelling in SPELLINGS[2:]:
            response = client.post("/api/otp", json={"email": spelling}, headers=AUTH)
            assert response.status_code == 429, spelling
        assert len(smtp_server.received) == 2

    def test_ipv6_clients_count_per_64(self, client: FlaskClient,
                                       smtp_server: SMTPTestServer) -> None:
        def post(email: str, address: str) -> int:
            token = csrf_token(client)
            return client.post("/verify", data={"email": email, "csrf_token": token},
                               environ_base={"REMOTE_ADDR": address}).status_code

        for n in range(3):
            assert post(f"user{n}@example.com", f"2001:db8:1:2::{n + 1:x}") == 303
        assert post("user8@example.com", "2001:db8:1:2:ffff:ffff:ffff:fffe") == 429
        assert post("user9@example.com", "2001:db8:1:3::1") == 303  # another /64

    def test_api_callers_are_budgeted_per_token_not_per_ip(self, client: FlaskClient,
                                                           smtp_server: SMTPTestServer) -> None:
        for n in range(3):
            api_create(client, f"user{n}@example.com")
        response = client.post("/api/otp", json={"email": "user7@example.com"}, headers=AUTH)
        assert response.status_code == 429
        assert response.get_json()["error"]["code"] == "too_many_requests"
        api_create(client, "user8@example.com", OTHER_TOKEN)  # same IP, another backend


class TestVerifyThrottle:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return {"OTP_VERIFY_RATE_LIMIT_PER_IP": "3/minute", "OTP_RATE_LIMIT_PER_TOKEN": "4/minute"}

    def test_validate_is_rate_limited_per_network(self, client: FlaskClient,
                                                  smtp_server: SMTPTestServer) -> None:
        request_id = request_code(client, "ada@example.com")
        statuses = [submit_code(client, request_id, "000000")[0] for _ in range(4)]
        assert statuses[:3] != [429] * 3 and statuses[3] == 429

    def test_api_verify_is_rate_limited_per_token(self, client: FlaskClient,
                                                  smtp_server: SMTPTestServer) -> None:
        request_id = api_create(client, "ada@example.com")
        statuses = [api_verify(client, request_id, "000000") for _ in range(5)]
        assert statuses == [422, 422, 422, 422, 429]


def test_parallel_guesses_cannot_overrun_the_budget(redis_client: redis.Redis) -> None:
    policy = OTPPolicy(secret_key=b"k", max_attempts=50, guesses_per_day=GUESSES)
    store = OTPStore(redis_client, policy)
    request_id = store.create("victim@example.com").id
    assert store.issue(request_id) is not None
    verdicts: list[str] = []
    lock = threading.Lock()

    def guess(n: int) -> None:
        verdict = OTPStore(redis_client, policy).verify(request_id, f"{n:06d}")
        with lock:
            verdicts.append(verdict)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    compared = sum(verdict in {"wrong", "locked", "verified"} for verdict in verdicts)
    assert compared <= GUESSES, Counter(verdicts)
    assert store.guesses.left("VICTIM@example.com") == GUESSES - compared  # any spelling
