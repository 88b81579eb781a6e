"""The dev capture server and the Outbox page that lists what it captured."""

from __future__ import annotations

import re
import smtplib
import time
from email.message import EmailMessage
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from cli.embedded import CaptureServer
from tests.conftest import app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app

OPERATOR = ("operator", "correct horse battery")


@pytest.fixture
def config_overrides(capture_server: CaptureServer) -> dict[str, Any]:
    return {"OUTBOX_DIR": str(capture_server.outbox), "MAIL_PORT": capture_server.port,
            "ADMIN_USERNAME": OPERATOR[0], "ADMIN_PASSWORD": OPERATOR[1]}


def sign_in(client: FlaskClient, next_path: str = "/outbox/") -> Any:
    """Sign in as the operator (the campaign pages' login), as the Outbox needs."""
    page = client.get("/campaigns/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return client.post(f"/campaigns/login?next={next_path}", data={
        "csrf_token": match.group(1), "username": OPERATOR[0], "password": OPERATOR[1]})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client signed in as the operator."""
    signed_in = app.test_client()
    assert sign_in(signed_in).status_code == 303
    return signed_in


def test_outbox_refuses_an_anonymous_client_and_opens_after_sign_in(
        app: Flask, capture_server: CaptureServer) -> None:
    send(capture_server, "Your code", "Your code is 123456")
    [eml] = capture_server.outbox.glob("*.eml")
    anonymous = app.test_client()
    for path in ("/outbox/", f"/outbox/{eml.stem}", f"/outbox/{eml.stem}/raw",
                 f"/outbox/{eml.stem}/html", "/outbox/latest.json"):
        refused = anonymous.get(path)
        assert refused.status_code == 302, path
        assert "/campaigns/login" in refused.location
        assert b"123456" not in refused.get_data()
    assert anonymous.post("/outbox/clear").status_code in (302, 400)
    assert list(capture_server.outbox.glob("*.eml")) == [eml]  # nothing cleared
    signed_in = sign_in(anonymous, f"/outbox/{eml.stem}")
    assert signed_in.status_code == 303 and signed_in.location.endswith(f"/outbox/{eml.stem}")
    shown = anonymous.get(f"/outbox/{eml.stem}")
    assert shown.status_code == 200 and "123456" in shown.get_data(as_text=True)
    assert anonymous.post("/campaigns/logout",
                          data={"csrf_token": csrf_token(anonymous)}).status_code == 303
    assert anonymous.get("/outbox/").status_code == 302  # signing out closes it again


@pytest.mark.parametrize("setting", [
    {"TESTING": False, "POSTROOM_ENV": "production", "PUBLIC_URL": "https://mail.example.com",
     "METRICS_TOKEN": "metrics-token"},
    {"TESTING": False, "POSTROOM_ENV": "testing"},
    {"MAIL_SERVER": "relay.example.com"},
])
def test_outbox_is_off_without_the_embedded_capture_server_in_development(
        redis_client: redis.Redis, redis_url: str, capture_server: CaptureServer,
        setting: dict[str, Any]) -> None:
    config = app_config(redis_url, capture_server.port, OUTBOX_DIR=str(capture_server.outbox),
                        ADMIN_USERNAME=OPERATOR[0], ADMIN_PASSWORD=OPERATOR[1], **setting)
    app = create_app(config)
    assert "outbox" not in app.blueprints
    client = app.test_client()
    assert client.get("/outbox/").status_code == 404
    development = create_app({**config, "TESTING": False, "POSTROOM_ENV": "development",
                              "MAIL_SERVER": "127.0.0.1"})
    assert "outbox" in development.blueprints  # the same OUTBOX_DIR, as postroom dev runs it


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


def write_captured(capture_server: CaptureServer, count: int, subject: str = "Note") -> list[str]:
    """*count* captured files written straight into the outbox, oldest first."""
    names = []
    for number in range(count):
        name = f"20260101T{number // 3600 % 24:02d}{number // 60 % 60:02d}{number % 60:02d}" \
               f".{number:06d}Z-{number:08x}"
        (capture_server.outbox / f"{name}.eml").write_bytes(
            b"X-Envelope-From: noreply@postroom.test\r\nX-Envelope-To: r%d@example.com\r\n"
            b"From: noreply@postroom.test\r\nTo: r%d@example.com\r\nSubject: %s %d\r\n"
            b"\r\nbody %d\r\n" % (number, number, subject.encode(), number, number))
        names.append(name)
    return names


def csrf_token(client: FlaskClient) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/outbox/").get_data(True))
    assert match
    return match.group(1)


def test_outbox_list_counts_pages_and_searches(client: FlaskClient,
                                               capture_server: CaptureServer) -> None:
    names = write_captured(capture_server, 120)
    first = client.get("/outbox/").get_data(as_text=True)
    assert "120 messages" in first and "page 1 of 3" in first
    assert first.index("Note 119") < first.index("Note 118")  # newest first
    assert "Note 69" not in first and "Note 70" in first
    third = client.get("/outbox/?page=3").get_data(as_text=True)
    assert "Note 0<" in third and "Note 20<" not in third
    found = client.get("/outbox/?q=R7%40EXAMPLE.com").get_data(as_text=True)
    assert "1 message matching" in found and "Note 7<" in found
    by_subject = client.get("/outbox/?q=note 11").get_data(as_text=True)
    assert "11 messages matching" in by_subject  # 11, 110..119
    assert client.get("/outbox/latest.json").get_json() == {"count": 120, "newest": names[-1]}
    assert "No captured message matches" in client.get("/outbox/?q=nobody").get_data(True)


def test_outbox_refuses_junk_without_a_server_error(client: FlaskClient,
                                                    capture_server: CaptureServer) -> None:
    write_captured(capture_server, 3)
    assert client.get("/outbox/?page=abc").status_code == 400
    assert client.get("/outbox/?page=0").status_code == 400
    assert client.get("/outbox/?page=%C2%B2").status_code == 400  # a superscript two
    assert client.get("/outbox/?page=99").status_code == 404
    assert client.get("/outbox/?q=" + "%00%ff<x>" * 500).status_code == 200
    for junk in ("../secret", "..%2f..%2fetc%2fpasswd", "latest", "x" * 300, "%00"):
        assert client.get(f"/outbox/{junk}").status_code == 404
        assert client.get(f"/outbox/{junk}/raw").status_code == 404
    [name, *_] = sorted(path.stem for path in capture_server.outbox.glob("*.eml"))
    assert client.get(f"/outbox/{name}/attachments/0").status_code == 404
    assert client.get(f"/outbox/{name}/attachments/-1").status_code == 404


def test_outbox_stays_fast_with_twelve_thousand_messages(client: FlaskClient,
                                                         capture_server: CaptureServer) -> None:
    write_captured(capture_server, 12_000)
    started = time.monotonic()
    first = client.get("/outbox/")
    listed = time.monotonic() - started
    assert first.status_code == 200 and "12000 messages" in first.get_data(as_text=True)
    assert listed < 2.0, f"the first page took {listed:.2f} s"
    client.get("/outbox/?q=r11999@")  # reads every file's headers once
    started = time.monotonic()
    found = client.get("/outbox/?q=r11999@").get_data(as_text=True)
    assert time.monotonic() - started < 2.0
    assert "1 message matching" in found and "Note 11999" in found


def test_clearing_the_outbox_needs_the_form_token(client: FlaskClient,
                                                  capture_server: CaptureServer) -> None:
    write_captured(capture_server, 4)
    assert client.post("/outbox/clear").status_code == 400  # no CSRF token
    assert len(list(capture_server.outbox.glob("*.eml"))) == 4
    cleared = client.post("/outbox/clear", data={"csrf_token": csrf_token(client)})
    assert cleared.status_code == 303
    assert list(capture_server.outbox.glob("*.eml")) == []
    page = client.get("/outbox/").get_data(as_text=True)
    assert "Deleted 4 captured messages" in page and "0 messages" in page


def rich_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Postroom <noreply@postroom.test>"
    message["To"] = "Ada <ada@example.com>"
    message["Cc"] = "Grace <grace@example.com>"
    message["Subject"] = "Your report"
    message["X-Campaign"] = "spring"
    message.set_content("Plain words for Ada.")
    message.add_alternative("<p>Rich <b>words</b></p><script>alert(1)</script>", subtype="html")
    message.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                           filename='q3 "final";\treport.pdf')
    message.add_attachment("naïve,data\n", subtype="csv", filename="données.csv")
    return message


def test_a_message_shows_text_html_cc_headers_source_and_attachments(
        client: FlaskClient, capture_server: CaptureServer) -> None:
    with smtplib.SMTP("127.0.0.1", capture_server.port, timeout=5) as session:
        session.send_message(rich_message(), to_addrs=["ada@example.com", "bcc@example.com"])
    [eml] = capture_server.outbox.glob("*.eml")
    page = client.get(f"/outbox/{eml.stem}").get_data(as_text=True)
    assert "Plain words for Ada." in page and "grace@example.com" in page
    assert "bcc@example.com" in page and "X-Campaign" in page and "spring" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in the escaped raw source only
    assert "<script>alert" not in page
    frame = re.search(r"<iframe[^>]*>", page)
    assert frame and 'sandbox=""' in frame.group() and f"/outbox/{eml.stem}/html" in frame.group()
    html = client.get(f"/outbox/{eml.stem}/html")
    assert html.mimetype == "text/html" and "<b>words</b>" in html.get_data(as_text=True)
    policy = html.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script" not in policy
    raw = client.get(f"/outbox/{eml.stem}/raw")
    assert raw.mimetype == "text/plain" and raw.data == eml.read_bytes()
    pdf = client.get(f"/outbox/{eml.stem}/attachments/0")
    assert pdf.data == b"%PDF-1.4 fake" and pdf.mimetype == "application/pdf"
    disposition = pdf.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and "\r" not in disposition
    assert "\n" not in disposition and 'filename="q3 \\"final\\";_report.pdf"' in disposition
    csv = client.get(f"/outbox/{eml.stem}/attachments/1")
    assert csv.mimetype == "text/csv" and "naïve" in csv.get_data(as_text=True)
    assert "filename*=UTF-8''donn%C3%A9es.csv" in csv.headers["Content-Disposition"]
    assert csv.headers["X-Content-Type-Options"] == "nosniff"


def test_a_large_message_shows_part_of_its_source_and_serves_all_of_it(
        client: FlaskClient, capture_server: CaptureServer) -> None:
    message = rich_message()
    message.add_attachment(b"\x00" * 400_000, maintype="application", subtype="octet-stream",
                           filename="big.bin")
    with smtplib.SMTP("127.0.0.1", capture_server.port, timeout=5) as session:
        session.send_message(message, to_addrs=["ada@example.com"])
    [eml] = capture_server.outbox.glob("*.eml")
    page = client.get(f"/outbox/{eml.stem}").get_data(as_text=True)
    assert "open it as plain text for the whole message" in page
    assert len(page) < 300_000
    assert client.get(f"/outbox/{eml.stem}/raw").data == eml.read_bytes()
    big = client.get(f"/outbox/{eml.stem}/attachments/2")
    assert big.data == b"\x00" * 400_000 and big.mimetype == "application/octet-stream"
