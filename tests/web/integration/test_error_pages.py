"""Pages for what went wrong, each with a way back: a form sent without a valid CSRF token
(nothing read, stored or sent; web.form_errors), an address with no page, a method a page
does not take (web.api.errors.handle_routing_error; JSON under /api as before)."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tests.support.otp_support import csrf_token
from tests.support.smtp_server import SMTPTestServer


def test_a_form_without_its_token_is_refused_with_a_way_back(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    refused = client.post("/verify", data={"email": "ada@example.com"})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 400
    assert "That form has expired" in page and 'href="/verify"' in page
    assert "csrf" not in page.lower()  # said in words, not in the library's
    assert smtp_server.received == []  # no code was mailed


def test_a_token_from_another_session_is_refused_and_nothing_is_stored(
        app: Flask, client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    someone_elses = csrf_token(app.test_client())
    redis = app.extensions["redis"]
    keys_before = set(redis.scan_iter("postroom:otp*"))
    refused = client.post("/verify", data={"email": "ada@example.com",
                                           "csrf_token": someone_elses})
    assert refused.status_code == 400 and "That form has expired" in refused.get_data(
        as_text=True)
    assert set(redis.scan_iter("postroom:otp*")) == keys_before
    assert smtp_server.received == []
    # with its own session's token the same form goes through
    accepted = client.post("/verify", data={"email": "ada@example.com",
                                            "csrf_token": csrf_token(client)})
    assert accepted.status_code == 303
    assert [r.recipients for r in smtp_server.received] == [["ada@example.com"]]


def test_the_way_back_keeps_the_forms_query(client: FlaskClient) -> None:
    refused = client.post("/validate?request=abc123", data={"code": "123456"})
    assert refused.status_code == 400
    assert 'href="/validate?request=abc123"' in refused.get_data(as_text=True)


def test_a_post_only_address_leads_back_home(client: FlaskClient) -> None:
    refused = client.post("/campaigns/logout")  # a button, no page of its own to show again
    assert refused.status_code == 400
    assert 'href="/"' in refused.get_data(as_text=True)


def test_an_address_with_no_page_is_a_page_with_a_way_back(client: FlaskClient) -> None:
    answer = client.get("/no/such/page")
    assert answer.status_code == 404 and answer.mimetype == "text/html"
    page = answer.get_data(as_text=True)
    assert "There is no page here" in page and 'href="/"' in page


def test_a_method_a_page_does_not_take_keeps_its_allow_header(client: FlaskClient) -> None:
    answer = client.delete("/verify")
    assert answer.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in answer.headers["Allow"].split(",")}
    assert "does not take that request" in answer.get_data(as_text=True)


def test_the_api_still_answers_in_json(client: FlaskClient) -> None:
    answer = client.get("/api/no-such-thing")
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"
