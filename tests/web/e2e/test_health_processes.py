"""/healthz names workers and beat: a real Celery worker and a real ``celery beat``
process report to Redis; without them the answer is a 503 naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from flask import Flask
from flask.testing import FlaskClient

from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer
from web.health import routed_queues


def health(client: FlaskClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/healthz")
    body: dict[str, Any] = response.get_json()
    return response.status_code, body


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.2)


def test_healthz_needs_a_live_worker_and_beat(worker_app: Flask, redis_url: str,
                                              smtp_server: SMTPTestServer,
                                              tmp_path: Path) -> None:
    client = worker_app.test_client()
    status, body = health(client)
    assert status == 503
    assert body["down"] == ["workers", "beat"], body
    assert "no worker" in body["checks"]["workers"]["error"]
    assert "beat" in body["checks"]["beat"]["error"]

    celery_app: Celery = worker_app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=1, perform_ping_check=False,
                      queues=routed_queues(celery_app.conf), shutdown_timeout=30,
                      loglevel="WARNING") as worker:
        wait_for("the worker reported", lambda: health(client)[1]["checks"]["workers"]["ok"])
        status, body = health(client)
        assert status == 503 and body["down"] == ["beat"], body
        [seen] = body["checks"]["workers"]["seen"]
        assert seen.startswith(worker.hostname + "#")  # the node name and a random id
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'postroom_workers_alive{queue="events"} 1.0' in metrics

        environ = os.environ | {
            "POSTROOM_ENV": "testing", "SECRET_KEY": "test-secret-key",
            "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
            "CELERY_KEY_PREFIX": f"postroom:celery:{tmp_path.name}:",
            "CAMPAIGN_SCAN_INTERVAL": "1", "MAIL_DEFAULT_SENDER": "noreply@postroom.test"}
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "WARNING",
             "-s", str(tmp_path / "beat-schedule")],
            cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            wait_for("beat published", lambda: health(client)[0] == 200)
        finally:
            beat.terminate()
            beat.wait(30)
        status, body = health(client)
        assert body["checks"]["beat"]["ok"] and body["checks"]["beat"]["last_seen"] > 0
        assert body["down"] == []
