"""The delivery service: claim recipients, build, send, record — for one batch.

Tasks call :func:`run_batch` with a ledger, the envelopes to send and an open
:class:`~tasks.engine.session.BatchConnection`. Each envelope's recipients are
claimed atomically just before it is sent and settled right after the server
answers, so a batch delivered twice sends nothing twice and a worker that dies
can have duplicated at most the message it had in flight.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tasks.engine.compose import Composer, Draft
from tasks.engine.errors import InvalidMessageError
from tasks.engine.outcome import DeliveryOutcome
from tasks.engine.session import BatchConnection
from tasks.stores.ledger import DeliveryLedger, RecipientRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to send: the ledger recipients it goes to, and how to draft it."""

    indices: list[int]
    draft_for: Callable[[list[RecipientRecord]], Draft]


@dataclass(slots=True)
class BatchReport:
    """What one run of a batch did."""

    counts: dict[str, int] = field(default_factory=dict)
    busy_until: float | None = None  # another worker holds some recipients until then

    def add(self, status: str, n: int = 1) -> None:
        self.counts[status] = self.counts.get(status, 0) + n

    @property
    def deferred(self) -> int:
        return self.counts.get("deferred", 0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by the broker's visibility timeout."""

    max_attempts: int = 8
    base: float = 30.0
    cap: float = 1800.0

    def countdown(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(attempt - 1, 0))
        return (rng or random).uniform(ceiling / 2, ceiling)


def lease_for(timeout: float) -> float:
    """How long a claim lasts: long enough for connect, TLS, AUTH and DATA to time out."""
    return max(60.0, timeout * 6)


def run_batch(ledger: DeliveryLedger, envelopes: Iterable[Envelope],
              connection: BatchConnection, composer: Composer, *, token: str,
              max_attempts: int, pace: Callable[[], None] | None = None,
              after_send: Callable[[int], None] | None = None) -> BatchReport:
    """Send every envelope whose recipients can be claimed; record every outcome.

    *pace*, when given, is called before each message goes out and blocks as long
    as a shared rate limit (``MAIL_RATE_LIMIT``) requires.
    """
    report = BatchReport()
    lease = lease_for(connection.settings.timeout)
    for envelope in envelopes:
        claim = ledger.claim(envelope.indices, token, lease)
        if claim.busy_until is not None:
            report.busy_until = max(report.busy_until or 0.0, claim.busy_until)
        if not claim.claimed:
            continue
        if pace is not None:
            pace()
        outcomes = _send(envelope, claim.claimed, connection, composer)
        settled = ledger.finish(token, ((r.index, o.status, o.smtp_code, o.error)
                                        for r, o in zip(claim.claimed, outcomes, strict=True)),
                                max_attempts=max_attempts)
        for status in settled:
            report.add(status)
        if after_send is not None:
            after_send(len(claim.claimed))
    return report


def _send(envelope: Envelope, claimed: list[RecipientRecord], connection: BatchConnection,
          composer: Composer) -> list[DeliveryOutcome]:
    try:
        message = composer.compose(envelope.draft_for(claimed))
    except InvalidMessageError as err:
        log.warning("message for %d recipient(s) cannot be built: %s", len(claimed), err)
        return [DeliveryOutcome("failed", None, str(err))] * len(claimed)
    emails = [record.email for record in claimed]
    by_email = connection.send_data(message.envelope_sender, emails, message.data)
    return [by_email[email] for email in emails]


def retry_countdown(report: BatchReport, policy: RetryPolicy, attempt: int,
                    *, now: float | None = None) -> float | None:
    """Seconds until this batch should run again, or ``None`` when nothing is left."""
    waits: list[float] = []
    if report.deferred:
        waits.append(policy.countdown(attempt))
    if report.busy_until is not None:
        waits.append(max(1.0, report.busy_until - (now or time.time()) + 1.0))
    return min(waits) if waits else None
