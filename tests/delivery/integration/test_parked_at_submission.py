"""A message submitted while every relay is known to be down is parked by the process
that accepted it: no delivery task is published and no worker runs one for it; the
relay's probe releases it, and it is sent once.

The app with a real broker (Redis), a real SMTP server and, once the mail has parked,
a real Celery worker.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from flask import Flask

from tasks.delivery.parked import ParkedWork
from tasks.delivery.relay_state import RelayBoard
from tasks.delivery.watch_list import WATCH_KEY
from tests.conftest import AUTH
from tests.support.campaign_helpers import wait_for
from tests.support.smtp_server import SMTPTestServer

PROBE = 1.0  # MAIL_RELAY_PROBE_INTERVAL


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"MAIL_RELAY_PROBE_INTERVAL": PROBE}


def published_tasks(redis_client: redis.Redis, tmp_path: Path,
                    queue: str = "mail") -> list[str]:
    """The task names waiting in one of the broker's queues (the worker_app's prefix)."""
    name = f"postroom:celery:{tmp_path.name}:{queue}"
    return [json.loads(raw)["headers"]["task"] for raw in redis_client.lrange(name, 0, -1)]


def statuses(client: Any, ids: list[str]) -> Counter[str]:
    return Counter(client.get(f"/api/messages/{message_id}", headers=AUTH).get_json()["status"]
                   for message_id in ids)


@pytest.mark.worker
def test_mail_submitted_while_every_relay_is_down_parks_without_a_task(
        worker_app: Flask, redis_client: redis.Redis, smtp_server: SMTPTestServer,
        tmp_path: Path) -> None:
    relay = f"127.0.0.1:{smtp_server.port}"
    board = RelayBoard(redis_client, 0.0, breaker=60.0, probe=PROBE)
    board.failed(relay, "connection to the relay failed: ConnectionRefusedError()")
    client = worker_app.test_client()

    ids = []
    for n in range(5):
        response = client.post("/api/messages", headers=AUTH, json={
            "to": [f"parked{n}@example.com"], "subject": "Your receipt", "body": "Thanks."})
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])

    # nothing for a worker to run but the one probe the first park scheduled
    assert published_tasks(redis_client, tmp_path) == ["postroom.relay_probe"]
    assert len(ParkedWork(redis_client)) == 5
    looks = [redis_client.zscore(WATCH_KEY, f"message:{message_id}") for message_id in ids]
    assert min(look or 0.0 for look in looks) > time.time() + 60  # no reconciler churn
    assert statuses(client, ids) == {"queued": 5}

    celery_app = worker_app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=["otp", "mail", "bulk"], shutdown_timeout=30, loglevel="WARNING"):
        wait_for(lambda: statuses(client, ids) == {"sent": 5}, timeout=30)
        time.sleep(0.5)  # a copy sent twice would arrive now
    sent = Counter(str(item.message["Message-ID"]) for item in smtp_server.received)
    assert len(sent) == 5 and set(sent.values()) == {1}
    assert len(ParkedWork(redis_client)) == 0
    assert board.parked_until([relay]) is None  # the probe found the relay up


@pytest.mark.worker
def test_mail_submitted_while_a_relay_may_be_tried_is_published(
        worker_app: Flask, redis_client: redis.Redis, tmp_path: Path) -> None:
    response = worker_app.test_client().post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com"], "subject": "Hello", "body": "Hi"})
    assert response.status_code == 202
    assert published_tasks(redis_client, tmp_path) == ["postroom.deliver_message"]
    assert len(ParkedWork(redis_client)) == 0


@pytest.mark.worker
def test_a_code_requested_while_every_relay_is_down_parks_until_its_expiry(
        worker_app: Flask, redis_client: redis.Redis, smtp_server: SMTPTestServer,
        tmp_path: Path) -> None:
    relay = f"127.0.0.1:{smtp_server.port}"
    RelayBoard(redis_client, 0.0, breaker=60.0, probe=PROBE).failed(relay, "connection refused")
    client = worker_app.test_client()
    response = client.post("/api/otp", headers=AUTH, json={"email": "ada@example.com"})
    assert response.status_code == 202
    request_id = response.get_json()["id"]

    assert published_tasks(redis_client, tmp_path, "otp") == []
    assert published_tasks(redis_client, tmp_path) == ["postroom.relay_probe"]
    [(member, deadline)] = redis_client.zrange("postroom:parked", 0, -1, withscores=True)
    assert json.loads(member) == ["postroom.otp.send", [request_id]]
    ttl = float(worker_app.config["OTP_TTL"])
    assert time.time() < deadline <= time.time() + ttl  # a code is no use after it expires

    celery_app = worker_app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=["otp", "mail", "bulk"], shutdown_timeout=30, loglevel="WARNING"):
        wait_for(lambda: len(smtp_server.received) == 1, timeout=30)
        time.sleep(0.5)
    [mail] = smtp_server.received
    assert mail.recipients == ["ada@example.com"]
    assert len(ParkedWork(redis_client)) == 0
