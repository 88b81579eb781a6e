"""Runs the peer (:mod:`bench.peer_app`, the Flask docs' Celery pattern) for a scenario.

:func:`peer_worker` starts ``celery -A bench.peer_worker worker`` with Celery's
defaults (the prefork pool, one process per core) on database 1 of the
scenario's private Redis, waits until it has sent a warm-up message, and stops
it with SIGTERM afterwards. :func:`run_peer` enqueues one task per message,
``send_email.delay(i)`` as a view would, and waits until every ``mail.send``
has returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.servers import REPOSITORY

PEER = "the Flask docs' Celery pattern: a task per email, mail.send(msg), prefork pool"
WARM_UP = -1  # the warm-up message goes to c-1@example.com, before anything is timed


@dataclass
class Peer:
    broker_url: str
    mail_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def sent(self) -> int:
        from bench.peer_app import SENT_KEY

        raw: bytes | None = redis.Redis.from_url(self.broker_url).get(SENT_KEY)
        return int(raw or 0)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def peer_broker(redis_url: str) -> str:
    """Database 1 of the scenario's Redis: nothing of Postroom's."""
    return redis_url.rsplit("/", 1)[0] + "/1"


@contextmanager
def peer_worker(workdir: Path, redis_url: str, mail_port: int) -> Iterator[Peer]:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = peer_broker(redis_url)
    redis.Redis.from_url(broker).flushdb()
    env = {**os.environ, "PEER_BROKER_URL": broker, "PEER_MAIL_PORT": str(mail_port),
           "PYTHONPATH": str(REPOSITORY)}
    log_path = workdir / "peer-worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.peer_worker", "worker",
             "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip",
             "--without-mingle"],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    peer = Peer(broker, mail_port, process, log_path)
    try:
        _warm_up(peer)
        yield peer
    finally:
        _stop(process)


def _client(peer: Peer) -> object:
    from bench.peer_app import create_app, send_email

    create_app(peer.broker_url, peer.mail_port)  # the current Celery app: this broker
    return send_email


def _warm_up(peer: Peer, timeout: float = 60.0) -> None:
    send_email = _client(peer)
    send_email.delay(WARM_UP)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while peer.sent() < 1:
        if peer.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the peer's worker sent nothing within {timeout:.0f} s; "
                             f"its log ends:\n{peer.log_tail()}")
        time.sleep(0.05)


def run_peer(peer: Peer, n: int, timeout: float = 600.0) -> tuple[float, float] | None:
    """Enqueue *n* messages; ``(started, seconds)``: ``time.monotonic()`` just before the
    first ``delay()``, and the seconds until the last ``mail.send`` returned (``None``
    when they were not all sent within *timeout*)."""
    send_email = _client(peer)
    before = peer.sent()
    started = time.monotonic()
    for i in range(n):
        send_email.delay(i)  # type: ignore[attr-defined]
    while peer.sent() < before + n:
        if time.monotonic() - started > timeout or peer.process.poll() is not None:
            return None
        time.sleep(0.01)
    return started, time.monotonic() - started


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # warm shutdown: the pool's children stop too
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
