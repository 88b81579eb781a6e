"""The reconciler: the ledger is the truth, the broker only a doorbell.

Beat runs :func:`reconcile` every ``RECONCILE_INTERVAL``. It finds work that
should be moving and is not, and enqueues it again:

- campaign batches whose run holds no claim lease some time after they were
  dispatched (their worker vanished, or their task never reached one);
- recipients left ``sending`` under a claim whose lease ran out;
- deferred recipients whose retry time passed without a retry;
- messages, OTP requests and queued campaigns on the watch list
  (:mod:`tasks.stores.watch`) whose time has passed;
- webhook events left in the outbox with no dispatcher queued.

Enqueuing twice is safe: a batch claims only what is unsent and unclaimed, so
a duplicate finds nothing to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task
from redis import Redis

from tasks import runtime
from tasks.campaigns import dispatch_batches, send_campaign_batch, start_campaign
from tasks.mail import deliver_message
from tasks.otp import send_code
from tasks.stores.campaigns import CampaignStore
from tasks.stores.ledger import UNSETTLED, DeliveryLedger
from tasks.stores.messages import MessageStore
from tasks.stores.otp import OTPStore
from tasks.stores.watch import Watchlist
from tasks.stores.webhooks import DISPATCH_PENDING, EventOutbox
from tasks.webhooks import dispatch_events

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Reconciled:
    """What one pass found and enqueued again."""

    batches: int = 0  # campaign batches re-enqueued
    recipients: int = 0  # stuck or overdue campaign recipients given a batch of their own
    deliveries: dict[str, int] = field(default_factory=dict)  # by kind

    def add(self, kind: str) -> None:
        self.deliveries[kind] = self.deliveries.get(kind, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.batches or self.recipients or self.deliveries)


@shared_task(name="postroom.reconcile", ignore_result=True)
def reconcile() -> None:
    """One pass over running campaigns and the watch list."""
    found = Reconciler(runtime.redis_client(), grace=float(
        runtime.app_config()["RECONCILE_INTERVAL"])).run()
    if found:
        log.warning("reconciler re-enqueued work that had stopped moving: %s", found)


class Reconciler:
    """Finds stuck work in Redis; enqueues it again. *grace*: how long work may look idle."""

    def __init__(self, redis: Redis, *, grace: float) -> None:
        self.redis = redis
        self.grace = grace
        self.campaigns = CampaignStore(redis)
        self.watch = Watchlist(redis)

    def run(self, now: float | None = None) -> Reconciled:
        now = time.time() if now is None else now
        found = Reconciled()
        for campaign_id in self.campaigns.running():
            self._campaign(campaign_id, now, found)
        for kind, item_id in self.watch.overdue(now):
            self._watched(kind, item_id, now, found)
        if EventOutbox(self.redis).waiting() and not self.redis.exists(DISPATCH_PENDING):
            dispatch_events.delay()  # events whose dispatcher was lost
            found.add("events")
        return found

    # -- campaigns ----------------------------------------------------------------------------

    def _campaign(self, campaign_id: str, now: float, found: Reconciled) -> None:
        store = self.campaigns
        covered: list[tuple[int, int]] = []
        for slot, first, last in store.silent_batches(campaign_id,
                                                      dispatched_before=now - self.grace):
            store.mark_dispatched(campaign_id, slot, first, last)
            send_campaign_batch.delay(campaign_id, first, last, slot)
            covered.append((first, last))
            found.batches += 1
        ledger = store.ledger(campaign_id)
        stuck = sorted(set(ledger.orphaned()) | set(ledger.due_for_retry(now - self.grace)))
        stuck = [i for i in stuck if not any(a <= i <= b for a, b in covered)]
        size = int(runtime.app_config()["CAMPAIGN_BATCH_SIZE"])
        for first, last in _spans(stuck, size):
            slot = store.rescue_batch(campaign_id, first, last)
            send_campaign_batch.delay(campaign_id, first, last, slot)
        found.recipients += len(stuck)
        dispatch_batches(campaign_id)

    # -- the watch list -----------------------------------------------------------------------

    def _watched(self, kind: str, item_id: str, now: float, found: Reconciled) -> None:
        task: Any
        if kind == "campaign":
            if self.campaigns.status(item_id) != "queued":
                self.watch.done(kind, item_id)
                return
            task = start_campaign
        else:
            ledger = self._ledger(kind, item_id)
            if ledger is None or not UNSETTLED.intersection(
                    status for status, n in ledger.counts().items() if n):
                self.watch.done(kind, item_id)
                return
            if not self._claimable(ledger, now):
                later = ledger.next_retry()
                self.watch.expect(kind, item_id, max(later or 0.0, now) + self.grace)
                return
            task = deliver_message if kind == "message" else send_code
        self.watch.expect(kind, item_id, now + 2 * self.grace)  # before: the task may clear it
        task.delay(item_id)
        found.add(kind)

    def _ledger(self, kind: str, item_id: str) -> DeliveryLedger | None:
        if kind == "message":
            messages = MessageStore(self.redis)
            return messages.ledger(item_id) if messages.get(item_id) is not None else None
        if kind == "otp":
            otp = OTPStore.from_config(self.redis, runtime.app_config())
            return otp.ledger(item_id) if otp.get(item_id) is not None else None
        log.warning("unknown kind %r on the watch list: %s", kind, item_id)
        return None

    @staticmethod
    def _claimable(ledger: DeliveryLedger, now: float) -> bool:
        """Anything a task would send now: queued, deferred and due, or orphaned."""
        counts = ledger.counts()
        return bool(counts["queued"] or ledger.due_for_retry(now, limit=1)
                    or (counts["sending"] and ledger.orphaned(limit=100)))


def _spans(indices: list[int], size: int) -> Iterator[tuple[int, int]]:
    """Runs of at most *size* recipients, as ``(first, last)``."""
    for start in range(0, len(indices), size):
        part = indices[start:start + size]
        yield part[0], part[-1]
