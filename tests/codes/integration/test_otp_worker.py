"""The verification flow with a real Celery worker on a real Redis broker."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from flask import Flask

from tests.codes.integration.test_otp_secrets import assert_nowhere
from tests.conftest import AUTH
from tests.support.otp_support import latest_code, request_code, submit_code
from tests.support.smtp_server import SMTPTestServer

pytestmark = pytest.mark.worker


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_broker_message_carries_only_the_request_id(worker_app: Flask, tmp_path: Path,
                                                    redis_client: redis.Redis,
                                                    smtp_server: SMTPTestServer) -> None:
    client = worker_app.test_client()  # no worker: the message stays on the broker
    response = client.post("/api/otp", json={"email": "ada@example.com"}, headers=AUTH)
    request_id = response.get_json()["id"]

    [raw] = redis_client.lrange(f"postroom:celery:{tmp_path.name}:otp", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "postroom.otp.send"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([request_id], {})
    assert smtp_server.received == []


def test_flow_with_a_real_worker(worker_app: Flask, celery_worker: Celery,
                                 smtp_server: SMTPTestServer, redis_client: redis.Redis,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = worker_app.test_client()
    started = time.monotonic()
    request_id = request_code(client, "ada@example.com")
    assert time.monotonic() - started < 5  # the form never waits for SMTP

    def sent() -> bool:
        shown = client.get(f"/verify/status/{request_id}").get_json()
        return bool(shown["status"] == "sent")

    wait_for(sent)
    code = latest_code(smtp_server, "ada@example.com")
    status, page = submit_code(client, request_id, code)
    assert status == 200 and "Email address verified" in page
    assert submit_code(client, request_id, code)[0] == 422
    shown = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
    assert shown["status"] == "verified"
    assert_nowhere({code}, redis_client, caplog, page)


def test_deferral_is_retried_by_the_worker(worker_app: Flask, celery_worker: Celery,
                                           smtp_server: SMTPTestServer,
                                           redis_client: redis.Redis) -> None:
    replies = iter(["451 4.3.0 greylisted, try later"])
    smtp_server.handler.rcpt_reply = lambda address: next(replies, None)
    client = worker_app.test_client()
    request_id = request_code(client, "ada@example.com")

    def settled() -> dict[str, Any] | None:
        shown: dict[str, Any] = client.get(f"/api/otp/{request_id}", headers=AUTH).get_json()
        return shown if shown["status"] not in {"queued", "sending", "deferred"} else None

    assert wait_for(settled)["status"] == "sent"
    record = json.loads(redis_client.get(f"postroom:otp:{request_id}"))
    assert [step["status"] for step in record["history"]] == [
        "queued", "sending", "deferred", "sending", "sent"]
    assert len(smtp_server.received) == 1
    code = latest_code(smtp_server, "ada@example.com")
    assert submit_code(client, request_id, code)[0] == 200
