"""A worker publishes its task events in batches: every event Flower needs arrives, in far
fewer broker messages than events, soon after the task. A real worker, real Redis, the
events read as Flower reads them."""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery
from flask import Flask

from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer

MESSAGES = 6


def test_task_events_arrive_complete_in_batches(
        worker_app: Flask, celery_worker: Celery, smtp_server: SMTPTestServer) -> None:
    assert celery_worker.conf.worker_consumer == "tasks.workers.consumer:Consumer"
    events: list[tuple[str, str, float]] = []  # (type, task id, when it arrived)
    bodies: list[int] = []  # events per broker message
    ready = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"].startswith("task-"):
            events.append((event["type"], event["uuid"], time.monotonic()))

    with celery_worker.connection_for_read() as connection:
        receiver = celery_worker.events.Receiver(connection, handlers={"*": on_event})
        receive = receiver._receive

        def counting(body: Any, message: Any) -> None:
            bodies.append(len(body) if isinstance(body, list) else 1)
            receive(body, message)

        receiver._receive = counting

        def consume() -> None:
            ready.set()
            try:
                receiver.capture(limit=None, timeout=None, wakeup=False)
            except OSError:  # the connection closed under it at the end of the test
                return

        threading.Thread(target=consume, name="batch-events", daemon=True).start()
        ready.wait(5)
        time.sleep(0.5)  # the receiver's queue is bound
        client = worker_app.test_client()
        answered = {}
        for n in range(MESSAGES):
            response = client.post("/api/messages", headers=AUTH, json={
                "to": f"reader{n}@example.com", "subject": "Hi", "body": "Hello"})
            assert response.status_code == 202
            answered[response.get_json()["id"]] = time.monotonic()
        deadline = time.monotonic() + 20
        while sum(kind == "task-succeeded" for kind, _, _ in events) < MESSAGES:
            assert time.monotonic() < deadline, f"not every task-succeeded arrived: {events}"
            time.sleep(0.05)
        receiver.should_stop = True
    assert len(smtp_server.received) == MESSAGES
    by_task: dict[str, list[str]] = {}
    for kind, task_id, _ in events:
        by_task.setdefault(task_id, []).append(kind)
    assert len(by_task) == MESSAGES
    for kinds in by_task.values():
        assert kinds == ["task-received", "task-started", "task-succeeded"], kinds
    # 18 events; published one by one they would be 18 messages
    assert sum(bodies) == 3 * MESSAGES and len(bodies) <= MESSAGES, bodies
    assert max(bodies) > 1

