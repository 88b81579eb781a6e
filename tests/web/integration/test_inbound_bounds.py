"""Every web input bounded before work is done on it: body sizes, JSON text, address lengths."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer

MB = 1024 * 1024
HUGE = 30 * MB  # over MAX_MESSAGE_BYTES (25 MB)
OPERATOR = ("operator", "correct horse battery")


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ADMIN_USERNAME": OPERATOR[0], "ADMIN_PASSWORD": OPERATOR[1]}


def stored(redis_client: redis.Redis) -> list[bytes]:
    return sorted(redis_client.scan_iter("*"))


def multipart(size: int) -> tuple[bytes, str]:
    boundary = "postroom-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() \
        + b"x" * size + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class CountingStream(io.BytesIO):
    """The request body, counting the bytes the server takes from it."""

    taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = super().readline(size)
        self.taken += len(data)
        return data


@pytest.mark.parametrize(("path", "kind"), [
    ("/api/messages", "json"), ("/api/messages", "multipart"), ("/api/otp", "json"),
    ("/verify", "form"), ("/verify", "multipart"), ("/validate", "form"),
    ("/campaigns/login", "form"), ("/campaigns/new", "multipart"),
])
def test_a_30_mb_body_is_413_before_anything_reads_it(
        client: FlaskClient, redis_client: redis.Redis, smtp_server: SMTPTestServer,
        path: str, kind: str) -> None:
    if kind == "json":
        body, content_type = b'{"to": ["ada@example.com"], "body": "' + b"x" * HUGE + b'"}', \
            "application/json"
    elif kind == "form":
        body, content_type = b"email=" + b"a" * HUGE, "application/x-www-form-urlencoded"
    else:
        body, content_type = multipart(HUGE)
    before = stored(redis_client)
    stream = CountingStream(body)
    response = client.post(path, input_stream=stream, content_length=len(body),
                           content_type=content_type, headers=AUTH)
    assert response.status_code == 413
    assert stream.taken < 1024 * 1024, f"{stream.taken} of {len(body)} bytes were read"
    if path.startswith("/api/"):
        assert response.get_json()["error"]["code"] == "request_entity_too_large"
    else:
        assert "more than this page takes" in response.get_data(as_text=True)
    assert stored(redis_client) == before  # no throttle counter, no record, no message
    assert smtp_server.received == []


def test_public_forms_take_far_less_than_a_message(client: FlaskClient,
                                                   redis_client: redis.Redis) -> None:
    body = b"email=" + b"a" * (100 * 1024)  # over MAX_FORM_BYTES (64 KiB)
    response = client.post("/verify", data=body,
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413
    assert stored(redis_client) == []


@pytest.fixture
def http_server(app: Flask) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def post_chunked(port: int, path: str, content_type: str, total: int) -> tuple[int, bytes]:
    """POST *total* bytes with Transfer-Encoding: chunked (no Content-Length)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("POST", path)
    connection.putheader("Content-Type", content_type)
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Authorization", AUTH["Authorization"])
    connection.endheaders()
    chunk = b"x" * (256 * 1024)
    sent = 0
    try:
        head = b'{"to": ["ada@example.com"], "body": "' if "json" in content_type else b"email="
        connection.send(b"%x\r\n%s\r\n" % (len(head), head))
        while sent < total:
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body went
    try:
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(("path", "content_type"), [
    ("/api/messages", "application/json"), ("/verify", "application/x-www-form-urlencoded")])
def test_a_chunked_30_mb_body_without_a_length_is_413(
        http_server: int, redis_client: redis.Redis, path: str, content_type: str) -> None:
    started = time.monotonic()
    status, body = post_chunked(http_server, path, content_type, HUGE)
    assert status == 413, body[:300]
    assert time.monotonic() - started < 10.0
    assert stored(redis_client) == []


@pytest.mark.parametrize("raw", [
    b'{"to": ["ada@example.com"], "subject": "Hi", "body": "caf\xe9"}',  # Latin-1, not UTF-8
    b'{"to": ["ada@example.com"], "subject": "Hi", "body": "\xed\xa0\x80"}',  # UTF-8 surrogate
    b'{"to": ["ada@example.com"], "subject": "Hi", "body": "\\ud800"}',  # escaped, lone
    b'{"to": ["ada@example.com"], "subject": "Hi", "body": "ok", "headers": {"X-\\udc00": "v"}}',
])
def test_json_that_is_not_utf8_text_is_400(client: FlaskClient, redis_client: redis.Redis,
                                           smtp_server: SMTPTestServer, raw: bytes) -> None:
    response = client.post("/api/messages", data=raw, content_type="application/json",
                           headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "bad_json"
    assert "UTF-8" in error["message"] or "surrogate" in error["message"]
    assert smtp_server.received == []
    assert not [name for name in stored(redis_client) if b"message" in name]


def test_a_surrogate_pair_is_still_text(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    raw = b'{"to": ["ada@example.com"], "subject": "Hi \\ud83d\\ude00", "body": "ok"}'
    response = client.post("/api/messages", data=raw, content_type="application/json",
                           headers=AUTH)
    assert response.status_code == 202, response.get_data(as_text=True)


EIGHT_MB_ADDRESS = "a" * (8 * MB) + "@example.com"


def test_an_8_mb_address_is_refused_at_once_on_the_api(client: FlaskClient,
                                                        redis_client: redis.Redis) -> None:
    for path, body in (("/api/otp", {"email": EIGHT_MB_ADDRESS}),
                       ("/api/messages", {"to": [EIGHT_MB_ADDRESS], "subject": "x", "body": "x"}),
                       ("/api/messages", {"to": ["ada@example.com"], "cc": [EIGHT_MB_ADDRESS],
                                          "subject": "x", "body": "x"})):
        started = time.monotonic()
        response = client.post(path, data=json.dumps(body), content_type="application/json",
                               headers=AUTH)
        took = time.monotonic() - started
        assert response.status_code == 422, path
        assert took < 2.0, f"{path}: {took:.2f} s"
        assert len(response.get_data()) < 2000  # the reply does not echo the address
    assert not [name for name in stored(redis_client) if b"otp:" in name]


def test_an_8_mb_address_is_refused_at_once_on_the_form(client: FlaskClient,
                                                         redis_client: redis.Redis) -> None:
    started = time.monotonic()
    response = client.post("/verify", data={"email": EIGHT_MB_ADDRESS})
    assert response.status_code == 413  # far over MAX_FORM_BYTES: not even read
    assert time.monotonic() - started < 2.0
    # under the form's bound, an address too long is refused by its length alone
    long_address = "a" * 60_000 + "@example.com"
    page = client.get("/verify").get_data(as_text=True)
    token = page.split('name="csrf_token" type="hidden" value="')[-1].split('"')[0]
    started = time.monotonic()
    response = client.post("/verify", data={"email": long_address, "csrf_token": token})
    assert time.monotonic() - started < 1.0
    assert response.status_code == 422
    assert "254" in response.get_data(as_text=True)
    assert not [name for name in stored(redis_client) if b"otp:request" in name]


def test_an_address_over_254_characters_is_refused_everywhere(client: FlaskClient) -> None:
    address = "a" * 250 + "@example.com"  # 262 characters
    for path, body in (("/api/otp", {"email": address}),
                       ("/api/messages", {"to": ["ada@example.com"], "bcc": [address],
                                          "subject": "x", "body": "x"}),
                       ("/api/campaigns", {"recipients": [{"email": address}],
                                           "subject": "x", "body": "x"})):
        response = client.post(path, json=body, headers=AUTH)
        text = response.get_data(as_text=True)
        if path == "/api/campaigns":  # a bad row is reported, not a failed request
            assert response.status_code in (202, 422), text
            assert "too long" in text
        else:
            assert response.status_code == 422, text
            assert "too long" in text
    started = time.monotonic()
    response = client.get(f"/api/suppressions/{'a' * MB}@example.com", headers=AUTH)
    assert response.status_code == 404 and time.monotonic() - started < 1.0
    assert "too long" in response.get_json()["error"]["message"]


def test_every_other_field_is_bounded_before_it_is_parsed(client: FlaskClient,
                                                          smtp_server: SMTPTestServer) -> None:
    many = ",".join(f"r{n}@example.com" for n in range(20_000))  # ~320 KB of addresses
    started = time.monotonic()
    response = client.post("/api/messages", data={"to": [many] * 4, "subject": "x", "body": "x"},
                           content_type="multipart/form-data", headers=AUTH)
    assert response.status_code == 422 and "to" in response.get_json()["error"]["fields"]
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    response = client.post("/api/messages", json={"to": ["ada@example.com"], "body": "x",
                                                  "subject": "x" * (20 * MB)}, headers=AUTH)
    assert response.status_code == 422 and "998" in response.get_json()["error"]["fields"][
        "subject"]
    assert time.monotonic() - started < 2.0
    created = client.post("/api/otp", json={"email": "ada@example.com"}, headers=AUTH)
    assert created.status_code == 202
    started = time.monotonic()
    response = client.post(f"/api/otp/{created.get_json()['id']}/verify",
                           json={"code": " " * (5 * MB) + "123456"}, headers=AUTH)
    assert response.status_code == 422
    assert time.monotonic() - started < 1.0
    assert smtp_server.received  # the code itself went out


def test_a_campaign_upload_may_exceed_the_message_bound_only_as_the_operators_csv(
        app: Flask, client: FlaskClient, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    app.config.update(MAX_MESSAGE_BYTES=20_000, MAX_FORM_BYTES=4_000,
                      CAMPAIGN_MAX_UPLOAD_BYTES=200_000)
    padding = "\r\n".join(f"not-an-address-{n:06d}" for n in range(3_000))  # ~66 KB
    csv = f"email\r\nada@example.com\r\n{padding}\r\n".encode()
    fields = {"subject": "Hi", "body": "Hello"}
    by_api = client.post("/api/campaigns", content_type="multipart/form-data", headers=AUTH,
                         data={**fields, "file": (io.BytesIO(csv), "list.csv")})
    assert by_api.status_code == 202, by_api.get_data(as_text=True)
    assert by_api.get_json()["total"] == 1 and by_api.get_json()["rejected"] == 3_000
    as_json = client.post("/api/campaigns", headers=AUTH, json={
        **fields, "recipients": [{"email": "ada@example.com", "pad": "x" * 30_000}]})
    assert as_json.status_code == 413  # JSON is not the CSV upload

    def new_campaign(signed_in: bool) -> int:
        page = client.get("/campaigns/new").get_data(as_text=True) if signed_in else ""
        token = page.split('name="csrf_token" value="')[-1].split('"')[0] if signed_in else "x"
        return client.post("/campaigns/new", content_type="multipart/form-data", data={
            **fields, "csrf_token": token,
            "file": (io.BytesIO(csv), "list.csv")}).status_code

    assert new_campaign(signed_in=False) == 413  # anonymous: the public form bound
    login = client.get("/campaigns/login").get_data(as_text=True)
    token = login.split('name="csrf_token" value="')[-1].split('"')[0]
    assert client.post("/campaigns/login", data={"csrf_token": token, "username": OPERATOR[0],
                                                 "password": OPERATOR[1]}).status_code == 303
    assert new_campaign(signed_in=True) == 303
