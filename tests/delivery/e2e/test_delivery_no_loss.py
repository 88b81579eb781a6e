"""No loss, no duplicates, with real worker processes (prefork) and a real SMTP server.

A ``celery -A worker worker`` process is SIGKILLed in the middle of a batch of
500 separate messages (``postroom.deliver_each``); a new worker finishes it.
The SMTP server counts what arrived by Message-ID, which stays the same for
every build of one recipient's copy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tasks.messages.store import MessageStore
from tests.support.smtp_server import SMTPTestServer
from tests.support.worker_processes import WorkerProcesses

pytestmark = pytest.mark.worker

BATCH = 500
VISIBILITY_TIMEOUT = 3  # seconds before a dead worker's unacked task is given out again


def wait_until(condition: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.05)


@pytest.fixture
def workers(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
            smtp_server: SMTPTestServer) -> Iterator[WorkerProcesses]:
    group = WorkerProcesses(tmp_path, redis_url, smtp_server.port, {
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "MAIL_TIMEOUT": "0.5",  # so a dead worker's claims lease out in 10 s
        "DELIVERY_BACKOFF_BASE": "0.1",
        "DELIVERY_BACKOFF_CAP": "0.5",
    })
    yield group
    group.stop()


def stored_batch(redis_client: redis.Redis) -> tuple[MessageStore, str]:
    store = MessageStore(redis_client)
    recipients = [f"r{n}@example.com" for n in range(BATCH)]
    message = store.create({"subject": "Your statement", "body": "Hello,\nit is ready.\n"},
                           recipients)
    return store, message.id


def message_ids(smtp_server: SMTPTestServer) -> Counter[str]:
    return Counter(str(r.message["Message-ID"]) for r in smtp_server.received)


def test_worker_killed_mid_batch_loses_nothing(workers: WorkerProcesses,
                                               smtp_server: SMTPTestServer,
                                               redis_client: redis.Redis) -> None:
    smtp_server.handler.data_delay = 0.004  # a relay that takes a moment per message
    store, message_id = stored_batch(redis_client)
    [first] = workers.start(queues="bulk")
    workers.producer.send_task("postroom.deliver_each", args=[message_id, 0, BATCH],
                                   queue="bulk")
    enqueued = time.monotonic()
    wait_until(lambda: len(smtp_server.received) >= 100, 60, "the batch did not start")
    workers.kill(first)
    at_kill = len(smtp_server.received)
    assert at_kill < BATCH - 100, "the kill came too late to be mid-batch"
    counts = store.ledger(message_id).counts()
    assert counts["sending"] >= 1  # a claim the dead worker held

    # The unacked task is given out again once the visibility timeout has passed.
    time.sleep(max(0.0, enqueued + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
    workers.start(queues="bulk")
    ledger = store.ledger(message_id)
    wait_until(lambda: ledger.counts()["sent"] == BATCH, 45,
               f"not every recipient was sent: {ledger.counts()}")

    received = {r for item in smtp_server.received for r in item.recipients}
    assert received == {f"r{n}@example.com" for n in range(BATCH)}
    ids = message_ids(smtp_server)
    assert len(ids) == BATCH
    duplicates = sum(ids.values()) - len(ids)
    assert duplicates <= 1, f"{duplicates} duplicates; one message at most was in flight"
    assert ledger.counts() | {"sent": 0} == dict.fromkeys(ledger.counts(), 0)


def test_same_batch_enqueued_twice_sends_each_message_once(workers: WorkerProcesses,
                                                           smtp_server: SMTPTestServer,
                                                           redis_client: redis.Redis) -> None:
    smtp_server.handler.data_delay = 0.002
    store, message_id = stored_batch(redis_client)
    workers.start(queues="bulk", concurrency=2)
    for _ in range(2):
        workers.producer.send_task("postroom.deliver_each", args=[message_id, 0, BATCH],
                                   queue="bulk")
    ledger = store.ledger(message_id)
    wait_until(lambda: ledger.counts()["sent"] == BATCH, 45,
               f"not every recipient was sent: {ledger.counts()}")
    time.sleep(0.5)  # anything still on its way would arrive now
    ids = message_ids(smtp_server)
    assert len(ids) == BATCH
    assert max(ids.values()) == 1
    assert sorted(len(r.recipients) for r in smtp_server.received) == [1] * BATCH
    sessions = {r.session for r in smtp_server.received}
    assert len(sessions) >= 2  # both copies of the task really ran, side by side
