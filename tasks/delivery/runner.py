"""Running a message's or a code's delivery task, with the watch list kept true.

Both ``postroom.deliver_message`` and ``postroom.otp.send`` run one batch on a
connection of their own (on a session an earlier one left open in this process,
when one is kept: :func:`tasks.delivery.runtime.session_pool`), retry it with backoff
when Redis fails under it, and end by taking their delivery off the
reconciler's watch list, or by retrying when recipients are deferred and asking
the reconciler to look again should that retry be lost.

While every relay is known to be down (its breaker open in Redis), a run parks
instead (:mod:`tasks.delivery.relay_probe`): before it claims anything, or after a batch
that could open no session; it is published again as soon as a probe finds a
relay back, and is not retried meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from celery import Task
from redis.exceptions import RedisError

from tasks.delivery import runtime
from tasks.delivery.engine.compose import Composer
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.ledger import UNSETTLED, DeliveryLedger
from tasks.delivery.observers import DeliveryWatch
from tasks.delivery.relay_probe import park
from tasks.delivery.service import BatchOptions, BatchReport, Envelope, retry_countdown, run_batch
from tasks.delivery.watch_list import Watchlist

log = logging.getLogger(__name__)


def run_watched(task: Task, ledger: DeliveryLedger, envelopes: Sequence[Envelope],
                composer: Composer, settings: SMTPSettings, options: BatchOptions,
                what: str, watch: DeliveryWatch) -> BatchReport:
    """:func:`run_batch` on one connection; a Redis error retries the task with backoff
    (what it had claimed comes back when its lease runs out). *watch* (the options'
    observer) is closed with the sessions opened when the batch is over.

    While every relay is down the run parks: at once, or after a batch on which no
    session could be opened (its recipients deferred, no attempt used)."""
    connection = BatchConnection(settings, gate=runtime.session_gate(),
                                 pool=runtime.session_pool())
    started = time.monotonic()
    deadline = options.policy.deadline(options.created_at)
    look_again = _look_again(options)
    watched = (f"{watch.kind}:{watch.delivery_id}", look_again)
    try:
        if envelopes and park(task, settings, deadline, watched) is not None:
            return BatchReport(parked=look_again)
        with connection:
            report = run_batch(ledger, envelopes, connection, composer, options)
        if report.deferred and not (connection.sessions_opened or connection.sessions_reused) \
                and park(task, settings, deadline, watched) is not None:
            report.parked = look_again
    except RedisError as err:
        log.warning("%s stopped by a Redis error; retrying: %s", what, err)
        countdown = options.policy.countdown(task.request.retries + 1)
        raise task.retry(countdown=countdown, exc=err) from err
    finally:
        watch.close(sessions_opened=connection.sessions_opened)
    log.info("%s: %s in %.3f s (%d session(s) opened, %d kept one(s) used)", what,
             report.described(), time.monotonic() - started, connection.sessions_opened,
             connection.sessions_reused)
    return report


def settle_watched(task: Task, kind: str, item_id: str, ledger: DeliveryLedger,
                   report: BatchReport) -> None:
    """Off the watch list when nothing is left; else retry, and be looked at after that."""
    if report.parked is not None:  # on the watch list for report.parked already
        return
    watch = Watchlist(runtime.redis_client())
    countdown = retry_countdown(report)
    if countdown is None:
        if not UNSETTLED.intersection(s for s, n in ledger.counts().items() if n):
            watch.done(kind, item_id)
        return
    watch.expect(kind, item_id, time.time() + countdown + runtime.watch_after())
    raise task.retry(countdown=countdown)


def _look_again(options: BatchOptions, now: float | None = None) -> float:
    """When the reconciler looks at a parked delivery: at its deadline (then it fails, if
    no relay took it), or after the backoff's cap without one. Until then the parked set
    and the probe task are what move it (the reconciler replaces a lost probe task), so a
    long outage costs the reconciler nothing per message."""
    current = time.time() if now is None else now
    grace = runtime.watch_after()
    deadline = options.policy.deadline(options.created_at)
    if deadline is not None:
        return max(current, deadline) + grace
    return current + max(grace, options.policy.cap)
