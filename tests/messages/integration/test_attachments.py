"""Attachments through POST /api/messages: multipart files and base64 JSON, read back
from the SMTP server; stored once in Redis by SHA-256; limits and bad input."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tasks.messages.store import MessageStore
from tasks.messages.tasks import deliver_message
from tasks.shared.attachments import AttachmentStore, clean_filename, content_type_for
from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


def attachment_keys(redis_client: redis.Redis) -> list[bytes]:
    return sorted(redis_client.scan_iter(match="postroom:attachment:*"))


def test_multipart_with_files_and_fields(client: FlaskClient, smtp_server: SMTPTestServer,
                                         redis_client: redis.Redis) -> None:
    response = client.post("/api/messages", headers=AUTH, content_type="multipart/form-data",
                           data={
                               "to": ["Ada Lovelace <ada@example.com>, bob@example.com"],
                               "subject": "Your documents", "body": "Two files attached.",
                               "headers": json.dumps({"X-Ticket": "42"}),
                               "file1": (io.BytesIO(PDF), "/home/ada/résumé.pdf", ""),
                               "file2": (io.BytesIO(b"a,b\n1,2\n"), "../../etc/report.csv",
                                         "text/csv"),
                           })
    assert response.status_code == 202, response.get_json()
    [received] = smtp_server.received
    assert received.recipients == ["ada@example.com", "bob@example.com"]
    message = received.message
    assert message["X-Ticket"] == "42"
    assert message.get_content_type() == "multipart/mixed"
    files = {a.get_filename(): (a.get_content_type(), a.get_payload(decode=True))
             for a in message.iter_attachments()}
    assert files == {"résumé.pdf": ("application/pdf", PDF),
                     "report.csv": ("text/csv", b"a,b\n1,2\n")}
    assert len(attachment_keys(redis_client)) == 2


def test_json_with_base64_attachments(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    response = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com"], "subject": "x", "body": "see attached",
        "attachments": [
            {"filename": "scan.png", "content": base64.b64encode(b"\x89PNG....").decode()},
            {"filename": "data", "content": base64.encodebytes(PDF).decode(),
             "content_type": "application/pdf"},
        ]})
    assert response.status_code == 202, response.get_json()
    [received] = smtp_server.received
    files = [(a.get_filename(), a.get_content_type(), a.get_payload(decode=True))
             for a in received.message.iter_attachments()]
    assert files == [("scan.png", "image/png", b"\x89PNG...."),
                     ("data", "application/pdf", PDF)]


def test_attachments_are_stored_once_by_digest_and_tasks_get_references(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    ids = []
    for n in range(3):
        response = client.post("/api/messages", headers=AUTH, json={
            "to": [f"r{n}@example.com"], "subject": "x", "body": "x",
            "attachments": [{"filename": f"copy{n}.pdf",
                             "content": base64.b64encode(PDF).decode()}]})
        ids.append(response.get_json()["id"])
    digest = hashlib.sha256(PDF).hexdigest()
    assert attachment_keys(redis_client) == [f"postroom:attachment:{digest}".encode()]
    assert 0 < redis_client.ttl(f"postroom:attachment:{digest}") <= 7 * 24 * 3600
    stored = MessageStore(redis_client).get(ids[0])
    assert stored is not None
    assert stored.fields["attachments"] == [{"sha256": digest, "filename": "copy0.pdf",
                                             "content_type": "application/pdf",
                                             "size": len(PDF)}]
    assert len(redis_client.get(f"postroom:message:{ids[0]}") or b"") < 1000  # no bytes
    assert len(smtp_server.received) == 3


@pytest.mark.parametrize("config_overrides", [{"MAX_ATTACHMENT_BYTES": 1000}])
@pytest.mark.parametrize("transport", ["json", "multipart"])
def test_attachment_over_the_limit_is_413(client: FlaskClient, smtp_server: SMTPTestServer,
                                          redis_client: redis.Redis, transport: str) -> None:
    big = b"x" * 1001
    if transport == "json":
        response = client.post("/api/messages", headers=AUTH, json={
            "to": ["a@example.com"], "subject": "x", "body": "x",
            "attachments": [{"filename": "big.bin", "content": base64.b64encode(big).decode()}]})
    else:
        response = client.post("/api/messages", headers=AUTH,
                               content_type="multipart/form-data",
                               data={"to": "a@example.com", "subject": "x", "body": "x",
                                     "file": (io.BytesIO(big), "big.bin")})
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "attachment_too_large"
    assert "MAX_ATTACHMENT_BYTES" in error["message"]
    assert smtp_server.received == []
    assert attachment_keys(redis_client) == []


@pytest.mark.parametrize(("attachment", "field", "reason"), [
    ({"filename": "a.txt", "content": "not base64!"}, "attachments.0.content", "base64"),
    ({"filename": "a.eml", "content": "aGk=", "content_type": "multipart/mixed"},
     "attachments.0.content_type", "cannot be the type"),
    ({"filename": "a.txt", "content": "aGk=", "content_type": "text"},
     "attachments.0.content_type", "not a MIME type"),
    ({"filename": "", "content": "aGk="}, "attachments.0.filename", "at least 1"),
    ({"filename": "a.txt"}, "attachments.0.content", "Field required"),
])
def test_bad_attachments_are_422(client: FlaskClient, smtp_server: SMTPTestServer,
                                 attachment: dict[str, Any], field: str, reason: str) -> None:
    response = client.post("/api/messages", headers=AUTH, json={
        "to": ["a@example.com"], "subject": "x", "body": "x", "attachments": [attachment]})
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert reason in fields[field], fields
    assert smtp_server.received == []


def test_multipart_bad_headers_json_is_422(client: FlaskClient) -> None:
    response = client.post("/api/messages", headers=AUTH, content_type="multipart/form-data",
                           data={"to": "a@example.com", "subject": "x", "body": "x",
                                 "headers": "{nope"})
    assert response.status_code == 422
    assert "headers" in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("config_overrides", [{"MAIL_ASCII_ATTACHMENTS": True}])
def test_ascii_attachments_setting(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    client.post("/api/messages", headers=AUTH, json={
        "to": ["a@example.com"], "subject": "x", "body": "x",
        "attachments": [{"filename": "Überweisung für Zoë.pdf", "content": "aGk="}]})
    [received] = smtp_server.received
    [attachment] = received.message.iter_attachments()
    assert attachment.get_filename() == "Uberweisung fur Zoe.pdf"
    assert b"filename*=" not in received.data


def test_an_expired_attachment_fails_the_message_clearly(app: Flask, smtp_server: SMTPTestServer,
                                                         redis_client: redis.Redis) -> None:
    store = MessageStore(redis_client)
    ref = AttachmentStore(redis_client).put(PDF, "gone.pdf")
    message = store.create({"to": ["a@example.com"], "subject": "x", "body": "x",
                            "attachments": [ref.as_fields()]}, ["a@example.com"])
    redis_client.delete(f"postroom:attachment:{ref.sha256}")
    with app.app_context():
        deliver_message.apply(args=[message.id], throw=True)
    [record] = store.ledger(message.id).get([0])
    assert record.status == "failed"
    assert "gone.pdf" in (record.error or "") and "no longer stored" in (record.error or "")
    assert smtp_server.received == []


@pytest.mark.parametrize(("raw", "clean"), [
    ("C:\\Users\\ada\\report.pdf", "report.pdf"),
    ("/etc/passwd", "passwd"),
    ("../../.htaccess", "htaccess"),
    ("in\x00voice\r\n.pdf", "invoice.pdf"),
    ("\u202egnp.exe", "gnp.exe"),  # a right-to-left override is a control (format) character
    ("..", "attachment"),
    ("   ", "attachment"),
    ("x" * 300 + ".pdf", "x" * 255),
])
def test_file_names_lose_paths_and_control_characters(raw: str, clean: str) -> None:
    assert clean_filename(raw) == clean


@pytest.mark.parametrize(("name", "declared", "expected"), [
    ("a.pdf", None, "application/pdf"),
    ("a.pdf", "application/octet-stream", "application/pdf"),
    ("a.bin", "IMAGE/PNG; name=x", "image/png"),
    ("noext", None, "application/octet-stream"),
    ("mail.eml", None, "application/octet-stream"),  # message/rfc822 is not a plain file
])
def test_content_type_from_declaration_or_name(name: str, declared: str | None,
                                               expected: str) -> None:
    assert content_type_for(name, declared) == expected
