"""``/`` links what the deployment offers; the code page states a lock plainly and hides its
form, as it does for a request it does not know; a verified request reopened shows success."""

from __future__ import annotations

import re
from pathlib import Path

import redis
from flask.testing import FlaskClient

from tests.conftest import app_config
from tests.support.otp_support import latest_code, request_code, submit_code
from tests.support.smtp_server import SMTPTestServer
from web import create_app

LINK = re.compile(r'<a href="([^"]+)">([^<]+)</a>')


def links(client: FlaskClient) -> dict[str, str]:
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    return {title: href for href, title in LINK.findall(response.get_data(as_text=True))}


def test_home_links_every_page_and_endpoint(client: FlaskClient) -> None:
    found = links(client)
    assert found["Verify an email address"] == "/verify"
    assert found["Campaigns"] == "/campaigns/"
    assert found["API"] == "/api/openapi.json"
    assert (found["Health"], found["Metrics"]) == ("/healthz", "/metrics")
    assert "Outbox" not in found and "Flower" not in found  # not offered by this deployment
    for title, href in found.items():
        if href.startswith("/") and title != "Campaigns":  # campaigns: sign-in first
            assert client.get(href).status_code in (200, 503), href


def test_home_links_the_outbox_and_flower_where_offered(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        tmp_path: Path) -> None:
    app = create_app(app_config(redis_url, smtp_server.port, OUTBOX_DIR=str(tmp_path),
                                FLOWER_URL="http://127.0.0.1:5555/"))
    found = links(app.test_client())
    assert found["Outbox"] == "/outbox/"
    assert found["Flower"] == "http://127.0.0.1:5555/"
    outbox = app.test_client().get("/outbox/")  # captured mail: the operator signs in first
    assert outbox.status_code == 302 and "/campaigns/login" in outbox.location


def test_a_locked_request_says_so_and_hides_the_form(client: FlaskClient,
                                                     smtp_server: SMTPTestServer) -> None:
    request_id = request_code(client, "ada@example.com")
    code = latest_code(smtp_server, "ada@example.com")
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    page = client.get(f"/validate?request={request_id}").get_data(as_text=True)
    assert 'name="code"' in page and "locked" not in page.lower()
    for _ in range(5):
        status, page = submit_code(client, request_id, wrong)
        assert status == 422
    assert "This request is locked: too many wrong codes were entered." in page
    assert 'name="code"' not in page

    page = client.get(f"/validate?request={request_id}").get_data(as_text=True)
    assert "This request is locked" in page
    assert 'name="code"' not in page
    assert "data-otp-reason hidden" in page  # a lock is not the mail server's word
    assert "<code>too many wrong codes</code>" not in page
    assert 'href="/verify"' in page  # the way on: a new code


def test_an_unknown_request_offers_a_new_code_not_a_code_field(client: FlaskClient) -> None:
    page = client.get("/validate?request=ffffffffffffffffffffffffffffffff")
    text = page.get_data(as_text=True)
    assert page.status_code == 404
    assert "This request is unknown or no longer kept." in text
    assert 'name="code"' not in text and 'href="/verify"' in text


def test_a_verified_request_reopened_shows_success(client: FlaskClient,
                                                   smtp_server: SMTPTestServer) -> None:
    request_id = request_code(client, "ada@example.com")
    status, _ = submit_code(client, request_id, latest_code(smtp_server, "ada@example.com"))
    assert status == 200
    page = client.get(f"/validate?request={request_id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Email address verified" in text and 'name="code"' not in text
