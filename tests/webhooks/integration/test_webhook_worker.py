"""On a real worker and broker: a campaign finishes while its webhook endpoint is down,
and the events follow, retried from the ``events`` queue, once the endpoint is back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from flask import Flask

from tasks.campaigns.store import CampaignStore
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people, show
from tests.support.smtp_server import SMTPTestServer
from tests.support.webhook_receiver import receiving
from web.testing import free_port


@pytest.fixture
def events_worker(worker_app: Flask) -> Iterator[Celery]:
    """A real worker for every queue, ``events`` included."""
    celery_app: Celery = worker_app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False,
                      queues=["otp", "mail", "bulk", "events"], shutdown_timeout=30,
                      loglevel="WARNING"):
        yield celery_app


def test_events_follow_once_a_down_endpoint_returns(
        worker_app: Flask, events_worker: Celery, smtp_server: SMTPTestServer,
        redis_client: redis.Redis) -> None:
    client = worker_app.test_client()
    port = free_port()  # nothing listens there yet
    registered = client.post("/api/webhooks", headers=AUTH,
                             json={"url": f"http://127.0.0.1:{port}/hook"})
    assert registered.status_code == 201
    rows = people(5)
    campaign = create(client, csv_bytes(rows))
    deadline = time.monotonic() + 30
    while show(client, campaign["id"])["status"] != "completed":
        assert time.monotonic() < deadline, show(client, campaign["id"])
        time.sleep(0.05)
    counts = CampaignStore(redis_client).ledger(campaign["id"]).counts()
    assert counts["sent"] == 5 and len(smtp_server.received) == 5

    with receiving(port) as receiver:
        deadline = time.monotonic() + 90  # the first retry comes within a minute
        while len({e["id"] for e in receiver.events()}) < 7:
            assert time.monotonic() < deadline, [e["type"] for e in receiver.events()]
            time.sleep(0.2)
    types = sorted(e["type"] for e in {e["id"]: e for e in receiver.events()}.values())
    assert types == ["campaign.completed", "campaign.started"] + ["message.sent"] * 5
    assert {e["data"]["email"] for e in receiver.events("message.sent")} == {
        row["email"] for row in rows}
