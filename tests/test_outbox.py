"""The dev capture server and the Outbox page that lists what it captured."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import app_config
from tests.smtp_server import SMTPTestServer, free_port
from web import create_app
from web.cli.embedded import CaptureServer


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[CaptureServer]:
    server = CaptureServer(tmp_path / "outbox", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def config_overrides(capture: CaptureServer) -> dict[str, Any]:
    return {"OUTBOX_DIR": str(capture.outbox)}


def send(capture: CaptureServer, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = "Postroom <noreply@postroom.test>"
    message["To"] = "Ada <ada@example.com>"
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", capture.port, timeout=5) as session:
        session.send_message(message, to_addrs=["ada@example.com", "eve@example.com"])


def test_capture_server_keeps_each_message_with_its_envelope(capture: CaptureServer) -> None:
    send(capture, "First", "one")
    send(capture, "Second", "two")
    files = sorted(capture.outbox.glob("*.eml"))
    assert len(files) == 2
    assert list(capture.outbox.glob(".*")) == []  # no partial files left
    first = files[0].read_text()
    assert "X-Envelope-From: noreply@postroom.test" in first
    assert "X-Envelope-To: ada@example.com, eve@example.com" in first
    assert "Subject: First" in first and "Subject: Second" in files[1].read_text()


def test_outbox_page_lists_and_shows_captured_mail(client: FlaskClient,
                                                   capture: CaptureServer) -> None:
    send(capture, "Welcome <aboard>", "Hello Ada,\nwelcome.")
    page = client.get("/outbox/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Welcome &lt;aboard&gt;" in html  # escaped
    [eml] = capture.outbox.glob("*.eml")
    shown = client.get(f"/outbox/{eml.stem}")
    assert shown.status_code == 200
    text = shown.get_data(as_text=True)
    assert "Hello Ada," in text and "eve@example.com" in text
    assert client.get("/outbox/20990101T000000.000000Z-ffffffff").status_code == 404


def test_outbox_page_exists_only_with_a_capture_server(redis_client: redis.Redis, redis_url: str,
                                                       smtp_server: SMTPTestServer) -> None:
    app = create_app(app_config(redis_url, smtp_server.port))
    assert app.test_client().get("/outbox/").status_code == 404
