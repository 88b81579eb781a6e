"""The operator's campaign pages: admin sign-in, CSV upload, progress, controls, CSRF."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support.campaign_helpers import csv_bytes, people
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ADMIN_USERNAME": "operator", "ADMIN_PASSWORD": "correct horse battery"}


def csrf_token(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(client: FlaskClient, password: str = "correct horse battery") -> Any:
    token = csrf_token(client, "/campaigns/login")
    return client.post("/campaigns/login?next=/campaigns/new",
                       data={"csrf_token": token, "username": "operator", "password": password})


def test_pages_need_the_admin_login(client: FlaskClient) -> None:
    for path in ("/campaigns/", "/campaigns/new", "/campaigns/abc", "/campaigns/abc/progress"):
        response = client.get(path)
        assert response.status_code == 302 and "/campaigns/login" in response.location
    assert sign_in(client, "wrong").status_code == 401
    assert client.get("/campaigns/").status_code == 302
    signed_in = sign_in(client)
    assert signed_in.status_code == 303 and signed_in.location.endswith("/campaigns/new")
    assert client.get("/campaigns/").status_code == 200


def test_login_without_csrf_token_is_refused(client: FlaskClient) -> None:
    response = client.post("/campaigns/login", data={"username": "operator",
                                                     "password": "correct horse battery"})
    assert response.status_code == 400
    assert client.get("/campaigns/").status_code == 302


def test_upload_shows_progress_and_controls(client: FlaskClient,
                                            smtp_server: SMTPTestServer) -> None:
    sign_in(client)
    token = csrf_token(client, "/campaigns/new")
    response = client.post("/campaigns/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Spring news", "subject": "Hi {{ name }}",
        "body": "Hello {{ name }}", "html": "", "sender": "", "send_at": "",
        "file": (io.BytesIO(csv_bytes(people(12))), "spring.csv")})
    assert response.status_code == 303
    show_path = response.location
    page = client.get(show_path).get_data(as_text=True)
    assert "Spring news" in page and "completed" in page
    assert re.search(r'<progress[^>]*value="12" max="12"', page)
    assert "Campaign queued: 12 recipient(s)" in page
    assert len(smtp_server.received) == 12

    progress = client.get(show_path + "/progress").get_json()
    assert progress["counts"]["sent"] == 12 and progress["status"] == "completed"
    listing = client.get("/campaigns/").get_data(as_text=True)
    assert "Spring news" in listing and 'data-progress-url="' in listing

    token = csrf_token(client, show_path)
    paused = client.post(show_path + "/pause", data={"csrf_token": token})
    assert paused.status_code == 303
    assert "cannot pause a campaign that is completed" in client.get(show_path).get_data(
        as_text=True)
    assert client.post(show_path + "/pause").status_code == 400  # no CSRF token


def test_upload_errors_are_shown_on_the_form(client: FlaskClient,
                                             smtp_server: SMTPTestServer) -> None:
    sign_in(client)
    token = csrf_token(client, "/campaigns/new")
    response = client.post("/campaigns/new", content_type="multipart/form-data", data={
        "csrf_token": token, "subject": "Hi {{ ''.__class__ }}", "body": "x",
        "file": (io.BytesIO(csv_bytes(people(2))), "x.csv")})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "private attribute" in page and 'value="Hi {{ &#39;&#39;.__class__ }}"' in page
    response = client.post("/campaigns/new", content_type="multipart/form-data", data={
        "csrf_token": token, "subject": "Hi", "body": "x",
        "file": (io.BytesIO(b"name\nAda\n"), "x.csv")})
    assert response.status_code == 422
    assert "no &#39;email&#39; column" in response.get_data(as_text=True)
    assert smtp_server.received == []


def test_sign_in_is_off_without_credentials(client: FlaskClient, app: Any) -> None:
    app.config["ADMIN_USERNAME"] = None
    assert "Operator sign-in is off" in client.get("/campaigns/login").get_data(as_text=True)
    assert sign_in(client).status_code == 401


def test_sign_in_is_throttled_per_network(client: FlaskClient) -> None:
    """The attack: 300 wrong passwords in a tenth of a second."""
    statuses = [sign_in(client, f"guess-{n}").status_code for n in range(8)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    # the right password is refused too until the window passes
    assert sign_in(client).status_code == 429
    assert client.get("/campaigns/").status_code == 302


def test_sign_in_is_throttled_per_user_name_across_networks(client: FlaskClient) -> None:
    statuses = []
    for n in range(7):
        token = csrf_token(client, "/campaigns/login")
        statuses.append(client.post(
            "/campaigns/login", data={"csrf_token": token, "username": "Operator",
                                      "password": f"guess-{n}"},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n + 1}"}).status_code)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}


def test_the_session_cookie_is_httponly_and_samesite(client: FlaskClient) -> None:
    signed_in = sign_in(client)
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # testing; see test_config for production


def test_sign_out_revokes_every_copy_of_the_cookie(client: FlaskClient, app: Any) -> None:
    sign_in(client)
    cookie = client.get_cookie("session")
    assert cookie is not None
    copy = app.test_client()
    copy.set_cookie("session", cookie.value)
    assert copy.get("/campaigns/").status_code == 200
    token = csrf_token(client, "/campaigns/")
    assert client.post("/campaigns/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/campaigns/").status_code == 302
    replayed = copy.get("/campaigns/")
    assert replayed.status_code == 302 and "/campaigns/login" in replayed.location


def test_operators_search_add_and_remove_suppressed_addresses(client: FlaskClient) -> None:
    assert client.get("/campaigns/suppressions").status_code == 302  # sign in first
    sign_in(client)
    token = csrf_token(client, "/campaigns/suppressions")
    added = client.post("/campaigns/suppressions", data={
        "csrf_token": token, "email": "Gone@Example.com", "action": "add"})
    assert added.status_code == 303
    page = client.get("/campaigns/suppressions?q=gone").get_data(as_text=True)
    assert "gone@example.com" in page and "manual" in page
    assert "gone@example.com" not in client.get(
        "/campaigns/suppressions?q=nobody").get_data(as_text=True)
    refused = client.post("/campaigns/suppressions", data={"email": "x@example.com"})
    assert refused.status_code == 400  # no CSRF token
    bad = client.post("/campaigns/suppressions", data={
        "csrf_token": token, "email": "not an address", "action": "add"},
        follow_redirects=True)
    assert "Not an email address" in bad.get_data(as_text=True)
    client.post("/campaigns/suppressions", data={
        "csrf_token": token, "email": "gone@example.com", "action": "remove"})
    assert "gone@example.com" not in client.get(
        "/campaigns/suppressions?q=gone").get_data(as_text=True).split("</form>")[-1]
