"""MAIL_RATE_LIMIT and MAIL_MAX_CONNECTIONS across two real worker processes.

Two ``celery -A worker worker --pool prefork -c 2`` processes (four senders)
share the test Redis as broker and state; the limits are read from their
environment, exactly as in production. What counts is what the SMTP server saw.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.messages.store import MessageStore
from tests.support.smtp_server import SMTPTestServer
from tests.support.worker_processes import WorkerProcesses

pytestmark = pytest.mark.worker


class WorkerPair(WorkerProcesses):
    """Worker processes with one environment, and a way to send them messages."""

    def send(self, count: int) -> list[str]:
        """Store *count* one-recipient messages and queue a delivery task for each."""
        store = MessageStore(self.redis)
        ids = []
        for n in range(count):
            message = store.create({"to": [f"r{n}@example.com"], "subject": f"Hello {n}",
                                    "body": "Hi"}, [f"r{n}@example.com"])
            ids.append(message.id)
        for message_id in ids:
            self.producer.send_task("postroom.deliver_message", args=[message_id],
                                    queue="mail")
        return ids

    def tasks_done(self) -> list[int]:
        """How many delivery tasks each worker finished."""
        done = re.compile(r"Task postroom\.deliver_message\[[^\]]+\] succeeded")
        return [len(done.findall(path.read_text(errors="replace"))) for path in self.logs]


def wait_for(smtp_server: SMTPTestServer, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(smtp_server.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def workers(request: pytest.FixtureRequest, tmp_path: Path, redis_client: redis.Redis,
            redis_url: str, smtp_server: SMTPTestServer) -> Iterator[WorkerPair]:
    pair = WorkerPair(tmp_path, redis_url, smtp_server.port,
                      {"MAIL_TIMEOUT": "10"} | request.param)
    try:
        pair.start(queues="mail,bulk,otp", concurrency=2, count=2)
        yield pair
    finally:
        pair.stop()


@pytest.mark.parametrize("workers", [{"MAIL_RATE_LIMIT": "20", "MAIL_MAX_CONNECTIONS": "2"}],
                         indirect=True)
def test_two_workers_share_one_sending_rate(workers: WorkerPair,
                                            smtp_server: SMTPTestServer) -> None:
    count = 100  # five seconds at 20 a second
    ids = workers.send(count)
    wait_for(smtp_server, count)

    received = smtp_server.received
    assert sorted(r.recipients[0] for r in received) == sorted(
        f"r{n}@example.com" for n in range(count))
    times = sorted(r.received_at for r in received)
    rate = (count - 1) / (times[-1] - times[0])
    assert rate <= 20 * 1.10, f"{rate:.2f} msg/s"
    assert rate > 20 * 0.50, f"{rate:.2f} msg/s"
    assert smtp_server.peak_sessions <= 2
    assert all(n > 0 for n in workers.tasks_done()), workers.tasks_done()
    store = MessageStore(workers.redis)
    assert all(store.ledger(i).counts()["sent"] == 1 for i in ids)


@pytest.mark.parametrize("workers", [{"MAIL_MAX_CONNECTIONS": "2"}], indirect=True)
def test_two_workers_share_the_session_limit(workers: WorkerPair,
                                             smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_delay = 0.05  # a slow relay: four senders would overlap
    count = 40
    ids = workers.send(count)
    wait_for(smtp_server, count)

    assert len(smtp_server.received) == count
    assert smtp_server.peak_sessions == 2  # never more, and the two slots were both used
    # a session may carry several messages (kept between them), never more than one at once
    assert smtp_server.session_count <= count
    assert all(n > 0 for n in workers.tasks_done()), workers.tasks_done()
    store = MessageStore(workers.redis)
    assert all(store.ledger(i).counts()["sent"] == 1 for i in ids)
