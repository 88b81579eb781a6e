"""No loss, no duplicates, with real worker processes (prefork) and a real SMTP server.

A ``celery -A worker worker`` process is SIGKILLed in the middle of a batch of
500 separate messages (``postroom.deliver_each``); a new worker finishes it.
The SMTP server counts what arrived by Message-ID, which stays the same for
every build of one recipient's copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tasks.stores.messages import MessageStore
from tests.smtp_server import SMTPTestServer

pytestmark = pytest.mark.worker

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
VISIBILITY_TIMEOUT = 3  # seconds before a dead worker's unacked task is given out again


class Workers:
    """Worker processes on the test Redis, started and killed one at a time."""

    def __init__(self, tmp_path: Path, redis_url: str, smtp_port: int) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"postroom:celery:{tmp_path.name}:"
        self.env = os.environ | {
            "POSTROOM_ENV": "testing",
            "SECRET_KEY": "test-secret-key",
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_KEY_PREFIX": self.prefix,
            "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_DEFAULT_SENDER": "Postroom <noreply@postroom.test>",
            "MAIL_TIMEOUT": "0.5",  # so a dead worker's claims lease out in 10 s
            "DELIVERY_BACKOFF_BASE": "0.1",
            "DELIVERY_BACKOFF_CAP": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.producer = Celery("no-loss-test", broker=redis_url, set_as_current=False)
        self.producer.conf.broker_transport_options = {"global_keyprefix": self.prefix}

    def start(self, concurrency: int = 1) -> subprocess.Popen[bytes]:
        n = len(self.processes) + 1
        log_path = self.tmp_path / f"worker{n}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "bulk",
                 "--pool", "prefork", "-c", str(concurrency), "-n", f"noloss{n}.{os.getpid()}@%h",
                 "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.processes.append(process)
        wait_until(lambda: " ready." in log_path.read_text(errors="replace"), 60,
                   f"worker {n} did not start: {log_path}")
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool children at once."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.producer.close()


def wait_until(condition: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.05)


@pytest.fixture
def workers(tmp_path: Path, redis_url: str, redis_client: redis.Redis,
            smtp_server: SMTPTestServer) -> Iterator[Workers]:
    group = Workers(tmp_path, redis_url, smtp_server.port)
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


def test_worker_killed_mid_batch_loses_nothing(workers: Workers, smtp_server: SMTPTestServer,
                                               redis_client: redis.Redis) -> None:
    smtp_server.handler.data_delay = 0.004  # a relay that takes a moment per message
    store, message_id = stored_batch(redis_client)
    first = workers.start()
    workers.producer.send_task("postroom.deliver_each", args=[message_id, 0, BATCH],
                                   queue="bulk")
    enqueued = time.monotonic()
    wait_until(lambda: len(smtp_server.received) >= 100, 30, "the batch did not start")
    workers.kill(first)
    at_kill = len(smtp_server.received)
    assert at_kill < BATCH - 100, "the kill came too late to be mid-batch"
    counts = store.ledger(message_id).counts()
    assert counts["sending"] >= 1  # a claim the dead worker held

    # The unacked task is given out again once the visibility timeout has passed.
    time.sleep(max(0.0, enqueued + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
    workers.start()
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


def test_same_batch_enqueued_twice_sends_each_message_once(workers: Workers,
                                                           smtp_server: SMTPTestServer,
                                                           redis_client: redis.Redis) -> None:
    smtp_server.handler.data_delay = 0.002
    store, message_id = stored_batch(redis_client)
    workers.start(concurrency=2)
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
