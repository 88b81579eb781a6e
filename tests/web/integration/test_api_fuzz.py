"""No request a client can send produces a 500: every route, fed generated input.

Bodies are built from each route's own field names with values of every JSON
type (control characters, huge numbers, nesting, wrong types), and raw bodies
with assorted content types. The app runs with TESTING on, so an unhandled
exception is raised here rather than turned into a 500.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import AUTH

ALLOWED = {200, 202, 303, 400, 401, 404, 405, 409, 413, 415, 422, 429}

FIELDS = {
    "/api/messages": ["to", "cc", "bcc", "reply_to", "sender", "subject", "body", "html",
                      "headers", "attachments"],
    "/api/otp": ["email"],
    "/api/otp/{id}/verify": ["code"],
    "/api/campaigns": ["name", "subject", "body", "html", "sender", "recipients", "send_at",
                       "attachments"],
}
ATTACHMENT_FIELDS = ["filename", "content_type", "content"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=40),
    st.sampled_from(["ada@example.com", "Ada <ada@example.com>", "a@b", "x\r\nBcc: e@x.io",
                     "{{ ''.__class__ }}", "{% for %}", "2020-01-01T00:00:00Z", "123456",
                     " 12 34 56 ", "aGVsbG8=", "\x00", "é" * 300]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["email", "name", *ATTACHMENT_FIELDS]) | st.text(max_size=8),
                    inner, max_size=4)), max_leaves=12)


addresses = st.sampled_from(["ada@example.com", "Ada <ada@example.com>", "bob@example.org",
                             "not-an-address", "a@b", "x\r\nBcc: e@x.io", ""])
templates = st.sampled_from(["Hello {{ name }}", "{{ ''.__class__.__mro__ }}", "{% for %}",
                             "{{ name|upper }}", "plain", "{{ missing.attr }}"])
attachment = st.fixed_dictionaries({}, optional={
    "filename": st.sampled_from(["a.pdf", "../../etc/passwd", "r\u00e9sum\u00e9.txt", ""]),
    "content_type": st.sampled_from(["application/pdf", "text/plain", "nonsense", ""]),
    "content": st.sampled_from(["aGVsbG8=", "not base64!", ""])})
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "to": addresses | st.lists(addresses, max_size=3),
    "cc": st.lists(addresses, max_size=2), "bcc": st.lists(addresses, max_size=2),
    "reply_to": st.lists(addresses, max_size=2), "sender": addresses, "email": addresses,
    "subject": templates, "body": templates, "html": templates, "name": st.text(max_size=20),
    "headers": st.dictionaries(st.sampled_from(["X-Tag", "Bcc", "Bad Name", "X-\u00e9"]),
                               st.text(max_size=20), max_size=2),
    "attachments": st.lists(attachment, max_size=2),
    "recipients": st.lists(st.fixed_dictionaries({"email": addresses},
                                                 optional={"name": st.text(max_size=10)}),
                           max_size=3),
    "send_at": st.sampled_from(["2099-01-01T00:00:00Z", "2001-01-01T00:00:00Z", "tomorrow",
                                "2099-13-45T99:00:00", ""]),
    "code": st.sampled_from(["123456", " 12 34 56 ", "12345", "abcdef", "1234567", ""]),
}


def bodies(route: str) -> st.SearchStrategy[dict[str, Any]]:
    """Each route's own fields, each present or not, plausible or junk."""
    return st.fixed_dictionaries({}, optional={
        name: PLAUSIBLE.get(name, json_values) | json_values for name in FIELDS[route]})


def assert_handled(response: Any) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.get_data()[:300])
    if response.status_code >= 400 and response.is_json:
        error = response.get_json()["error"]
        assert error["code"] and error["message"]


FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    # generous throttles, so the generated requests reach validation, not the limiter
    return {"OTP_RATE_LIMIT_PER_ADDRESS": "10000/minute",
            "OTP_RATE_LIMIT_PER_IP": "10000/minute", "MAIL_SUPPRESS_SEND": True}


@pytest.mark.parametrize("route", ["/api/messages", "/api/otp", "/api/campaigns"])
def test_generated_json_bodies_never_cause_a_server_error(client: FlaskClient,
                                                         route: str) -> None:
    @FUZZ
    @given(body=bodies(route))
    def check(body: dict[str, Any]) -> None:
        assert_handled(client.post(route, json=body, headers=AUTH))

    check()


def test_generated_codes_and_ids_never_cause_a_server_error(client: FlaskClient) -> None:
    request_id = client.post("/api/otp", json={"email": "ada@example.com"},
                             headers=AUTH).get_json()["id"]

    @FUZZ
    @given(body=bodies("/api/otp/{id}/verify"), use_real_id=st.booleans(),
           other_id=st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s))
    def check(body: dict[str, Any], use_real_id: bool, other_id: str) -> None:
        target = request_id if use_real_id else other_id
        assert_handled(client.post(f"/api/otp/{target}/verify", json=body, headers=AUTH))
        assert_handled(client.get(f"/api/otp/{target}", headers=AUTH))
        assert_handled(client.get(f"/api/messages/{target}", headers=AUTH))
        assert_handled(client.get(f"/api/campaigns/{target}", headers=AUTH))

    check()


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                     "multipart/form-data; boundary=x",
                                     "application/x-www-form-urlencoded", "text/csv", ""]),
       route=st.sampled_from(["/api/messages", "/api/otp", "/api/campaigns"]))
def test_raw_bodies_of_any_type_never_cause_a_server_error(app: Flask, data: bytes,
                                                           content_type: str,
                                                           route: str) -> None:
    client = app.test_client()
    headers = AUTH | ({"Content-Type": content_type} if content_type else {})
    assert_handled(client.post(route, data=data, headers=headers))


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["status", "cursor", "limit"]),
                             st.text(max_size=12), max_size=3))
def test_generated_queries_never_cause_a_server_error(app: Flask,
                                                      query: dict[str, str]) -> None:
    client = app.test_client()
    created = client.post("/api/campaigns", headers=AUTH, json={
        "name": "fuzz", "subject": "Hi", "body": "Hello",
        "recipients": [{"email": "ada@example.com"}], "send_at": "2099-01-01T00:00:00Z"})
    assert created.status_code == 202, created.get_json()
    campaign = created.get_json()["id"]
    assert_handled(client.get("/api/campaigns", query_string=query, headers=AUTH))
    assert_handled(client.get(f"/api/campaigns/{campaign}/recipients", query_string=query,
                              headers=AUTH))
    for action in ("pause", "resume", "cancel", "retry-failed", "explode"):
        assert_handled(client.post(f"/api/campaigns/{campaign}/{action}", headers=AUTH,
                                   data=json.dumps(query), content_type="application/json"))
