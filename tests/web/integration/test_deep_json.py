"""Deeply nested JSON (``[`` repeated thousands of times) never gives a 500."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.otp_support import csrf_token
from web.json_provider import MAX_DEPTH

BOMBS = ["[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
         '{"email": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}"]
ROUTES = ["/api/messages", "/api/otp", "/api/campaigns", "/api/otp/" + "0" * 32 + "/verify"]


@pytest.mark.parametrize("body", BOMBS, ids=["open", "closed", "objects", "just-too-deep"])
@pytest.mark.parametrize("route", ROUTES)
def test_deep_json_on_the_api_is_400(client: FlaskClient, route: str, body: str) -> None:
    response = client.post(route, data=body, content_type="application/json", headers=AUTH)
    assert response.status_code == 400, response.get_data()[:200]
    assert response.get_json()["error"]["code"] == "bad_json"


@pytest.mark.parametrize("body", BOMBS, ids=["open", "closed", "objects", "just-too-deep"])
def test_deep_json_on_the_forms_is_a_4xx(client: FlaskClient, body: str) -> None:
    token = csrf_token(client)
    for route in ("/verify", "/validate"):
        response = client.post(route, data=body, content_type="application/json",
                               headers={"X-CSRFToken": token})
        assert 400 <= response.status_code < 500, (route, response.status_code)


def test_ordinary_nesting_still_reads(client: FlaskClient) -> None:
    response = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com"], "subject": "Hi", "body": "b",
        "attachments": [{"filename": "a.txt", "content": "aGVsbG8="}]})
    assert response.status_code == 202, response.get_json()
