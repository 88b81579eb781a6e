"""Mail parked while every relay is down, and the one probe per interval that wakes it.

A relay on which no session could be opened opens its breaker in Redis
(:mod:`tasks.delivery.relay_state`), seen by every worker on every host. While every
relay's breaker is open, a delivery task parks (:func:`park`): one Redis round
trip, and for the first to park the probe task scheduled for the next probe.
No connection is opened, no deferral recorded, no attempt used and no retry
republished; the recipients keep their status.

``postroom.relay_probe`` runs when the next probe is due:

1. parked work past its deadline (``DELIVERY_MAX_AGE``) is published again, so
   its run records the failure the deadline calls for;
2. it takes the probe turn (the relay's cooldown key, one worker per interval)
   and opens a session the usual way (connect, greeting, STARTTLS, AUTH), then
   ends it;
3. when the session opened, the breaker is closed and every parked task is
   published again at once; else the next probe is scheduled.

Should the probe task be lost with its worker, the wake key runs out and the
next task to park, or the reconciler, schedules another.

A message or code submitted while every relay is down is parked by the process that accepted
it (:func:`park_at_submission`), so no task is published for it and no worker runs
one: the same member of the parked set its task would have made, released by the
same probe. That process trusts its reading of the breakers for ``BREAKER_READ_TTL``:
a reading that is late the other way only means the task is published and parks itself,
and one that is late this way parks a message a probe then releases within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from celery import Task, current_app
from flask import current_app as flask_current_app

from tasks.delivery import runtime
from tasks.delivery.engine.errors import SessionError
from tasks.delivery.engine.session import BatchConnection
from tasks.delivery.engine.settings import SMTPSettings
from tasks.delivery.parked import ParkedTask, ParkedWork
from tasks.delivery.relay_state import RelayBoard
from tasks.delivery.service import RetryPolicy

log = logging.getLogger(__name__)

WAKE_SLACK = 5.0  # seconds a scheduled probe may run late before another is scheduled
MIN_WAIT = 0.05  # seconds at least between two probe tasks (one may run a moment early)
PROBE_TASK = "postroom.relay_probe"  # declared in tasks.delivery.tasks
BREAKER_READ_TTL = 1.0  # seconds a submitting process trusts its last reading of the breakers
BREAKER_READING = "postroom.breaker_reading"  # the app's extension holding it


def park(task: Task, settings: SMTPSettings, deadline: float | None,
         watched: tuple[str, float] | None = None) -> float | None:
    """Park *task*'s current run when every relay is down; the time its next probe is
    due, or ``None`` when the run should go ahead (a relay may be tried, the deadline
    has passed, or the task runs eagerly, with no broker to wake it). *watched*: the
    delivery's watch-list entry (``kind:id``, when to look), set when it parks."""
    board = settings.relay_state
    if task.request.is_eager or not isinstance(board, RelayBoard):
        return None
    until = board.parked_until([str(relay) for relay in settings.relays])
    now = time.time()
    if until is None or (deadline is not None and now >= deadline):
        return None
    return _park(board, task.name, list(task.request.args or ()), deadline, until, now,
                 watched)


def _park(board: RelayBoard, name: str, args: list[Any], deadline: float | None,
          until: float, now: float, watched: tuple[str, float] | None) -> float:
    """Add ``name(*args)`` to the parked set and, for the first to park, schedule the
    probe; the time the probe is due."""
    wake_at = max(until, now)
    if ParkedWork(board.redis).park(name, args, deadline, wake_at=wake_at,
                                    wake_for=_wake_for(board, wake_at - now),
                                    watched=watched):
        probe_task().apply_async(countdown=wake_at - now)
    return wake_at


def look_again(policy: RetryPolicy, created_at: float | None,
               now: float | None = None) -> float:
    """When the reconciler looks at a parked delivery: at its deadline (then it fails, if
    no relay took it), or after the backoff's cap without one. Until then the parked set
    and the probe task are what move it (the reconciler replaces a lost probe task), so a
    long outage costs the reconciler nothing per message."""
    current = time.time() if now is None else now
    grace = runtime.watch_after()
    deadline = policy.deadline(created_at)
    if deadline is not None:
        return max(current, deadline) + grace
    return current + max(grace, policy.cap)


class BreakerReading:
    """One process's reading of whether every relay is down, taken at most once per
    ``BREAKER_READ_TTL`` (the submitting side: one Redis round trip a second, not one a
    message)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._until: float | None = None
        self._board: RelayBoard | None = None

    def parked_until(self) -> tuple[float | None, RelayBoard | None]:
        """:meth:`RelayBoard.parked_until` for the app's relays, as last read, and the
        board it was read from (``None`` without a breaker)."""
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < BREAKER_READ_TTL:
                return self._until, self._board
        settings = runtime.smtp_settings()
        board = settings.relay_state if isinstance(settings.relay_state, RelayBoard) else None
        until = None if board is None else board.parked_until(
            [str(relay) for relay in settings.relays])
        with self._lock:
            self._read_at, self._until, self._board = now, until, board
        return until, board


def park_at_submission(task: Task, args: list[Any], created_at: float, watched: str, *,
                       max_age: float | None = None) -> bool:
    """Park ``task(*args)`` instead of publishing it when every relay is known to be down
    (as :func:`park` would at the start of its run); ``True`` when parked, ``False`` when
    it is to be published as usual (a relay may be tried, its deadline has passed, or
    Celery runs eagerly). *watched*: the delivery's watch-list member (``kind:id``);
    *max_age*: the task's own ``DELIVERY_MAX_AGE`` (a code's lifetime), if it has one."""
    app = flask_current_app._get_current_object()  # type: ignore[attr-defined]
    if app.extensions["celery"].conf.task_always_eager:
        return False
    reading = app.extensions.setdefault(BREAKER_READING, BreakerReading())
    until, board = reading.parked_until()
    if until is None or board is None:
        return False
    policy = runtime.retry_policy()
    if max_age is not None:
        policy = replace(policy, max_age=max_age)
    deadline = policy.deadline(created_at)
    now = time.time()
    if deadline is not None and now >= deadline:
        return False
    _park(board, task.name, list(args), deadline, until, now,
          (watched, look_again(policy, created_at, now)))
    return True


def probe_relays() -> None:
    """Probe the relays once if a probe is due; release parked work when one is back
    (the body of ``postroom.relay_probe``, :mod:`tasks.delivery.tasks`)."""
    redis = runtime.redis_client()
    parked = ParkedWork(redis)
    parked.woken()
    settings = runtime.smtp_settings()
    board = settings.relay_state
    assert isinstance(board, RelayBoard)
    names = [str(relay) for relay in settings.relays]
    now = time.time()
    overdue = _publish(parked.release(due_by=now))
    if overdue:
        log.warning("%d parked delivery task(s) reached their deadline with every relay "
                    "down; running them to record it", overdue)
    until = board.parked_until(names)
    if until is not None and until <= time.time():
        _probe(settings)
        until = board.parked_until(names)
    if until is None:
        released = _publish(parked.release())
        if released:
            log.info("relay back: %d parked delivery task(s) published again", released)
        return
    wait = max(MIN_WAIT, until - time.time())
    if parked.schedule(until, _wake_for(board, wait)):
        probe_task().apply_async(countdown=wait)


def schedule_lost_probe() -> bool:
    """The reconciler's rule: parked work and no probe on its way get a probe now."""
    parked = ParkedWork(runtime.redis_client())
    if parked.schedule(time.time(), WAKE_SLACK):
        probe_task().delay()
        return True
    return False


def _probe(settings: SMTPSettings) -> None:
    """One session, opened as a batch would (taking the probe turn) and ended at once."""
    connection = BatchConnection(settings, gate=runtime.session_gate())
    try:
        with connection:
            connection.open_session()
    except SessionError as err:
        log.info("relay probe: still down: %s", err)


def probe_task() -> Task:
    """``postroom.relay_probe``, as the current Celery app knows it."""
    task: Task = current_app.tasks[PROBE_TASK]
    return task


def _publish(chunks: Iterable[list[ParkedTask]]) -> int:
    count = 0
    for chunk in chunks:
        for name, args in chunk:
            current_app.send_task(name, args=args)
        count += len(chunk)
    return count


def _wake_for(board: RelayBoard, wait: float) -> float:
    return wait + 2 * (board.probe or board.breaker) + WAKE_SLACK
