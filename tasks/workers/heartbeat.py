"""Workers and beat say they are alive; every published task says when it was published.

- Every worker reports itself to Redis every :data:`WORKER_EVERY` seconds (a
  Celery bootstep on the worker's timer): a unique identity (its node name plus a
  random id drawn at start), its host, the queues it consumes and how many tasks
  it runs at once, so ``/healthz`` can tell whether every queue has a live
  consumer on some host, and campaigns can size their batches to the bulk
  sessions the deployment has (:func:`tasks.delivery.runtime.bulk_sessions`).
- Beat marks each scheduled task it publishes (``postroom.campaign.start_due``
  goes out every ``CAMPAIGN_SCAN_INTERVAL``), so ``/healthz`` can tell whether beat
  runs, whatever the workers do.
- Every task a worker runs adds one to ``postroom:metrics:tasks`` under its queue
  and final state (a ``task_postrun`` handler, one ``HINCRBY``), so ``/metrics``
  can tell a queue that drains from one that is frozen; while it runs it is listed
  under the worker's identity (:mod:`tasks.workers.running`), so the reconciler can mark
  the tasks of a worker that died failed.
- Every task message carries a ``postroom_published_at`` header (Unix time), so
  ``/metrics`` can give the age of the oldest task waiting in each queue.
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from typing import Any

from celery import Celery, bootsteps
from celery.signals import beat_init, before_task_publish, task_postrun, task_prerun
from redis import Redis
from redis.exceptions import RedisError

from tasks.delivery.counters import DeliveryMetrics
from tasks.workers.heartbeats import Heartbeats, WorkerCard, worker_identity
from tasks.workers.running import RunningTasks

log = logging.getLogger(__name__)

WORKER_EVERY = 5.0  # seconds between a worker's reports
PUBLISHED_AT = "postroom_published_at"  # the task message header

_clients: weakref.WeakKeyDictionary[Celery, Redis] = weakref.WeakKeyDictionary()
_identities: weakref.WeakKeyDictionary[Celery, str] = weakref.WeakKeyDictionary()
_beat: dict[str, Redis] = {}  # the Redis of the beat running in this process, if any


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Reports the worker's card to Redis now and every :data:`WORKER_EVERY` s."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        self.timer_ref: Any = None
        self.identity = ""

    def start(self, worker: Any) -> None:
        client = _clients.get(worker.app)
        if client is None:
            return
        self.identity = worker_identity(worker.hostname)
        _identities[worker.app] = self.identity  # the tasks it runs are recorded under it
        log.info("worker %s reports as %s", worker.hostname, self.identity)
        self.report(worker, self.identity, client)
        self.timer_ref = worker.timer.call_repeatedly(
            WORKER_EVERY, self.report, (worker, self.identity, client), priority=10)

    def stop(self, worker: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        client = _clients.get(worker.app)
        if client is not None and self.identity:
            try:
                Heartbeats(client).forget_worker(self.identity)
            except RedisError as err:
                log.warning("worker heartbeat not removed: %s", err)

    def terminate(self, worker: Any) -> None:  # a cold shutdown stops the reports too
        self.stop(worker)

    @staticmethod
    def card(worker: Any, identity: str) -> WorkerCard:
        """What the worker consumes now (``add_consumer``/``cancel_consumer`` included)."""
        return WorkerCard(identity, node=worker.hostname, host=socket.gethostname(),
                          queues=consumed_queues(worker), sessions=int(worker.concurrency or 0),
                          pool=getattr(worker.pool_cls, "__module__", "").rpartition(".")[2])

    @classmethod
    def report(cls, worker: Any, identity: str, client: Redis) -> None:
        try:
            Heartbeats(client).worker(cls.card(worker, identity))
        except RedisError as err:
            log.warning("worker heartbeat not written: %s", err)


def consumed_queues(worker: Any) -> tuple[str, ...]:
    """The queues *worker* consumes: its live consumer's, else those it was started with."""
    consumer = getattr(getattr(worker, "consumer", None), "task_consumer", None)
    if consumer is not None and getattr(consumer, "queues", None) is not None:
        return tuple(sorted({queue.name for queue in consumer.queues}))
    queues = worker.app.amqp.queues
    selected = queues.consume_from if queues.consume_from is not None else queues
    return tuple(sorted(selected))


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


def _worker_of(task: Any) -> tuple[Redis, str] | None:
    """The Redis and identity of the worker running *task* (``None``: eager, or unknown)."""
    app = getattr(task, "app", None)
    client = _clients.get(app) if app is not None else None
    if client is None or task.request.is_eager:
        return None
    return client, _identities.get(app, "")


@task_prerun.connect
def _mark_running(sender: Any = None, task_id: str | None = None, task: Any = None,
                  **_: Any) -> None:
    task = task or sender
    found = _worker_of(task)
    if found is None or not found[1] or not task_id:
        return
    try:
        RunningTasks(found[0]).started(found[1], task_id, task.name)
    except RedisError as err:
        log.warning("running task %s not recorded: %s", task_id, err)


@task_postrun.connect
def _count_finished(sender: Any = None, task_id: str | None = None, task: Any = None,
                    state: str | None = None, **_: Any) -> None:
    task = task or sender
    found = _worker_of(task)
    if found is None:
        return
    client, identity = found
    delivery = task.request.delivery_info or {}
    queue = delivery.get("routing_key") or delivery.get("queue") or "unknown"
    pipe = client.pipeline(transaction=False)
    DeliveryMetrics(client).task_finished(str(queue), state or "UNKNOWN", pipe)
    if identity and task_id:
        RunningTasks(client).finished(pipe, identity, task_id)
    try:
        pipe.execute()
    except RedisError as err:
        log.warning("finished-task count not written: %s", err)
