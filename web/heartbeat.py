"""Workers and beat say they are alive; every published task says when it was published.

- Every worker reports its node name to Redis every :data:`WORKER_EVERY` seconds
  (a Celery bootstep on the worker's timer), so ``/healthz`` can tell whether any
  worker is running on any host.
- Beat marks each scheduled task it publishes (``postroom.campaign.start_due``
  goes out every ``CAMPAIGN_SCAN_INTERVAL``), so ``/healthz`` can tell whether beat
  runs, whatever the workers do.
- Every task message carries a ``postroom_published_at`` header (Unix time), so
  ``/metrics`` can give the age of the oldest task waiting in each queue.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from celery import Celery, bootsteps
from celery.signals import beat_init, before_task_publish
from redis import Redis
from redis.exceptions import RedisError

from tasks.stores.heartbeats import Heartbeats

log = logging.getLogger(__name__)

WORKER_EVERY = 5.0  # seconds between a worker's reports
PUBLISHED_AT = "postroom_published_at"  # the task message header

_clients: weakref.WeakKeyDictionary[Celery, Redis] = weakref.WeakKeyDictionary()
_beat: dict[str, Redis] = {}  # the Redis of the beat running in this process, if any


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Reports the worker's node name to Redis now and every :data:`WORKER_EVERY` s."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        self.timer_ref: Any = None

    def start(self, worker: Any) -> None:
        client = _clients.get(worker.app)
        if client is None:
            return
        self.report(worker.hostname, client)
        self.timer_ref = worker.timer.call_repeatedly(
            WORKER_EVERY, self.report, (worker.hostname, client), priority=10)

    def stop(self, worker: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    @staticmethod
    def report(hostname: str, client: Redis) -> None:
        try:
            Heartbeats(client).worker(hostname)
        except RedisError as err:
            log.warning("worker heartbeat not written: %s", err)


def register(celery_app: Celery, client: Redis) -> None:
    """Give *celery_app*'s workers and beat their heartbeats, written to *client*."""
    _clients[celery_app] = client
    celery_app.steps["worker"].add(WorkerHeartbeat)


@beat_init.connect
def _beat_started(sender: Any, **_: Any) -> None:
    client = _clients.get(sender.app)
    if client is not None:
        _beat["redis"] = client


@before_task_publish.connect
def _stamp_and_mark_beat(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[PUBLISHED_AT] = time.time()
    client = _beat.get("redis")
    if client is not None:
        try:
            Heartbeats(client).beat()
        except RedisError as err:
            log.warning("beat heartbeat not written: %s", err)
