"""The Outbox's list details (attachment marker, relative dates, sizes), deleting one
message, the remote-image note, and its Mailpit-shaped JSON, behind the operator login."""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cli.embedded import CaptureServer
from tests.web.integration.test_outbox import OPERATOR, csrf_token, sign_in
from web.outbox_view import readable_size, relative_time, remote_images


@pytest.fixture
def config_overrides(capture_server: CaptureServer) -> dict[str, Any]:
    return {"OUTBOX_DIR": str(capture_server.outbox), "MAIL_PORT": capture_server.port,
            "ADMIN_USERNAME": OPERATOR[0], "ADMIN_PASSWORD": OPERATOR[1]}


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    signed_in = app.test_client()
    assert sign_in(signed_in).status_code == 303
    return signed_in


def deliver(capture_server: CaptureServer, subject: str, *, html: str | None = None,
            attachment: bytes | None = None) -> None:
    message = EmailMessage()
    message["From"] = "Postroom <noreply@postroom.test>"
    message["To"] = "Ada <ada@example.com>"
    message["Subject"] = subject
    message.set_content("Hello Ada")
    if html is not None:
        message.add_alternative(html, subtype="html")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="pdf",
                               filename="report.pdf")
    with smtplib.SMTP("127.0.0.1", capture_server.port, timeout=5) as session:
        session.send_message(message)


def names(capture_server: CaptureServer) -> list[str]:
    return sorted((p.stem for p in capture_server.outbox.glob("*.eml")), reverse=True)


def test_list_marks_attachments_and_shows_sizes_and_relative_dates(
        client: FlaskClient, capture_server: CaptureServer) -> None:
    deliver(capture_server, "Plain")
    deliver(capture_server, "With file", attachment=b"%PDF" + b"x" * 20_000)
    page = client.get("/outbox/").get_data(as_text=True)
    rows = page.split("<tr>")[2:]
    assert "With file" in rows[0] and 'aria-label="has attachments"' in rows[0]
    assert "Plain" in rows[1] and "has attachments" not in rows[1]
    assert re.search(r'<time class="relative-time" datetime="[\d-]+T[\d:.]+Z" '
                     r'title="\d{4}-\d\d-\d\d [\d:]{8} UTC">just now</time>', rows[0])
    assert re.search(r'<small class="size">2\d\.\d kB</small>', rows[0])
    assert re.search(r'<small class="size">\d{3} B</small>', rows[1])
    assert readable_size(999) == "999 B" and readable_size(1_234_567) == "1.2 MB"
    assert relative_time(0, now=3 * 3600 + 5) == "3 h ago"
    assert relative_time(0, now=86400 * 2) == "2 days ago"


def test_delete_one_message_needs_csrf(client: FlaskClient,
                                       capture_server: CaptureServer) -> None:
    deliver(capture_server, "Keep")
    deliver(capture_server, "Drop")
    drop, keep = names(capture_server)
    assert client.post(f"/outbox/{drop}/delete").status_code == 400  # no CSRF token
    assert len(names(capture_server)) == 2
    token = csrf_token(client)
    done = client.post(f"/outbox/{drop}/delete", data={"csrf_token": token})
    assert done.status_code == 303
    assert names(capture_server) == [keep]
    assert client.post(f"/outbox/{drop}/delete", data={"csrf_token": token}).status_code == 404
    assert client.post("/outbox/..%2Fetc/delete", data={"csrf_token": token}).status_code == 404


def test_json_list_and_message_in_mailpits_shape(app: Flask, client: FlaskClient,
                                                 capture_server: CaptureServer) -> None:
    deliver(capture_server, "One")
    deliver(capture_server, "Two", html='<p>Hi <img src="https://tracker.example/p.gif">'
            '<img src="data:image/png;base64,AAAA"></p>', attachment=b"%PDF-1.4")
    listed = client.get("/outbox/api/messages?limit=1").get_json()
    assert (listed["total"], listed["messages_count"], listed["count"]) == (2, 2, 1)
    [newest] = listed["messages"]
    assert newest["Subject"] == "Two" and newest["Attachments"] == 1
    assert newest["From"] == {"Name": "Postroom", "Address": "noreply@postroom.test"}
    assert newest["To"] == [{"Name": "Ada", "Address": "ada@example.com"}]
    assert newest["Size"] > 0 and newest["Created"].endswith("Z")
    second = client.get("/outbox/api/messages?start=1&limit=1").get_json()["messages"]
    assert [m["Subject"] for m in second] == ["One"]
    assert client.get("/outbox/api/messages?query=one").get_json()["messages_count"] == 1

    message = client.get(f"/outbox/api/messages/{newest['ID']}").get_json()
    assert message["Text"].strip() == "Hello Ada" and "tracker.example" in message["HTML"]
    assert message["RemoteImages"] == 1
    assert message["Attachments"] == [{"PartID": "0", "FileName": "report.pdf",
                                       "ContentType": "application/pdf", "Size": 8}]
    missing = client.get("/outbox/api/messages/20990101T000000.000000Z-00000000")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    bad = client.get("/outbox/api/messages?limit=ten")
    assert bad.status_code == 400 and bad.get_json()["error"]["fields"] == {
        "limit": "a whole number"}
    anonymous = app.test_client().get("/outbox/api/messages")
    assert anonymous.status_code == 302 and "/campaigns/login" in anonymous.location

    page = client.get(f"/outbox/{newest['ID']}").get_data(as_text=True)
    assert "1 remote image blocked" in page
    plain = client.get(f"/outbox/{names(capture_server)[1]}").get_data(as_text=True)
    assert "remote image" not in plain
    assert remote_images('<td background="//cdn.example/x.png" style="x:url(http://a/b)">') == 2
