"""A worker publishes its task events in batches: every event Flower needs arrives, in far
fewer broker messages than events, soon after the task, and still after the worker's
Redis restarted under it. A real worker, real Redis, the events read as Flower reads
them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from flask import Flask

from tests.conftest import AUTH, app_config, close_kept_sessions
from tests.support.outage_support import stoppable_redis
from tests.support.smtp_server import SMTPTestServer
from web import create_app

MESSAGES = 6


class Events:
    """Task events as a Flower-like receiver gets them: (type, task id), and how many
    events each broker message carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.bodies: list[int] = []

    def succeeded(self) -> int:
        return sum(kind == "task-succeeded" for kind, _ in self.seen)

    def wait_for_succeeded(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.succeeded() < n:
            assert time.monotonic() < deadline, f"not {n} task-succeeded: {self.seen}"
            time.sleep(0.05)


@contextmanager
def receiving(celery_app: Celery) -> Iterator[Events]:
    events, ready = Events(), threading.Event()
    with celery_app.connection_for_read() as connection:
        def on_event(event: dict[str, Any]) -> None:
            if event["type"].startswith("task-"):
                events.seen.append((event["type"], event["uuid"]))

        receiver = celery_app.events.Receiver(connection, handlers={"*": on_event})
        receive = receiver._receive

        def counting(body: Any, message: Any) -> None:
            events.bodies.append(len(body) if isinstance(body, list) else 1)
            receive(body, message)

        receiver._receive = counting

        def consume() -> None:
            ready.set()
            try:
                receiver.capture(limit=None, timeout=None, wakeup=False)
            except OSError:  # the connection closed under it
                return

        threading.Thread(target=consume, name="batch-events", daemon=True).start()
        ready.wait(5)
        time.sleep(0.5)  # the receiver's queue is bound
        try:
            yield events
        finally:
            receiver.should_stop = True


def post_messages(app: Flask, n: int, prefix: str) -> None:
    client = app.test_client()
    for k in range(n):
        response = client.post("/api/messages", headers=AUTH, json={
            "to": f"{prefix}{k}@example.com", "subject": "Hi", "body": "Hello"})
        assert response.status_code == 202, response.get_data(as_text=True)


def test_task_events_arrive_complete_in_batches(
        worker_app: Flask, celery_worker: Celery, smtp_server: SMTPTestServer) -> None:
    assert celery_worker.conf.worker_consumer == "tasks.workers.consumer:Consumer"
    with receiving(celery_worker) as events:
        post_messages(worker_app, MESSAGES, "reader")
        events.wait_for_succeeded(MESSAGES)
    assert len(smtp_server.received) == MESSAGES
    by_task: dict[str, list[str]] = {}
    for kind, task_id in events.seen:
        by_task.setdefault(task_id, []).append(kind)
    assert len(by_task) == MESSAGES
    for kinds in by_task.values():
        assert kinds == ["task-received", "task-started", "task-succeeded"], kinds
    # 18 events; published one by one they would be 18 messages
    assert sum(events.bodies) == 3 * MESSAGES and len(events.bodies) <= MESSAGES, \
        events.bodies
    assert max(events.bodies) > 1


def test_events_keep_coming_after_redis_restarts_under_the_worker(
        tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    """The worker reconnects with its events timer working: a single task's events,
    far fewer than Celery's 24 that force a publish, still arrive."""
    server = stoppable_redis(tmp_path)
    config = app_config(server.url, smtp_server.port)
    config["CELERY"] = {"task_always_eager": False}
    app = create_app(config)
    celery_app: Celery = app.extensions["celery"]
    try:
        with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                          queues=["otp", "mail", "bulk"], shutdown_timeout=30,
                          loglevel="WARNING"):
            with receiving(celery_app) as events:
                post_messages(app, 2, "before")
                events.wait_for_succeeded(2)
            server.restart()
            time.sleep(1.0)  # the worker notices and reconnects
            with receiving(celery_app) as events:
                deadline = time.monotonic() + 30
                while True:  # the API answers again once the app's pool reconnects
                    try:
                        post_messages(app, 1, f"after{len(events.seen)}")
                        break
                    except AssertionError:
                        assert time.monotonic() < deadline
                        time.sleep(0.5)
                # one message and only one: nothing fills the buffer to Celery's 24
                events.wait_for_succeeded(1, timeout=15)
    finally:
        close_kept_sessions(app)
        server.stop()
    assert len(smtp_server.received) == 3


def test_a_worker_that_stops_publishes_the_events_it_holds(
        worker_app: Flask, smtp_server: SMTPTestServer) -> None:
    """Stopped as soon as its task's mail is at the relay, before the flush is due: the
    task's last events go out as the worker stops, not with it."""
    celery_app: Celery = worker_app.extensions["celery"]
    with receiving(celery_app) as events:
        with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                          queues=["otp", "mail", "bulk"], shutdown_timeout=30,
                          loglevel="WARNING"):
            post_messages(worker_app, 1, "last")
            deadline = time.monotonic() + 20
            while not smtp_server.received:
                assert time.monotonic() < deadline, "the message never reached the relay"
                time.sleep(0.005)
        events.wait_for_succeeded(1, timeout=10)
