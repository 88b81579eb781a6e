"""Helpers for the OTP tests: a clock to move by hand, CSRF tokens, codes read from mail."""

from __future__ import annotations

import re
import time

from flask.testing import FlaskClient

from tests.support.smtp_server import Received, SMTPTestServer

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


class Clock:
    """A ``now`` callable for ``OTP_CLOCK``: time moves only when a test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def csrf_token(client: FlaskClient, path: str = "/verify") -> str:
    page = client.get(path).get_data(as_text=True)
    match = CSRF.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def request_code(client: FlaskClient, email: str) -> str:
    """``POST /verify`` as a browser would; return the request id from the redirect."""
    response = client.post("/verify", data={"email": email, "csrf_token": csrf_token(client)})
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith("/validate?request=")
    return location.split("=", 1)[1]


def submit_code(client: FlaskClient, request_id: str, code: str) -> tuple[int, str]:
    page = client.get(f"/validate?request={request_id}").get_data(as_text=True)
    # a verified, locked or expired request's page has no form: the session's token is
    # the same on every page, so a replayed code is posted with the one from /verify
    found = CSRF.search(page)
    token = found.group(1) if found else csrf_token(client)
    response = client.post("/validate", data={"request_id": request_id, "code": code,
                                              "csrf_token": token})
    return response.status_code, response.get_data(as_text=True)


def code_in(received: Received, length: int = 6) -> str:
    """The code in a verification mail; both parts must carry it."""
    message = received.message
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    match = re.search(rf"^\s+([0-9]{{{length}}})\s*$", text, flags=re.MULTILINE)
    assert match, text
    assert match.group(1) in html
    return match.group(1)


def latest_code(smtp_server: SMTPTestServer, email: str, length: int = 6) -> str:
    messages = smtp_server.to(email)
    assert messages, f"no mail to {email}"
    return code_in(messages[-1], length)
