"""The dev capture server and the Outbox page that lists what it captured."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import app_config
from tests.smtp_server import SMTPTestServer
from web import create_app
from web.cli.embedded import CaptureServer


@pytest.fixture
def config_overrides(capture_server: CaptureServer) -> dict[str, Any]:
    return {"OUTBOX_DIR": str(capture_server.outbox)}


def send(capture_server: CaptureServer, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = "Postroom <noreply@postroom.test>"
    message["To"] = "Ada <ada@example.com>"
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", capture_server.port, timeout=5) as session:
        session.send_message(message, to_addrs=["ada@example.com", "eve@example.com"])


def test_capture_server_keeps_each_message_with_its_envelope(capture_server: CaptureServer) -> None:
    send(capture_server, "First", "one")
    send(capture_server, "Second", "two")
    files = sorted(capture_server.outbox.glob("*.eml"))
    assert len(files) == 2
    assert list(capture_server.outbox.glob(".*")) == []  # no partial files left
    first = files[0].read_text()
    assert "X-Envelope-From: noreply@postroom.test" in first
    assert "X-Envelope-To: ada@example.com, eve@example.com" in first
    assert "Subject: First" in first and "Subject: Second" in files[1].read_text()


def test_outbox_page_lists_and_shows_captured_mail(client: FlaskClient,
                                                   capture_server: CaptureServer) -> None:
    send(capture_server, "Welcome <aboard>", "Hello Ada,\nwelcome.")
    page = client.get("/outbox/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Welcome &lt;aboard&gt;" in html  # escaped
    [eml] = capture_server.outbox.glob("*.eml")
    shown = client.get(f"/outbox/{eml.stem}")
    assert shown.status_code == 200
    text = shown.get_data(as_text=True)
    assert "Hello Ada," in text and "eve@example.com" in text
    assert client.get("/outbox/20990101T000000.000000Z-ffffffff").status_code == 404


def test_outbox_page_exists_only_with_a_capture_server(redis_client: redis.Redis, redis_url: str,
                                                       smtp_server: SMTPTestServer) -> None:
    app = create_app(app_config(redis_url, smtp_server.port))
    assert app.test_client().get("/outbox/").status_code == 404
