"""The reconciler: the ledger is the truth, the broker only a doorbell.

A pass runs every ``RECONCILE_INTERVAL`` wherever any worker runs: each worker
process tries every interval (:class:`ReconcilerLoop`, started with the worker)
and beat sends ``postroom.reconcile`` on the same beat; whoever takes the
interval's turn in Redis (:func:`take_turn`) runs it, so one pass happens per
interval and losing any one host, whichever it is, never stops recovery. A pass
finds work that should be moving and is not, and enqueues it again:

- campaign batches whose run holds no claim lease some time after they were
  queued and whose task is not waiting in the broker (their worker
  vanished, or their task never reached one): a batch is judged lost by its
  lease alone, never by its place in the queue;
- recipients left ``sending`` under a claim whose lease ran out;
- deferred recipients whose retry time passed without a retry;
- messages, OTP requests and queued campaigns on the watch list
  (:mod:`tasks.delivery.watch_list`) whose time has passed and whose task is not
  waiting in the broker;
- webhook events left in the outbox with no dispatcher queued;
- mail parked while every relay is down (:mod:`tasks.delivery.relay_probe`) with no probe
  on its way (its task was lost with a worker).

Enqueuing twice is safe: a batch claims only what is unsent and unclaimed, so
a duplicate finds nothing to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from celery import current_app
from redis import Redis, RedisError

from tasks.campaigns.store import CampaignStore
from tasks.campaigns.tasks import batch_size, queue_batches, send_campaign_batch, start_campaign
from tasks.codes.store import OTPStore
from tasks.codes.tasks import send_code
from tasks.delivery import runtime
from tasks.delivery.counters import REQUEUES_KEY
from tasks.delivery.leases import process_id
from tasks.delivery.ledger import DeliveryLedger
from tasks.delivery.relay_probe import schedule_lost_probe
from tasks.delivery.watch_list import Watchlist
from tasks.messages.store import MessageStore
from tasks.messages.tasks import deliver_message
from tasks.shared.keys import key
from tasks.vocabulary import UNSETTLED, CampaignStatus, Kind, Queue, Status
from tasks.webhooks.store import DISPATCH_PENDING, EventOutbox
from tasks.webhooks.tasks import fan_out_events
from tasks.workers.lost_tasks import report_lost, sweep
from tasks.workers.waiting import Waiting, read_waiting

log = logging.getLogger(__name__)

TURN_KEY = key("reconcile", "turn")
WAITING_QUEUES = (Queue.BULK, Queue.MAIL, Queue.OTP)
BLIND_GRACE = 10  # how many intervals work must look idle when the broker cannot be read


@dataclass(slots=True)
class Reconciled:
    """What one pass found and enqueued again."""

    batches: int = 0  # campaign batches re-enqueued
    recipients: int = 0  # stuck or overdue campaign recipients given a batch of their own
    deliveries: dict[str, int] = field(default_factory=dict)  # by kind
    reasons: dict[str, int] = field(default_factory=dict)  # re-enqueues by reason

    def add(self, kind: str) -> None:
        self.deliveries[kind] = self.deliveries.get(kind, 0) + 1
        self.because(f"{kind}_idle")

    def because(self, reason: str, n: int = 1) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + n

    def __bool__(self) -> bool:
        return bool(self.batches or self.recipients or self.deliveries)


def take_turn(redis: Redis, interval: float) -> bool:
    """Whether this caller runs this interval's pass (one pass per interval, cluster-wide)."""
    return bool(redis.set(TURN_KEY, process_id(), nx=True, px=max(100, int(interval * 900))))


def reconcile_once() -> Reconciled | None:
    """This interval's pass, if it is this caller's turn (inside the app context)."""
    redis = runtime.redis_client()
    interval = float(runtime.app_config()["RECONCILE_INTERVAL"])
    if not take_turn(redis, interval):
        return None
    waiting = _broker_view()
    found = Reconciler(redis, grace=interval, waiting=waiting or Waiting.of(()),
                       unknown=waiting is None).run()
    sweep(current_app, redis)  # tasks of workers that died end FAILED in Flower
    if found:
        log.warning("reconciler re-enqueued work that had stopped moving: %s", found)
        pipe = redis.pipeline(transaction=False)
        for reason, n in found.reasons.items():
            pipe.hincrby(REQUEUES_KEY, reason, n)
        pipe.execute()
    return found


def _broker_view() -> Waiting | None:
    """The tasks waiting in the broker; ``None`` when that cannot be known."""
    try:
        return read_waiting(current_app, WAITING_QUEUES)
    except (RedisError, OSError) as err:
        log.warning("the broker's queues could not be read: %s", err)
        return None


class ReconcilerLoop:
    """A thread in each worker process that tries for a pass every *interval* seconds."""

    def __init__(self, run_pass: Callable[[], object], interval: float) -> None:
        self.run_pass = run_pass
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name="postroom-reconciler")

    def start(self) -> ReconcilerLoop:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.run_pass()
            except (RedisError, OSError) as err:  # Redis away: the next interval tries again
                log.warning("reconciler pass not run: %s", err)


class Reconciler:
    """Finds stuck work in Redis; enqueues it again. *grace*: how long work may look idle.

    *waiting*: the tasks waiting in the broker (:func:`tasks.workers.waiting.read_waiting`),
    never taken for lost. With *unknown* (the broker could not be read), work is taken
    for lost only after it has looked idle for :data:`BLIND_GRACE` times *grace*."""

    def __init__(self, redis: Redis, *, grace: float, waiting: Waiting | None = None,
                 unknown: bool = False) -> None:
        self.redis = redis
        self.grace = grace * BLIND_GRACE if unknown else grace
        self.waiting = waiting or Waiting.of(())
        self.campaigns = CampaignStore(redis)
        self.watch_list = Watchlist(redis)

    def run(self, now: float | None = None) -> Reconciled:
        now = time.time() if now is None else now
        found = Reconciled()
        for campaign_id in self.campaigns.running():
            self._campaign(campaign_id, now, found)
        for kind, item_id in self.watch_list.overdue(now):
            self._watched(kind, item_id, now, found)
        if EventOutbox(self.redis).waiting() and not self.redis.exists(DISPATCH_PENDING):
            fan_out_events.delay()  # events whose dispatcher was lost
            found.add(Queue.EVENTS)
        if schedule_lost_probe():
            found.add("relay_probe")
        return found

    # -- campaigns ----------------------------------------------------------------------------

    def _campaign(self, campaign_id: str, now: float, found: Reconciled) -> None:
        store = self.campaigns
        covered: list[tuple[int, int]] = []
        for slot, first, last in store.silent_batches(campaign_id,
                                                      dispatched_before=now - self.grace):
            if self.waiting.has_batch(send_campaign_batch.name, campaign_id, slot):
                continue  # only waiting its turn in the queue
            store.mark_queued(campaign_id, slot, first, last)
            send_campaign_batch.delay(campaign_id, first, last, slot)
            covered.append((first, last))
            found.batches += 1
            found.because("batch_lease_gone")
        ledger = store.ledger(campaign_id)
        orphaned = {i for i in ledger.orphaned() if not _within(i, covered)}
        overdue = {i for i in ledger.due_for_retry(now - self.grace)
                   if not _within(i, covered)} - orphaned
        stuck = sorted(orphaned | overdue)
        config = runtime.app_config()  # whole sessions per batch, as the dispatcher cuts them
        size = batch_size(len(stuck), 1, cap=int(config["CAMPAIGN_BATCH_SIZE"]),
                          per_session=int(config.get("MAIL_MAX_EMAILS") or 0) or None)
        for first, last in _spans(stuck, size):
            slot = store.rescue_batch(campaign_id, first, last)
            send_campaign_batch.delay(campaign_id, first, last, slot)
        found.recipients += len(stuck)
        if orphaned:
            found.because("claim_lease_gone", len(orphaned))
        if overdue:
            found.because("retry_overdue", len(overdue))
        queue_batches(campaign_id)

    # -- the watch list -----------------------------------------------------------------------

    def _watched(self, kind: str, item_id: str, now: float, found: Reconciled) -> None:
        task: Any
        if kind == Kind.CAMPAIGN:
            if self.campaigns.status(item_id) != CampaignStatus.QUEUED:
                self.watch_list.done(kind, item_id)
                return
            task = start_campaign
        else:
            ledger = self._ledger(kind, item_id)
            if ledger is None or not UNSETTLED.intersection(
                    status for status, n in ledger.counts().items() if n):
                self.watch_list.done(kind, item_id)
                return
            if not self._claimable(ledger, now):
                later = ledger.next_retry()
                self.watch_list.expect(kind, item_id, max(later or 0.0, now) + self.grace)
                return
            task = deliver_message if kind == Kind.MESSAGE else send_code
        if self.waiting.has(task.name, item_id):  # only waiting its turn in the queue
            self.watch_list.expect(kind, item_id, now + self.grace)
            return
        self.watch_list.expect(kind, item_id, now + 2 * self.grace)  # before: the task may clear it
        # a dead worker's task: FAILED, not STARTED
        if kind != Kind.CAMPAIGN and ledger is not None:
            report_lost(current_app, ledger.orphaned_claims(limit=100))
        task.delay(item_id)
        found.add(kind)

    def _ledger(self, kind: str, item_id: str) -> DeliveryLedger | None:
        if kind == Kind.MESSAGE:
            messages = MessageStore(self.redis)
            return messages.ledger(item_id) if messages.get(item_id) is not None else None
        if kind == Kind.OTP:
            otp = OTPStore.from_config(self.redis, runtime.app_config())
            return otp.ledger(item_id) if otp.get(item_id) is not None else None
        log.warning("unknown kind %r on the watch list: %s", kind, item_id)
        return None

    @staticmethod
    def _claimable(ledger: DeliveryLedger, now: float) -> bool:
        """Anything a task would send now: queued, deferred and due, or orphaned."""
        counts = ledger.counts()
        return bool(counts[Status.QUEUED] or ledger.due_for_retry(now, limit=1)
                    or (counts[Status.SENDING] and ledger.orphaned(limit=100)))


def _within(index: int, spans: list[tuple[int, int]]) -> bool:
    return any(first <= index <= last for first, last in spans)


def _spans(indices: list[int], size: int) -> Iterator[tuple[int, int]]:
    """Runs of at most *size* recipients, as ``(first, last)``."""
    for start in range(0, len(indices), size):
        part = indices[start:start + size]
        yield part[0], part[-1]
