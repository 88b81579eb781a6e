"""Single messages and codes share SMTP sessions kept open between them.

Every count comes from the SMTP server (connections it accepted, messages per
connection, QUITs it read); every message is checked to arrive exactly once.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from flask import Flask

from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.pool import SessionPool
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.runtime import SESSION_POOL
from tasks.delivery.throttle import SessionSlots
from tasks.messages.store import MessageStore
from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer

SENDER = "noreply@postroom.test"


def settings_for(server: SMTPTestServer, **options: Any) -> SMTPSettings:
    return SMTPSettings(**{"server": "127.0.0.1", "port": server.port, "timeout": 5.0, **options})


def message(n: int) -> bytes:
    return Composer(message_id_domain="postroom.test").compose(
        Draft(sender=SENDER, to=[f"r{n}@example.com"], subject=f"n{n}", text=f"number {n}")).data


def send_one(pool: SessionPool, settings: SMTPSettings, n: int,
             gate: SessionSlots | None = None) -> str:
    """One batch of one message on a connection of its own, as a message task runs."""
    with BatchConnection(settings, gate=gate, pool=pool) as connection:
        return connection.send_data(SENDER, [f"r{n}@example.com"], message(n))[
            f"r{n}@example.com"].status


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def once_each(server: SMTPTestServer, count: int) -> None:
    got = Counter(r.recipients[0] for r in server.received)
    assert got == Counter(f"r{n}@example.com" for n in range(count)), got


@pytest.fixture
def pool() -> Iterator[SessionPool]:
    kept = SessionPool(idle=30.0)
    yield kept
    kept.close_all()


def post_messages(app: Flask, count: int) -> list[str]:
    client = app.test_client()
    ids = []
    for n in range(count):
        response = client.post("/api/messages", headers=AUTH, json={
            "to": [f"r{n}@example.com"], "subject": f"Hello {n}", "body": "Hi"})
        assert response.status_code == 202, response.get_data(as_text=True)
        ids.append(response.get_json()["id"])
    return ids


def test_consecutive_batches_carry_on_one_session(smtp_server: SMTPTestServer,
                                                  pool: SessionPool) -> None:
    settings = settings_for(smtp_server)
    assert [send_one(pool, settings, n) for n in range(5)] == ["sent"] * 5
    once_each(smtp_server, 5)
    assert smtp_server.session_count == 1
    assert pool.kept() == 1 and smtp_server.open_sessions == 1


def test_threads_share_the_pool_without_sharing_a_session(smtp_server: SMTPTestServer,
                                                          pool: SessionPool) -> None:
    smtp_server.handler.data_delay = 0.01  # threads overlap
    settings = settings_for(smtp_server)
    results: list[str] = []
    lock = threading.Lock()

    def sender(first: int) -> None:
        for n in range(first, first + 5):
            status = send_one(pool, settings, n)
            with lock:
                results.append(status)

    threads = [threading.Thread(target=sender, args=(k * 5,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["sent"] * 40
    once_each(smtp_server, 40)
    assert smtp_server.session_count <= 8, smtp_server.session_count
    assert pool.kept() == smtp_server.open_sessions == smtp_server.session_count


def test_a_kept_session_carries_at_most_max_emails(smtp_server: SMTPTestServer,
                                                   pool: SessionPool) -> None:
    settings = settings_for(smtp_server, max_emails=3)
    assert [send_one(pool, settings, n) for n in range(20)] == ["sent"] * 20
    once_each(smtp_server, 20)
    per_session = Counter(r.session for r in smtp_server.received)
    assert smtp_server.session_count == math.ceil(20 / 3)  # none wasted, none over 3
    assert sorted(per_session.values()) == [2] + [3] * 6
    assert pool.kept() == 1  # the last one has carried 2: kept for a third


def test_an_idle_session_is_closed_with_quit(smtp_server: SMTPTestServer) -> None:
    pool = SessionPool(idle=0.3)
    assert send_one(pool, settings_for(smtp_server), 0) == "sent"
    assert smtp_server.open_sessions == 1 and smtp_server.quits == 0
    assert until(lambda: smtp_server.open_sessions == 0), "an idle session must be closed"
    assert smtp_server.quits == 1 and pool.kept() == 0
    assert send_one(pool, settings_for(smtp_server), 1) == "sent"  # a fresh one after it
    assert smtp_server.session_count == 2
    pool.close_all()
    assert until(lambda: smtp_server.quits == 2)


def test_a_session_the_relay_dropped_is_replaced_before_sending(
        smtp_server: SMTPTestServer, pool: SessionPool) -> None:
    smtp_server.handler.pipelining = True
    settings = settings_for(smtp_server)
    assert send_one(pool, settings, 0) == "sent"
    assert smtp_server.drop_connections() == 1
    assert until(lambda: smtp_server.open_sessions == 0)
    assert send_one(pool, settings, 1) == "sent"
    once_each(smtp_server, 2)
    assert [r.session for r in smtp_server.received] == [1, 2]
    assert len(smtp_server.handler.mail_times) == 2  # nothing was tried on the dropped one


def test_a_kept_session_gives_its_slot_to_a_worker_waiting_for_one(
        smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    """MAIL_MAX_CONNECTIONS=1: a session kept by one process closes as soon as another
    process waits for the slot it holds."""
    slots = SessionSlots(redis_client, 1, wait_timeout=10.0)
    here, elsewhere = (SessionPool(idle=30.0, waiting=slots.waiting) for _ in range(2))
    settings = settings_for(smtp_server)
    assert send_one(here, settings, 0, gate=slots) == "sent"
    assert here.kept() == 1 and slots.in_use() == 1
    # were the slot kept, the wait for it would time out and the message be deferred
    assert send_one(elsewhere, settings, 1, gate=SessionSlots(redis_client, 1,
                                                              wait_timeout=10.0)) == "sent"
    once_each(smtp_server, 2)
    assert smtp_server.peak_sessions == 1 and smtp_server.quits >= 1  # QUIT, then the next
    assert here.kept() == 0
    elsewhere.close_all()
    assert until(lambda: slots.in_use() == 0)


# -- through the app: messages and codes


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"MAIL_SESSION_IDLE": 30.0}


def test_messages_and_codes_share_a_session(app: Flask, smtp_server: SMTPTestServer) -> None:
    post_messages(app, 3)
    client = app.test_client()
    response = client.post("/api/otp", headers=AUTH, json={"email": "code@example.com"})
    assert response.status_code == 202, response.get_data(as_text=True)
    post_messages(app, 1)
    got = Counter(a for r in smtp_server.received for a in r.recipients)
    assert got == Counter({"r0@example.com": 2, "r1@example.com": 1, "r2@example.com": 1,
                           "code@example.com": 1})
    assert smtp_server.session_count == 1
    assert app.extensions[SESSION_POOL].kept() == 1


@pytest.mark.parametrize("config_overrides", [{"MAIL_SESSION_IDLE": 30.0,
                                               "MAIL_MAX_EMAILS": 3}])
def test_api_messages_keep_max_emails_per_session(app: Flask,
                                                  smtp_server: SMTPTestServer) -> None:
    ids = post_messages(app, 20)
    once_each(smtp_server, 20)
    per_session = Counter(r.session for r in smtp_server.received)
    assert max(per_session.values()) == 3 and smtp_server.session_count == 7
    store = MessageStore(app.extensions["redis"])
    assert all(store.ledger(i).counts()["sent"] == 1 for i in ids)


@pytest.mark.parametrize("config_overrides", [{"MAIL_SESSION_IDLE": 0}])
def test_no_session_is_kept_when_the_idle_time_is_zero(app: Flask,
                                                       smtp_server: SMTPTestServer) -> None:
    post_messages(app, 3)
    once_each(smtp_server, 3)
    assert smtp_server.session_count == 3 and smtp_server.quits == 3
    assert SESSION_POOL not in app.extensions


def test_messages_arriving_together_on_a_worker_share_sessions(
        worker_app: Flask, celery_worker: Celery, smtp_server: SMTPTestServer) -> None:
    ids = post_messages(worker_app, 20)
    assert until(lambda: len(smtp_server.received) >= 20, timeout=30)
    once_each(smtp_server, 20)
    # the worker runs two threads: at most two sessions at once, each kept for the next
    assert smtp_server.session_count <= 2, smtp_server.session_count
    store = MessageStore(worker_app.extensions["redis"])
    assert until(lambda: all(store.ledger(i).counts()["sent"] == 1 for i in ids))
    once_each(smtp_server, 20)


def test_a_stopping_worker_ends_its_kept_sessions(worker_app: Flask,
                                                  smtp_server: SMTPTestServer) -> None:
    celery_app: Celery = worker_app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=["otp", "mail"], shutdown_timeout=30, loglevel="WARNING"):
        post_messages(worker_app, 3)
        assert until(lambda: len(smtp_server.received) == 3, timeout=30)
        assert smtp_server.quits == 0 and smtp_server.open_sessions >= 1
    assert until(lambda: smtp_server.open_sessions == 0)
    assert smtp_server.quits == smtp_server.session_count  # each ended with QUIT
    once_each(smtp_server, 3)


def test_a_session_past_its_age_is_not_reused(smtp_server: SMTPTestServer) -> None:
    pool = SessionPool(idle=30.0, max_age=0.2)
    settings = settings_for(smtp_server)
    assert send_one(pool, settings, 0) == "sent" and send_one(pool, settings, 1) == "sent"
    assert smtp_server.session_count == 1
    time.sleep(0.3)  # the session passes its age (a wait, not a timing assertion)
    assert send_one(pool, settings, 2) == "sent"
    assert [r.session for r in smtp_server.received] == [1, 1, 2]
    assert until(lambda: smtp_server.quits == 1)  # the old one ended with QUIT
    pool.close_all()
