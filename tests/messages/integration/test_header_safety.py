"""Header fields: no control character gets in; domains go out as A-labels.

The attacks: VT, FF, NUL, other C0/C1 controls and U+2028/2029 in the subject,
display names, addresses, custom headers and file names; ``ada@bücher.de`` to a
relay without SMTPUTF8; a non-ASCII local part, which must not become an
encoded-word inside the address. Real Redis, real SMTP servers.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import AUTH, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app

CONTROLS = ["\x00", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029"]
BASE = {"to": ["ada@example.com"], "subject": "Hello", "body": "Hi"}


def with_control(char: str) -> list[tuple[dict[str, Any], str]]:
    """(request body, the field the 422 must name) for each header field."""
    attachment = {"filename": f"re{char}port.txt", "content": base64.b64encode(b"x").decode()}
    return [
        ({"subject": f"Hello{char}Bcc: eve@example.com"}, "subject"),
        ({"to": [f"Ada{char}Lovelace <ada@example.com>"]}, "to.0"),
        ({"to": [f"ada{char}@example.com"]}, "to.0"),
        ({"cc": [f"\"Bob{char}\" <bob@example.com>"]}, "cc.0"),
        ({"sender": f"News{char} <news@example.com>"}, "sender"),
        ({"reply_to": [f"Desk{char} <desk@example.com>"]}, "reply_to.0"),
        ({"headers": {"X-Ticket": f"42{char}"}}, "headers.X-Ticket"),
        ({"headers": {f"X-Tick{char}": "42"}}, "headers"),
        ({"attachments": [attachment]}, "attachments.0.filename"),
    ]


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_in_any_header_field_are_422(client: FlaskClient, char: str,
                                                        smtp_server: SMTPTestServer) -> None:
    for fields, named in with_control(char):
        response = client.post("/api/messages", json={**BASE, **fields}, headers=AUTH)
        assert response.status_code == 422, (fields, response.get_json())
        assert named in response.get_json()["error"]["fields"], response.get_json()
    assert smtp_server.received == []


@pytest.mark.parametrize("char", ["\x0b", "\x00", "\u2028"])
def test_control_characters_in_uploaded_file_names_are_422(client: FlaskClient,
                                                           char: str) -> None:
    response = client.post("/api/messages", headers=AUTH, content_type="multipart/form-data",
                           data={**{k: v for k, v in BASE.items() if k != "to"},
                                 "to": "ada@example.com",
                                 "file": (io.BytesIO(b"x"), f"re{char}port.txt", "text/plain")})
    assert response.status_code == 422
    assert "attachments" in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("char", ["\x0b", "\x85", "\u2029"])
def test_control_characters_in_a_campaign_subject_are_422(client: FlaskClient,
                                                          char: str) -> None:
    response = client.post("/api/campaigns", headers=AUTH, json={
        "subject": f"Hi{char}there", "body": "b", "recipients": [{"email": "ada@example.com"}]})
    assert response.status_code == 422
    assert "subject" in response.get_json()["error"]["fields"]


@pytest.fixture
def ascii_server() -> Iterator[SMTPTestServer]:
    """A relay that does not offer SMTPUTF8 (aiosmtpd's controller offers it by default)."""
    server = SMTPTestServer(enable_SMTPUTF8=False).start()
    yield server
    server.stop()


@pytest.fixture
def ascii_client(redis_client: redis.Redis, redis_url: str,
                 ascii_server: SMTPTestServer) -> FlaskClient:
    return create_app(app_config(redis_url, ascii_server.port)).test_client()


def test_idn_domains_go_out_as_a_labels(ascii_client: FlaskClient,
                                        ascii_server: SMTPTestServer) -> None:
    response = ascii_client.post("/api/messages", headers=AUTH, json={
        **BASE, "to": ["Ada <ada@bücher.de>"], "cc": ["bob@ÉXAMPLE.org"]})
    assert response.status_code == 202, response.get_json()
    [received] = ascii_server.received
    assert received.recipients == ["ada@xn--bcher-kva.de", "bob@xn--xample-9ua.org"]
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"To: Ada <ada@xn--bcher-kva.de>\r\n" in head
    assert b"Cc: bob@xn--xample-9ua.org\r\n" in head
    shown = ascii_client.get(f"/api/messages/{response.get_json()['id']}",
                             headers=AUTH).get_json()
    assert {r["status"] for r in shown["recipients"]} == {"sent"}


def test_a_non_ascii_local_part_fails_clearly_without_smtputf8(
        ascii_client: FlaskClient, ascii_server: SMTPTestServer) -> None:
    response = ascii_client.post("/api/messages", headers=AUTH,
                                 json={**BASE, "to": ["jürgen@bücher.de"]})
    assert response.status_code == 202, response.get_json()
    shown = ascii_client.get(f"/api/messages/{response.get_json()['id']}",
                             headers=AUTH).get_json()
    [recipient] = shown["recipients"]
    assert recipient["status"] == "failed"
    assert recipient["smtp_code"] == 553 and "SMTPUTF8" in recipient["error"]
    assert ascii_server.received == []


def test_a_non_ascii_local_part_goes_out_in_utf8_with_smtputf8(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    response = client.post("/api/messages", headers=AUTH, json={
        **BASE, "to": ["Jürgen <jürgen@bücher.de>"]})
    assert response.status_code == 202, response.get_json()
    [received] = smtp_server.received
    assert received.recipients == ["jürgen@xn--bcher-kva.de"]
    head = received.data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    [to_line] = [line for line in head.split("\r\n") if line.startswith("To:")]
    assert "jürgen@xn--bcher-kva.de" in to_line
    assert "=?" not in to_line.split("<", 1)[-1]  # no encoded-word inside the address
