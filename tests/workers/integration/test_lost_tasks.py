"""A message task whose worker died ends FAILURE in Flower and the result backend: the
reconciler sends ``task-failed`` for it (a real event over the real broker) when it
enqueues the recipients again."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery
from flask import Flask

from tasks.delivery.ledger import LEASE_PREFIX
from tasks.messages.store import MessageStore
from tasks.reconciler.service import Reconciler
from tasks.workers.heartbeats import Heartbeats
from tasks.workers.lost_tasks import REPORTED_BY, sweep, task_id_of
from tasks.workers.running import RUNNING_KEY
from tests.conftest import AUTH
from tests.support.lease_support import lease
from tests.support.smtp_server import SMTPTestServer

LATER = 120.0


def test_task_ids_come_only_from_task_run_tokens() -> None:
    assert task_id_of("postroom.deliver_message:abc-123") == "abc-123"
    assert task_id_of("campaign:c1:slot:3") is None
    assert task_id_of("t") is None
    assert task_id_of("postroom.otp.send:") is None


def test_the_task_of_a_dead_worker_is_marked_failed_when_its_recipients_are_requeued(
        worker_app: Flask, redis_client: redis.Redis) -> None:
    celery_app: Celery = worker_app.extensions["celery"]
    store = MessageStore(redis_client)
    message = store.create({"to": ["ada@example.com"], "subject": "Hi", "body": "x"},
                           ["ada@example.com"])
    task_id = str(uuid.uuid4())
    token = f"postroom.deliver_message:{task_id}"
    ledger = store.ledger(message.id)
    ledger.claim([0], token, lease(redis_client, token))
    redis_client.delete(LEASE_PREFIX + token)  # the worker died: its lease ran out
    assert ledger.orphaned_claims() == {token: [0]}

    events: list[dict[str, Any]] = []
    with celery_app.connection_for_read() as connection:
        receiver = celery_app.events.Receiver(
            connection, handlers={"task-failed": events.append})

        def consume() -> None:
            try:
                receiver.capture(limit=None, timeout=None, wakeup=False)
            except OSError:
                return

        threading.Thread(target=consume, name="lost-events", daemon=True).start()
        time.sleep(0.5)  # the receiver's queue is bound
        with worker_app.app_context():
            found = Reconciler(redis_client, grace=30).run(now=time.time() + LATER)
        deadline = time.monotonic() + 10
        while not events:
            assert time.monotonic() < deadline, "no task-failed event within 10 s"
            time.sleep(0.1)
        receiver.should_stop = True
    assert found.reasons == {"message_idle": 1}, found
    [event] = events
    assert event["uuid"] == task_id and event["hostname"] == REPORTED_BY
    assert "WorkerLostError" in event["exception"]
    result = celery_app.AsyncResult(task_id)
    assert result.state == "FAILURE"
    prefix = celery_app.conf.broker_transport_options["global_keyprefix"]
    assert redis_client.llen(prefix + "mail") == 1  # its recipient is enqueued again


def test_a_task_running_on_a_worker_that_stops_reporting_is_marked_failed(
        worker_app: Flask, celery_worker: Celery, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    """A real worker lists the task it runs; when the worker's heartbeat is gone (it died),
    the sweep marks that task failed and clears the list."""
    release = threading.Event()

    def stall(address: str) -> None:  # the relay takes its time: the task stays running
        release.wait(15)

    smtp_server.handler.rcpt_reply = stall
    try:
        assert worker_app.test_client().post("/api/messages", headers=AUTH, json={
            "to": "ada@example.com", "subject": "Hi", "body": "x"}).status_code == 202
        deadline = time.monotonic() + 10
        while not (running := redis_client.hgetall(RUNNING_KEY)):
            assert time.monotonic() < deadline, "the running task was not listed within 10 s"
            time.sleep(0.1)
        [(entry, name)] = running.items()
        identity, _, task_id = entry.decode().partition(" ")
        assert name == b"postroom.deliver_message"
        assert identity in Heartbeats(redis_client).workers_since(time.time() - 30)
        assert sweep(celery_worker, redis_client) == []  # its worker is alive
        Heartbeats(redis_client).forget_worker(identity)  # it died: no more heartbeats
        assert sweep(celery_worker, redis_client) == [task_id]
        assert celery_worker.AsyncResult(task_id).state == "FAILURE"
        assert redis_client.hlen(RUNNING_KEY) == 0
    finally:
        release.set()
