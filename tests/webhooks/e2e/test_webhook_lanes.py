"""With real workers in the shape ``make run`` and compose start them — one consuming
``otp,mail``, one consuming ``events`` — a webhook receiver that trickles its answers
holds the events worker's threads and nothing else: a code still goes out within 5 s."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask

from cli.dev import EVENTS_QUEUE, LANE_QUEUES
from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer
from tests.support.webhook_receiver import Receiver, receiving
from tests.support.worker_processes import WorkerProcesses

pytestmark = pytest.mark.worker

EVENTS_THREADS = 2


def wait_until(condition: Callable[[], object], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


@pytest.fixture
def lanes(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
          smtp_server: SMTPTestServer) -> Iterator[WorkerProcesses]:
    group = WorkerProcesses(tmp_path, redis_url, smtp_server.port)
    try:
        group.start(queues=LANE_QUEUES, concurrency=2, pool="threads")
        group.start(queues=EVENTS_QUEUE, concurrency=EVENTS_THREADS, pool="threads")
        yield group
    finally:
        group.stop()


@pytest.fixture
def trickling() -> Iterator[Receiver]:
    with receiving() as receiver:
        receiver.trickle = 1.0  # a byte a second: a whole answer takes about 40 s
        yield receiver


def test_a_code_is_sent_within_5_s_while_a_receiver_trickles(
        worker_app: Flask, lanes: WorkerProcesses, trickling: Receiver,
        smtp_server: SMTPTestServer) -> None:
    client = worker_app.test_client()
    registered = client.post("/api/webhooks", headers=AUTH,
                             json={"url": f"{trickling.url}/hook", "events": ["otp.sent"]})
    assert registered.status_code == 201
    for n in range(EVENTS_THREADS + 1):  # more events than the events worker has threads
        assert client.post("/api/otp", headers=AUTH,
                           json={"email": f"early{n}@example.com"}).status_code == 202
    wait_until(lambda: trickling.trickling >= EVENTS_THREADS, 20,
               "the receiver never held every events thread")

    started = time.monotonic()
    assert client.post("/api/otp", headers=AUTH,
                       json={"email": "ada@example.com"}).status_code == 202
    wait_until(lambda: smtp_server.to("ada@example.com"), 5, "no code within 5 s")
    took = time.monotonic() - started
    assert trickling.trickling >= 1  # the receiver was still holding the events worker
    assert took < 5, took
    assert len(smtp_server.to("ada@example.com")) == 1
