"""What Flower shows: a delivery task's result says what the run did (counts, no address)
and is kept briefly; beat's routine tasks send no task events, so Flower's task list
holds mail, not housekeeping. A real worker, the real result backend and real events."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
from celery import Celery
from flask import Flask

import celeryconfig
from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer

# CELERY_ROUTINE_TASK_EVENTS=true shows them (celeryconfig reads it at import)
_ROUTINE_EVENTS = bool(celeryconfig.task_annotations["postroom.reconcile"]["send_events"])


def stored_results(client: redis.Redis) -> dict[str, tuple[dict[str, Any], int]]:
    """Task id -> (its stored meta, seconds it has left) in the result backend."""
    found = {}
    for name in client.scan_iter(match="postroom:celery:celery-task-meta-*", count=1000):
        raw = client.get(name)
        if raw is not None:
            meta = json.loads(raw)
            found[meta["task_id"]] = (meta, int(client.ttl(name)))
    return found


def test_a_message_task_result_counts_outcomes_without_an_address(
        worker_app: Flask, celery_worker: Celery, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.1.1 no such user" if address.startswith("gone@") else None)
    response = worker_app.test_client().post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "gone@example.com"], "subject": "Hi", "body": "Hello"})
    assert response.status_code == 202
    deadline = time.monotonic() + 20
    while not (results := stored_results(redis_client)):
        assert time.monotonic() < deadline, "no task result was stored within 20 s"
        time.sleep(0.2)
    [(meta, ttl)] = results.values()
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == {"sent": 1, "failed": 1, "deferred": 0, "suppressed": 0}
    assert 0 < ttl <= 3600
    raw = json.dumps(meta)
    assert "@" not in raw and "example.com" not in raw


def test_a_campaign_batch_result_counts_outcomes_without_an_address(
        worker_app: Flask, celery_worker: Celery, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    from tasks.campaigns.store import CampaignStore
    from tests.reconciler.integration.test_reconcile import new_campaign
    from tests.support.campaign_helpers import wait_for

    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.7.1 refused by policy" if address == "r2@example.com" else None)
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(redis_client, 5)
    with worker_app.app_context():
        from tasks.campaigns.tasks import start_campaign
        start_campaign.delay(campaign_id)
    wait_for(lambda: store.status(campaign_id) == "completed", timeout=20)
    batches = [meta for meta, _ in wait_for(lambda: [
        found for found in stored_results(redis_client).values()
        if "sent" in (found[0].get("result") or {})], timeout=10)]
    assert sum(meta["result"]["sent"] for meta in batches) == 4
    assert sum(meta["result"]["failed"] for meta in batches) == 1
    assert "example.com" not in json.dumps(batches)


def test_routine_tasks_send_no_events_while_deliveries_do(
        worker_app: Flask, celery_worker: Celery, smtp_server: SMTPTestServer) -> None:
    assert celery_worker.tasks["postroom.reconcile"].send_events is _ROUTINE_EVENTS
    assert celery_worker.tasks["postroom.campaign.start_due"].send_events is _ROUTINE_EVENTS
    seen: list[tuple[str, str]] = []
    ready = threading.Event()
    names: dict[str, str] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "task-received":
            names[event["uuid"]] = event["name"]
        if event["type"].startswith("task-"):
            seen.append((event["type"], names.get(event["uuid"], "")))

    with celery_worker.connection_for_read() as connection:
        receiver = celery_worker.events.Receiver(connection, handlers={"*": on_event})
        def consume() -> None:
            ready.set()
            try:
                receiver.capture(limit=None, timeout=None, wakeup=False)
            except OSError:  # the connection closed under it at the end of the test
                return

        threading.Thread(target=consume, name="flower-events", daemon=True).start()
        ready.wait(5)
        time.sleep(0.5)  # the receiver's queue is bound
        celery_worker.tasks["postroom.reconcile"].delay()
        response = worker_app.test_client().post("/api/messages", headers=AUTH, json={
            "to": "ada@example.com", "subject": "Hi", "body": "Hello"})
        assert response.status_code == 202
        deadline = time.monotonic() + 20
        while ("task-succeeded", "postroom.deliver_message") not in seen:
            assert time.monotonic() < deadline, f"no task-succeeded event within 20 s: {seen}"
            time.sleep(0.2)
        receiver.should_stop = True
    routine = [name for _, name in seen if name == "postroom.reconcile"]
    assert bool(routine) is _ROUTINE_EVENTS, seen
    assert len(smtp_server.received) == 1
