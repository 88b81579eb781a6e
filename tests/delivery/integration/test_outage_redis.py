"""Redis stopped under the API and the pages: 503 with Retry-After, nothing half-stored.

Each test runs its own redis-server (tests/outage_support.py), so stopping it leaves
the session's Redis alone; mail is counted at the real aiosmtpd server.
"""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tasks.bounces.store import unsubscribe_token
from tests.conftest import AUTH, app_config
from tests.support.campaign_helpers import csv_bytes, people
from tests.support.outage_support import stoppable_redis
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.api.blueprint import PUBLIC_ENDPOINTS
from web.testing import EmbeddedRedis

ADMIN = {"ADMIN_USERNAME": "operator", "ADMIN_PASSWORD": "correct horse battery"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = stoppable_redis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def outage_app(own_redis: EmbeddedRedis, smtp_server: SMTPTestServer) -> Flask:
    return create_app(app_config(own_redis.url, smtp_server.port, **ADMIN))


def assert_api_unavailable(response: TestResponse, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.get_data())
    assert response.headers.get("Retry-After", "").isdigit(), (what, response.headers)
    error = response.get_json()["error"]
    assert error["code"] == "unavailable" and error["message"], (what, error)


def assert_page_unavailable(response: TestResponse, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code)
    assert response.mimetype == "text/html", (what, response.mimetype)
    assert response.headers.get("Retry-After", "").isdigit(), (what, response.headers)
    assert "try again" in response.get_data(as_text=True), what


def token_from(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


MESSAGE = {"to": ["ada@example.com"], "subject": "Quarterly statement", "body": "Attached."}


def api_calls() -> list[tuple[str, str, dict[str, Any]]]:
    """Every /api route that reads or writes Redis, with a request valid in form."""
    some_id = uuid.uuid4().hex
    campaign = {"subject": "Hi {{ name }}", "body": "Hello",
                "recipients": [{"email": "a@example.com", "name": "A"}]}
    csv = {"subject": "Hi", "body": "Hello",
           "file": (io.BytesIO(csv_bytes(people(3))), "people.csv")}
    attachment = {"to": "ada@example.com", "subject": "Report", "body": "See attached",
                  "attachments": (io.BytesIO(b"%PDF-1.4 report"), "report.pdf")}
    return [
        ("POST", "/api/messages", {"json": MESSAGE}),
        ("POST", "/api/messages", {"data": attachment, "content_type": "multipart/form-data"}),
        ("GET", f"/api/messages/{some_id}", {}),
        ("POST", "/api/otp", {"json": {"email": "ada@example.com"}}),
        ("GET", f"/api/otp/{some_id}", {}),
        ("POST", f"/api/otp/{some_id}/verify", {"json": {"code": "123456"}}),
        ("GET", "/api/suppressions", {}),
        ("GET", "/api/suppressions/ada@example.com", {}),
        ("PUT", "/api/suppressions/ada@example.com", {"json": {"reason": "manual"}}),
        ("DELETE", "/api/suppressions/ada@example.com", {}),
        ("POST", "/api/webhooks", {"json": {"url": "https://hooks.example.com/postroom"}}),
        ("GET", "/api/webhooks", {}),
        ("DELETE", f"/api/webhooks/{some_id}", {}),
        ("GET", f"/api/webhooks/{some_id}/deliveries", {}),
        ("POST", "/api/bounces", {"data": b"From: MAILER-DAEMON@example.org\r\n\r\nundelivered",
                                  "content_type": "message/rfc822"}),
        ("POST", "/api/campaigns", {"json": campaign}),
        ("POST", "/api/campaigns", {"data": csv, "content_type": "multipart/form-data"}),
        ("GET", "/api/campaigns", {}),
        ("GET", f"/api/campaigns/{some_id}", {}),
        ("GET", f"/api/campaigns/{some_id}/recipients", {}),
        *[("POST", f"/api/campaigns/{some_id}/{action}", {})
          for action in ("pause", "resume", "cancel", "retry-failed", "start")],
        ("POST", f"/api/campaigns/{some_id}/test", {"json": {"to": ["ada@example.com"]}}),
    ]


def test_every_api_route_answers_503_and_the_keyed_retry_is_sent_once(
        outage_app: Flask, own_redis: EmbeddedRedis, smtp_server: SMTPTestServer) -> None:
    client = outage_app.test_client()
    key = {"Idempotency-Key": "statement-2026-q3", **AUTH}
    own_redis.stop()

    refused = client.post("/api/messages", json=MESSAGE, headers=key)
    assert_api_unavailable(refused, "POST /api/messages with Idempotency-Key")
    calls = api_calls()
    adapter = outage_app.url_map.bind("localhost")
    covered = {(adapter.match(path, method)[0], method) for method, path, _ in calls}
    routes = {(rule.endpoint, method) for rule in outage_app.url_map.iter_rules()
              if rule.rule.startswith("/api/") and rule.endpoint not in PUBLIC_ENDPOINTS
              for method in rule.methods or () if method in {"GET", "POST", "PUT", "DELETE"}}
    assert routes <= covered, f"API routes not tried with Redis down: {routes - covered}"
    statuses = {}
    for method, path, options in calls:
        response = client.open(path, method=method, headers=AUTH, **options)
        assert_api_unavailable(response, f"{method} {path}")
        statuses[f"{method} {path}"] = response.status_code
    assert client.get("/api/openapi.json").status_code == 200  # needs no Redis
    assert client.get("/api/docs").status_code == 200
    assert smtp_server.received == [], (
        f"{len(smtp_server.received)} message(s) reached the SMTP server while Redis was down")

    own_redis.start()
    retried = client.post("/api/messages", json=MESSAGE, headers=key)
    assert retried.status_code == 202, retried.get_json()
    assert "Idempotent-Replayed" not in retried.headers  # nothing was stored the first time
    again = client.post("/api/messages", json=MESSAGE, headers=key)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == retried.get_json()["id"]
    received = [r for r in smtp_server.received if r.message["Subject"] == MESSAGE["subject"]]
    assert len(received) == 1, (
        f"after Redis came back the keyed retry reached the SMTP server {len(received)} "
        f"time(s) (expected 1); {len(statuses) + 1} calls were refused with 503 before")
    assert received[0].recipients == ["ada@example.com"]


def test_pages_answer_a_503_page(outage_app: Flask, own_redis: EmbeddedRedis,
                                 smtp_server: SMTPTestServer) -> None:
    client = outage_app.test_client()
    login_token = token_from(client, "/campaigns/login")
    signed_in = client.post("/campaigns/login", data={
        "csrf_token": login_token, "username": "operator", "password": "correct horse battery"})
    assert signed_in.status_code == 303
    verify_token = token_from(client, "/verify")  # signing in starts a new session
    new_token = token_from(client, "/campaigns/new")
    unsubscribe = unsubscribe_token(outage_app.config["SECRET_KEY"], "ada@example.com",
                                    uuid.uuid4().hex)
    some_id = uuid.uuid4().hex
    own_redis.stop()

    pages = [
        client.post("/verify", data={"csrf_token": verify_token, "email": "ada@example.com"}),
        client.get(f"/validate?request={some_id}"),
        client.get("/campaigns/"),
        client.get(f"/campaigns/{some_id}"),
        client.post("/campaigns/new", content_type="multipart/form-data", data={
            "csrf_token": new_token, "subject": "Hi", "body": "Hello",
            "file": (io.BytesIO(csv_bytes(people(3))), "people.csv")}),
        client.post(f"/campaigns/{some_id}/pause", data={"csrf_token": new_token}),
        client.post(f"/unsubscribe/{unsubscribe}"),
    ]
    names = ["POST /verify", "GET /validate", "GET /campaigns/", "GET /campaigns/<id>",
             "POST /campaigns/new", "POST /campaigns/<id>/pause", "POST /unsubscribe/<token>"]
    for name, response in zip(names, pages, strict=True):
        assert_page_unavailable(response, name)
    polled = client.get(f"/verify/status/{some_id}", headers={"Accept": "application/json"})
    assert_api_unavailable(polled, "GET /verify/status/<id> (the page's live poll)")
    assert smtp_server.received == [], f"{len(smtp_server.received)} message(s) sent"

    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["down"] == ["redis", "broker"], health.get_json()


def wait_for_import(client: redis.Redis, at_least: int, stop: threading.Event) -> int:
    """Poll the importing campaign's recipient count until it reaches *at_least*."""
    while not stop.is_set():
        try:
            for name in client.scan_iter("postroom:delivery:campaign:*:counts"):
                queued = int(client.hget(name, "queued") or 0)
                if queued >= at_least:
                    return queued
        except redis.exceptions.ConnectionError:
            return -1
        time.sleep(0.002)
    return -1


def test_upload_cut_off_by_redis_leaves_no_campaign(outage_app: Flask,
                                                    own_redis: EmbeddedRedis,
                                                    smtp_server: SMTPTestServer) -> None:
    client = outage_app.test_client()
    rows = 40_000
    upload = csv_bytes(people(rows))
    watcher = redis.Redis.from_url(own_redis.url)
    seen: list[int] = []
    stop = threading.Event()

    def cut_off() -> None:
        seen.append(wait_for_import(watcher, 2000, stop))
        own_redis.stop()

    thread = threading.Thread(target=cut_off)
    thread.start()
    try:
        response = client.post("/api/campaigns", headers=AUTH, content_type="multipart/form-data",
                               data={"subject": "Hello {{ name }}", "body": "Dear {{ name }}",
                                     "file": (io.BytesIO(upload), "people.csv")})
    finally:
        stop.set()
        thread.join(30)
    imported = seen[0] if seen else -1
    assert imported >= 2000, f"Redis was stopped before the import reached 2000 ({imported})"
    assert_api_unavailable(response, f"upload cut off after {imported} of {rows} rows")

    own_redis.start()  # the AOF brings back everything written before the stop
    listed = client.get("/api/campaigns", headers=AUTH).get_json()["campaigns"]
    assert listed == [], f"{len(listed)} campaign(s) listed after the cut-off upload"
    left = [name.decode() for name in watcher.scan_iter("postroom:*campaign*")]
    lasting = [name for name in left if watcher.ttl(name) < 0]
    assert lasting == [], f"of {len(left)} keys the import left, these never expire: {lasting}"
    assert smtp_server.received == [], f"{len(smtp_server.received)} message(s) sent"
    watcher.close()
