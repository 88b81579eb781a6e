"""A task whose worker died ends in a final state in Flower and the result backend.

Flower learns a task's state from worker events; a worker killed mid-task never sends
``task-failed``, so Flower would show the task STARTED for ever. When the reconciler finds
recipients a dead run left ``sending`` (its claim lease ran out), the run's token names the
task (``<task name>:<task id>``, :mod:`tasks.messages.tasks`, :mod:`tasks.codes.tasks`): the
reconciler sends ``task-failed`` for that id, from :data:`REPORTED_BY`, and records the failure
in the result backend. The recipients are sent again by a new task; with ``task_acks_late`` the
broker also redelivers the lost message itself once its visibility timeout passes, which then
ends in SUCCESS under the same id. Campaign batches' tokens name their batch, not a task,
so only message and code tasks are reported so.

Every task is also listed under its worker's identity while it runs
(:mod:`tasks.workers.running`); :func:`sweep`, run by the reconciler, reports the tasks of
workers silent for :data:`LOST_AFTER` seconds the same way — campaign batches included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from celery import Celery, states
from celery.exceptions import WorkerLostError
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError

from tasks.workers.heartbeats import Heartbeats
from tasks.workers.running import RunningTasks

log = logging.getLogger(__name__)

LOST_AFTER = 60.0  # seconds without a heartbeat (every 5 s) before a worker is taken for dead

REPORTED_BY = "reconciler@postroom"  # the "worker" Flower shows for these events
REASON = ("the worker running it stopped (its claim lease ran out); the reconciler "
          "enqueued its recipients again")


def task_id_of(token: str) -> str | None:
    """The task id in a run token ``postroom.<name>:<id>``; ``None`` for other tokens."""
    name, sep, task_id = token.partition(":")
    if not sep or not name.startswith("postroom.") or not task_id or ":" in task_id:
        return None
    return task_id


def report_lost(app: Celery, tokens: Iterable[str]) -> list[str]:
    """Mark the tasks behind the dead runs *tokens* failed, for Flower and the backend."""
    return mark_failed(app, {task_id for token in tokens if (task_id := task_id_of(token))})


def sweep(app: Celery, redis: Redis, now: float | None = None) -> list[str]:
    """Mark the tasks still listed under workers silent for :data:`LOST_AFTER` s failed."""
    now = time.time() if now is None else now
    live = set(Heartbeats(redis).workers_since(now - LOST_AFTER))
    running = RunningTasks(redis)
    lost = running.of_workers_not_in(live)
    if not lost:
        return []
    ids = mark_failed(app, set(lost))
    running.forget(lost, live)
    return ids


def mark_failed(app: Celery, task_ids: Iterable[str]) -> list[str]:
    """Send ``task-failed`` for each of *task_ids* and store FAILURE for it."""
    ids = sorted(task_ids)
    if not ids:
        return []
    try:
        with app.events.default_dispatcher(hostname=REPORTED_BY) as dispatcher:
            for task_id in ids:
                dispatcher.send("task-failed", uuid=task_id, exception=f"WorkerLostError("
                                f"{REASON!r})", traceback="", timestamp=time.time())
    except (OperationalError, OSError) as err:
        log.warning("lost task(s) %s not reported to Flower: %s", ", ".join(ids), err)
    for task_id in ids:
        try:
            app.backend.store_result(task_id, WorkerLostError(REASON), states.FAILURE)
        except (RedisError, OSError) as err:
            log.warning("lost task %s not marked failed: %s", task_id, err)
    log.warning("task(s) of a worker that stopped marked failed: %s", ", ".join(ids))
    return ids
