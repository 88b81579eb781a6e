"""A relay known to be down is shared in Redis: mail parks, one probe per interval
decides when it is back, and then every parked message goes out once.

Real worker processes, a real relay that accepts and drops every connection
(counting them), then a real SMTP server on the same port.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tasks.delivery.ledger import RecipientRecord
from tasks.delivery.parked import ParkedWork
from tasks.delivery.relay_state import RELAY_DOWN, RelayBoard
from tasks.delivery.watch_list import WATCH_KEY
from tasks.messages.store import MessageStore
from tests.support.outage_support import DeadRelay
from tests.support.smtp_server import SMTPTestServer
from tests.support.worker_processes import WorkerProcesses

PROBE = 1.0  # MAIL_RELAY_PROBE_INTERVAL in these tests
RELAY = "127.0.0.1:2525"


def wait_until(condition: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.05)


# -- the shared breaker, in Redis -------------------------------------------------------------

def test_a_failed_session_opens_the_breaker_for_every_worker(redis_client: redis.Redis) -> None:
    here, elsewhere = (RelayBoard(redis_client, 0.0, breaker=60.0, probe=30.0)
                       for _ in range(2))
    assert here.parked_until([RELAY]) is None  # never seen: try it
    here.failed(RELAY, "connection to 127.0.0.1:2525 failed: ConnectionRefusedError()")
    until = elsewhere.parked_until([RELAY])
    assert until is not None and time.time() + 25 < until <= time.time() + 30
    assert elsewhere.cooling_down([RELAY]) == {RELAY}  # no connection of its own
    [status] = elsewhere.statuses([RELAY])
    assert (status.state, status.breaker) == ("cooling_down", RELAY_DOWN)

    here.opened(RELAY)
    assert elsewhere.parked_until([RELAY]) is None
    assert elsewhere.cooling_down([RELAY]) == set()


def test_one_caller_per_interval_takes_the_probe(redis_client: redis.Redis) -> None:
    boards = [RelayBoard(redis_client, 0.0, breaker=60.0, probe=0.2) for _ in range(5)]
    boards[0].failed(RELAY, "connection refused")
    wait_until(lambda: (boards[0].parked_until([RELAY]) or math.inf) <= time.time(), 5,
               "the probe never fell due")
    skipped = [board.cooling_down([RELAY]) for board in boards]
    assert skipped.count(set()) == 1  # exactly one may open a session: the probe
    assert boards[0].parked_until([RELAY]) is not None  # still down until it says otherwise


def test_a_relay_with_an_open_breaker_among_healthy_ones_parks_nothing(
        redis_client: redis.Redis) -> None:
    board = RelayBoard(redis_client, 60.0, probe=1.0)
    board.failed(RELAY, "connection refused")
    assert board.parked_until([RELAY, "127.0.0.1:2526"]) is None
    assert board.cooling_down([RELAY, "127.0.0.1:2526"]) == {RELAY}


def test_parked_work_leaves_the_set_only_once_handled(redis_client: redis.Redis) -> None:
    parked = ParkedWork(redis_client)
    now = time.time()
    assert parked.park("postroom.deliver_message", ["m1"], None, wake_at=now, wake_for=5)
    assert not parked.park("postroom.deliver_message", ["m1"], None, wake_at=now, wake_for=5)
    assert not parked.park("postroom.deliver_each", ["m2", 0, 10], now - 1, wake_at=now,
                           wake_for=5)  # the wake-up is scheduled already
    assert len(parked) == 2  # one member per task, however often it parks

    assert [task for chunk in parked.release(due_by=now) for task in chunk] == [
        ("postroom.deliver_each", ["m2", 0, 10])]  # past its deadline
    chunks = parked.release()
    assert next(chunks) == [("postroom.deliver_message", ["m1"])]
    assert len(parked) == 1  # a worker killed here has published nothing twice, lost nothing
    assert list(chunks) == []
    assert len(parked) == 0


# -- real workers -----------------------------------------------------------------------------

@pytest.fixture
def dead_relay() -> Iterator[DeadRelay]:
    relay = DeadRelay()  # accepts each connection and hangs up before the greeting
    yield relay
    relay.close()


@pytest.fixture
def workers(tmp_path: Path, redis_url: str, dead_relay: DeadRelay) -> Iterator[WorkerProcesses]:
    group = WorkerProcesses(tmp_path, redis_url, dead_relay.port, {
        "MAIL_RELAY_PROBE_INTERVAL": str(PROBE),
        "MAIL_TIMEOUT": "2",
        # a deferral's own retry would come ten minutes later: mail that arrives within
        # the test's time arrived because a probe released it
        "DELIVERY_BACKOFF_BASE": "600",
        "DELIVERY_BACKOFF_CAP": "1200",
    })
    yield group
    group.stop()


def relay_up_on(port: int) -> SMTPTestServer:
    server = SMTPTestServer()
    server.port = port
    server.controller = server._controller()
    return server.start()


def records(store: MessageStore, ids: list[str]) -> list[RecipientRecord]:
    return [record for message_id in ids for record in store.ledger(message_id).get([0])]


@pytest.mark.worker
def test_relay_down_parks_mail_then_one_probe_releases_it_once(
        workers: WorkerProcesses, dead_relay: DeadRelay, redis_client: redis.Redis) -> None:
    workers.start(queues="otp,mail", concurrency=2, count=2, pool="threads")
    store = MessageStore(redis_client)
    ids: list[str] = []

    def enqueue(n: int) -> None:
        for _ in range(n):
            to = f"r{len(ids)}@example.com"
            message = store.create({"to": [to], "subject": "Your receipt",
                                    "body": "Thanks.\n"}, [to])
            ids.append(message.id)
            workers.producer.send_task("postroom.deliver_message", args=[message.id],
                                       queue="mail")

    enqueue(4)  # the first ones find the relay down themselves
    wait_until(lambda: RelayBoard(redis_client, 0.0, probe=PROBE)
               .parked_until([f"127.0.0.1:{dead_relay.port}"]) is not None, 30,
               "no breaker opened for the dead relay")
    first = dead_relay.accepted
    assert 1 <= first <= 4
    started = time.monotonic()
    while time.monotonic() - started < 3 * PROBE:  # a steady stream of mail, ~20 a second
        enqueue(2)
        time.sleep(0.1)
    wait_until(lambda: len(ParkedWork(redis_client)) == len(ids), 30,
               f"not every message parked: {len(ParkedWork(redis_client))} of {len(ids)}")
    elapsed = time.monotonic() - started
    probes = dead_relay.accepted - first
    assert len(ids) > 50
    assert probes <= elapsed / PROBE + 2, f"{probes} connections in {elapsed:.1f} s"
    assert probes >= 1  # it was probed meanwhile
    parked = records(store, ids)
    assert {r.status for r in parked} <= {"queued", "deferred"}
    assert {r.attempts for r in parked} == {0}  # parking uses no attempt
    looks = [redis_client.zscore(WATCH_KEY, f"message:{message_id}") for message_id in ids]
    assert min(look or 0.0 for look in looks) > time.time() + 60  # no reconciler churn

    dead_relay.close()
    server = relay_up_on(dead_relay.port)
    try:
        wait_until(lambda: {r.status for r in records(store, ids)} == {"sent"}, 60,
                   "parked mail was not released when the relay came back: "
                   f"{Counter(r.status for r in records(store, ids))}")
        time.sleep(0.5)  # anything sent twice would arrive now
        sent = Counter(str(item.message["Message-ID"]) for item in server.received)
        assert len(sent) == len(ids)
        assert set(sent.values()) == {1}
        assert len(ParkedWork(redis_client)) == 0
    finally:
        server.stop()


@pytest.mark.worker
def test_workers_killed_while_mail_is_parked_lose_nothing(
        tmp_path: Path, redis_url: str, dead_relay: DeadRelay,
        redis_client: redis.Redis) -> None:
    group = WorkerProcesses(tmp_path, redis_url, dead_relay.port, {
        "MAIL_RELAY_PROBE_INTERVAL": str(PROBE), "MAIL_TIMEOUT": "2",
        "DELIVERY_BACKOFF_BASE": "600", "DELIVERY_BACKOFF_CAP": "1200",
        "RECONCILE_INTERVAL": "1"})
    try:
        doomed = group.start(queues="otp,mail", concurrency=2, count=2, pool="threads")
        store = MessageStore(redis_client)
        ids = []
        for n in range(30):
            to = f"k{n}@example.com"
            message = store.create({"to": [to], "subject": "Your receipt", "body": "Thanks.\n"},
                                   [to])
            ids.append(message.id)
            group.producer.send_task("postroom.deliver_message", args=[message.id],
                                     queue="mail")
        wait_until(lambda: len(ParkedWork(redis_client)) == len(ids), 30,
                   f"not every message parked: {len(ParkedWork(redis_client))}")
        for process in doomed:  # the scheduled probe task dies with them
            group.kill(process)
        dead_relay.close()
        server = relay_up_on(dead_relay.port)
        try:
            group.start(queues="otp,mail", concurrency=2)
            wait_until(lambda: {r.status for r in records(store, ids)} == {"sent"}, 90,
                       "parked mail was lost with its workers: "
                       f"{Counter(r.status for r in records(store, ids))}")
            time.sleep(0.5)
            sent = Counter(str(item.message["Message-ID"]) for item in server.received)
            assert len(sent) == len(ids)
            assert set(sent.values()) == {1}
        finally:
            server.stop()
    finally:
        group.stop()


@pytest.mark.worker
def test_parked_mail_still_fails_at_its_deadline(
        tmp_path: Path, redis_url: str, dead_relay: DeadRelay,
        redis_client: redis.Redis) -> None:
    group = WorkerProcesses(tmp_path, redis_url, dead_relay.port, {
        "MAIL_RELAY_PROBE_INTERVAL": str(PROBE), "MAIL_TIMEOUT": "2",
        "DELIVERY_BACKOFF_BASE": "600", "DELIVERY_BACKOFF_CAP": "1200",
        "DELIVERY_MAX_AGE": "4"})
    try:
        group.start(queues="otp,mail", concurrency=2)
        store = MessageStore(redis_client)
        ids = []
        for n in range(5):
            to = f"late{n}@example.com"
            message = store.create({"to": [to], "subject": "Your receipt", "body": "Thanks.\n"},
                                   [to])
            ids.append(message.id)
            group.producer.send_task("postroom.deliver_message", args=[message.id],
                                     queue="mail")
        wait_until(lambda: {r.status for r in records(store, ids)} == {"failed"}, 60,
                   f"parked mail outlived DELIVERY_MAX_AGE: "
                   f"{Counter(r.status for r in records(store, ids))}")
        failed = records(store, ids)
        assert all("DELIVERY_MAX_AGE" in (r.error or "") for r in failed)
        assert {r.attempts for r in failed} == {0}
        assert len(ParkedWork(redis_client)) == 0
    finally:
        group.stop()
