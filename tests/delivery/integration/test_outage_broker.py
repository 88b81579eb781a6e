"""The broker out of reach while Redis works: 503, nothing left behind, the retry sent.

The web app's ``CELERY_BROKER_URL`` points at a closed port, so publishing a task
fails as it would with the broker down; the client's retry then goes to a web
process whose broker works (Celery eager), and the SMTP server counts what arrived.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from werkzeug.test import TestResponse

from tasks.workers.heartbeats import Heartbeats
from tests.conftest import AUTH, app_config
from tests.support.outage_support import closed_port, stoppable_redis
from tests.support.smtp_server import SMTPTestServer
from web import create_app

MESSAGE = {"to": ["ada@example.com", "grace@example.com"], "subject": "Invoice 1042",
           "body": "Your invoice is attached."}
CAMPAIGN = {"name": "Autumn", "subject": "Hello {{ name }}", "body": "Dear {{ name }}",
            "recipients": [{"email": f"reader{i}@example.com", "name": f"Reader {i}"}
                           for i in range(3)]}


def no_broker_app(redis_url: str, smtp_port: int) -> Flask:
    """Tasks are published to a broker that is not there (no eager mode)."""
    return create_app(app_config(redis_url, smtp_port,
                                 CELERY_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0",
                                 CELERY={}))


@pytest.fixture
def broken(redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> Flask:
    return no_broker_app(redis_url, smtp_server.port)


def working_app(redis_url: str, smtp_port: int) -> Flask:
    """Another web process, whose broker works (eager). Created after the broken one:
    the Celery app made last is the one tasks are published through."""
    return create_app(app_config(redis_url, smtp_port))


def assert_unavailable(response: TestResponse) -> None:
    assert response.status_code == 503, response.get_data()
    assert response.headers["Retry-After"].isdigit()
    assert response.get_json()["error"]["code"] == "unavailable"


def postroom_keys(client: redis.Redis, pattern: str) -> list[str]:
    return sorted(name.decode() for name in client.scan_iter(pattern))


def test_message_not_queued_is_withdrawn_and_the_retry_is_sent(
        broken: Flask, redis_url: str, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    headers = {"Idempotency-Key": "invoice-1042", **AUTH}
    assert_unavailable(broken.test_client().post("/api/messages", json=MESSAGE, headers=headers))
    left = postroom_keys(redis_client, "postroom:message:*") + postroom_keys(
        redis_client, "postroom:idempotency:*") + postroom_keys(redis_client, "postroom:delivery:*")
    assert left == [], f"a message refused with 503 left {len(left)} key(s): {left}"

    app = working_app(redis_url, smtp_server.port)
    retried = app.test_client().post("/api/messages", json=MESSAGE, headers=headers)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    [held] = [redis_client.get(name).decode()
              for name in redis_client.scan_iter("postroom:idempotency:*")]
    assert held.endswith(retried.get_json()["id"]), f"the key should be marked queued: {held}"
    replayed = app.test_client().post("/api/messages", json=MESSAGE, headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    counts = Counter(rcpt for r in smtp_server.received for rcpt in r.recipients)
    assert counts == {"ada@example.com": 1, "grace@example.com": 1}, (
        f"after the retry each recipient should have the message once, got {dict(counts)} "
        f"in {len(smtp_server.received)} SMTP transaction(s)")


def test_pending_key_left_by_a_double_fault_is_queued_by_the_replay(
        tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    """Publishing fails *and* Redis goes away before the message can be withdrawn: the
    key stays pending, so the client's retry re-queues the stored message (sent once)."""
    own = stoppable_redis(tmp_path)
    try:
        watcher = redis.Redis.from_url(own.url)
        broken = no_broker_app(own.url, smtp_server.port)
        stop = threading.Event()

        def stop_redis_once_the_key_is_stored() -> None:
            while not stop.is_set():  # the publish retries for about 0.6 s meanwhile
                if any(watcher.scan_iter("postroom:idempotency:*")):
                    own.stop()
                    return
                time.sleep(0.002)

        thread = threading.Thread(target=stop_redis_once_the_key_is_stored)
        thread.start()
        headers = {"Idempotency-Key": "invoice-1042", **AUTH}
        try:
            first = broken.test_client().post("/api/messages", json=MESSAGE, headers=headers)
        finally:
            stop.set()
            thread.join(10)
        assert_unavailable(first)
        assert not own.running, "Redis should have been stopped during the publish"

        own.start()  # AOF: the message and its pending key are back
        held = [watcher.get(name).decode() for name in watcher.scan_iter("postroom:idempotency:*")]
        assert len(held) == 1 and held[0].endswith(":pending"), held
        eager = working_app(own.url, smtp_server.port)
        retried = eager.test_client().post("/api/messages", json=MESSAGE, headers=headers)
        assert retried.status_code == 202 and retried.headers["Idempotent-Replayed"] == "true"
        assert held[0].split(":")[1] == retried.get_json()["id"]
        again = eager.test_client().post("/api/messages", json=MESSAGE, headers=headers)
        assert again.status_code == 202
        counts = Counter(rcpt for r in smtp_server.received for rcpt in r.recipients)
        assert counts == {"ada@example.com": 1, "grace@example.com": 1}, (
            f"the re-queued message should reach each recipient once, got {dict(counts)}")
        watcher.close()
    finally:
        own.stop()


def test_campaign_not_started_is_not_listed_and_the_retry_runs(
        broken: Flask, redis_url: str, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    assert_unavailable(broken.test_client().post("/api/campaigns", json=CAMPAIGN, headers=AUTH))
    client = working_app(redis_url, smtp_server.port).test_client()
    listed = client.get("/api/campaigns", headers=AUTH).get_json()["campaigns"]
    assert listed == [], f"{len(listed)} campaign(s) listed after a 503"
    left = postroom_keys(redis_client, "postroom:*campaign*")
    assert left == [], f"the withdrawn campaign left {left}"

    retried = client.post("/api/campaigns", json=CAMPAIGN, headers=AUTH)
    assert retried.status_code == 202, retried.get_json()
    shown = client.get(f"/api/campaigns/{retried.get_json()['id']}", headers=AUTH).get_json()
    counts = Counter(rcpt for r in smtp_server.received for rcpt in r.recipients)
    assert counts == {f"reader{i}@example.com": 1 for i in range(3)}, (
        f"the retried campaign should reach each of 3 readers once, got {dict(counts)}")
    assert (shown["status"], shown["counts"]["sent"]) == ("completed", 3), shown
    assert len(client.get("/api/campaigns", headers=AUTH).get_json()["campaigns"]) == 1


def test_healthz_names_the_broker(broken: Flask, redis_client: redis.Redis) -> None:
    heartbeats = Heartbeats(redis_client)  # a worker and beat that are alive, as deployed
    heartbeats.worker("celery@worker-host")
    heartbeats.beat()
    response = broken.test_client().get("/healthz")
    body: dict[str, Any] = response.get_json()
    assert response.status_code == 503
    assert body["down"] == ["broker"], body
    assert body["checks"]["redis"]["ok"] is True and body["checks"]["broker"]["error"]
