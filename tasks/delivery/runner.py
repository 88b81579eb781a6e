"""One way to deliver, for every kind of mail: the set-up, the observers, the connection
and the retries of a delivery task's run.

``postroom.deliver_message``, ``postroom.deliver_each``, ``postroom.otp.send`` and
``postroom.campaign.send_batch`` each build a :class:`Delivery` (what they send is
theirs: the ledger, the drafts) and call :meth:`Delivery.run`. A delivery sets up, the
same way for each:

- its retry policy (``DELIVERY_*``) and its claim lease (``CLAIM_LEASE``);
- the suppression list for its kind, and the note of why a recipient was barred;
- its observers (:func:`tasks.delivery.runtime.observer`): a log line per recipient,
  the counters, the task's own observers, the webhook events, ``email_dispatched``;
- its connection: a single message or a code runs on a connection of its own, on a
  session an earlier one left open in this process when one is kept
  (:func:`tasks.delivery.runtime.session_pool`); a campaign batch (*bulk*) leaves one
  ``MAIL_MAX_CONNECTIONS`` slot to codes, and keeps sessions only without
  ``MAIL_MAX_EMAILS`` (with it, every batch is whole sessions of its own).

A Redis error under a run retries the task with the policy's backoff
(:func:`retry_after_redis_error`); what it had claimed comes back when its lease runs
out. A single message or code ends (:meth:`Delivery.settle`) by taking its delivery off
the reconciler's watch list, or by retrying when recipients are deferred and asking the
reconciler to look again should that retry be lost.

While every relay is known to be down (its breaker open in Redis), a single message or
code parks instead (:mod:`tasks.delivery.relay_probe`): before it claims anything, or
after a batch that could open no session; it is published again as soon as a probe
finds a relay back, and is not retried meanwhile.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from celery import Task
from celery.exceptions import Retry
from redis.exceptions import RedisError

from tasks.bounces.policy import (
    MailKind,
    SuppressedNotes,
    SuppressionCheck,
    suppression_check,
)
from tasks.delivery import runtime
from tasks.delivery.engine.compose import Composer
from tasks.delivery.engine.session import BatchConnection
from tasks.delivery.engine.settings import SMTPSettings
from tasks.delivery.ledger import DeliveryLedger
from tasks.delivery.observers import Observer
from tasks.delivery.relay_probe import look_again as parked_look_again
from tasks.delivery.relay_probe import park
from tasks.delivery.service import (
    BatchOptions,
    BatchReport,
    Outgoing,
    RetryPolicy,
    retry_countdown,
    run_batch,
)
from tasks.delivery.watch_list import Watchlist
from tasks.vocabulary import Queue

log = logging.getLogger(__name__)


def retry_after_redis_error(task: Task, what: str, err: RedisError, policy: RetryPolicy,
                            logger: logging.Logger = log) -> Retry:
    """The retry of *task* after Redis failed under it, with the policy's backoff."""
    logger.warning("%s stopped by a Redis error; retrying: %s", what, err)
    return task.retry(countdown=policy.countdown(task.request.retries + 1), exc=err)


class Delivery:
    """One run of one delivery (a message, a code, a campaign batch): see the module.

    *kind* is ``otp``, ``message`` or ``campaign``; *delivery_id* the request's,
    message's or campaign's id; *created_at* the delivery's, for the policy's
    deadline. *observers* are the task's own observers, called before Flask-Mail's
    signal; *token* defaults to the task's (the same for every run of one task).
    """

    def __init__(self, task: Task, kind: MailKind, delivery_id: str, ledger: DeliveryLedger, *,
                 created_at: float | None, settings: SMTPSettings | None = None,
                 policy: RetryPolicy | None = None, token: str | None = None,
                 observers: Sequence[Observer] = (), bulk: bool = False) -> None:
        self.task = task
        self.kind = kind
        self.delivery_id = delivery_id
        self.ledger = ledger
        self.bulk = bulk
        self.settings = settings if settings is not None else runtime.smtp_settings()
        self.policy = policy if policy is not None else runtime.retry_policy()
        self.created_at = created_at
        # bounced, complained, manual, unsubscribed: each kind of mail has its own rule
        self.suppressed: SuppressionCheck = suppression_check(ledger.redis, kind)
        notes = SuppressedNotes(ledger, self.suppressed)
        self.observers = runtime.observer(kind, delivery_id, [*observers, notes])
        if bulk:
            pool = None if self.settings.max_emails else runtime.session_pool()
            self.connection = BatchConnection(self.settings,
                                              gate=runtime.session_gate(bulk=True),
                                              pool=pool, lane=Queue.BULK)
        else:
            self.connection = BatchConnection(self.settings, gate=runtime.session_gate(),
                                              pool=runtime.session_pool())
        self.options = BatchOptions(
            token=token or f"{task.name}:{task.request.id or uuid.uuid4().hex}",
            policy=self.policy, created_at=created_at, lease=runtime.claim_lease(),
            suppressed=self.suppressed, observe=self.observers,
            recorded=self.observers.recorded)

    def run(self, outgoing: Iterable[Outgoing], composer: Composer, what: str, *,
            should_stop: Callable[[], bool] | None = None,
            last_call: Callable[[], bool] | None = None,
            note: Callable[[], str] = lambda: "", logger: logging.Logger = log,
            retry_on_redis_error: bool = True) -> BatchReport:
        """:func:`run_batch` on the delivery's connection, with its one log line (to
        *logger*, *what* and *note* naming the run); a Redis error retries the task
        (unless *retry_on_redis_error* is false: then it is raised). The observers are
        closed with the sessions opened when the batch is over.

        While every relay is down a single message or code parks: at once, or after a
        batch on which no session could be opened (its recipients deferred, no attempt
        used)."""
        options = replace(self.options, should_stop=should_stop, last_call=last_call)
        connection = self.connection
        started = time.monotonic()
        try:
            if self.bulk:
                with connection:
                    report = run_batch(self.ledger, outgoing, connection, composer, options)
            else:
                report, at_once = self._run_single(list(outgoing), composer, options)
                if at_once:  # parked before it claimed anything: no line
                    return report
        except RedisError as err:
            if not retry_on_redis_error:
                raise
            raise retry_after_redis_error(self.task, what, err, self.policy, logger) from err
        finally:
            self.observers.close(sessions_opened=connection.sessions_opened)
        logger.info("%s: %s in %.3f s (%d session(s) opened, %d kept one(s) used)%s", what,
                    report.described(), time.monotonic() - started,
                    connection.sessions_opened, connection.sessions_reused, note())
        return report

    def _run_single(self, outgoing: Sequence[Outgoing], composer: Composer,
                    options: BatchOptions) -> tuple[BatchReport, bool]:
        """The run of a single message or code, and whether it parked at once."""
        settings, task, connection = self.settings, self.task, self.connection
        deadline = options.policy.deadline(options.created_at)
        look_again = _look_again(options)
        watched = (f"{self.kind}:{self.delivery_id}", look_again)
        if outgoing and park(task, settings, deadline, watched) is not None:
            return BatchReport(parked=look_again), True
        with connection:
            report = run_batch(self.ledger, outgoing, connection, composer, options)
        if report.deferred and not (connection.sessions_opened or connection.sessions_reused) \
                and park(task, settings, deadline, watched) is not None:
            report.parked = look_again
        return report, False

    def settle(self, report: BatchReport) -> None:
        """Off the watch list when nothing is left; else retry, and be looked at after that."""
        if report.parked is not None:  # on the watch list for report.parked already
            return
        watch = Watchlist(runtime.redis_client())
        countdown = retry_countdown(report)
        if countdown is None:
            watch.done_if_settled(self.kind, self.delivery_id, self.ledger.counts_key)
            return
        watch.expect(self.kind, self.delivery_id,
                     time.time() + countdown + runtime.watch_after())
        raise self.task.retry(countdown=countdown)


def _look_again(options: BatchOptions) -> float:
    return parked_look_again(options.policy, options.created_at)
