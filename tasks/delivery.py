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

import celery

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
    """How long a claim lasts: time for a session to open (connect, greeting, EHLO,
    STARTTLS, AUTH) and a transaction to run, each reply waiting up to *timeout*.
    Waits for the rate limit or a session slot happen before the claim, not in it."""
    return max(10.0, timeout * 12)


@dataclass(slots=True)
class _Unrecorded:
    """A message the server has answered whose outcomes are not in the ledger yet."""

    claimed: list[RecipientRecord]
    outcomes: list[DeliveryOutcome]

    def rows(self) -> list[tuple[int, str, int | None, str | None]]:
        return [(r.index, o.status, o.smtp_code, o.error)
                for r, o in zip(self.claimed, self.outcomes, strict=True)]


def run_batch(ledger: DeliveryLedger, envelopes: Iterable[Envelope],
              connection: BatchConnection, composer: Composer, *, token: str,
              max_attempts: int, pace: Callable[[], None] | None = None,
              after_send: Callable[[int], None] | None = None) -> BatchReport:
    """Send every envelope whose recipients can be claimed; record every outcome.

    Each message's recipients are claimed just before it is built and sent, and
    its outcomes are recorded in the same Redis call that claims the next
    message's recipients, so a message costs one round trip to Redis. *pace*,
    when given, is called before each claim and blocks as long as a shared rate
    limit (``MAIL_RATE_LIMIT``) requires; the outcomes of the message before are
    recorded first, so nothing waits unrecorded.
    """
    report = BatchReport()
    lease = lease_for(connection.settings.timeout)
    unrecorded: _Unrecorded | None = None

    def record(sent: _Unrecorded, settled: list[str]) -> None:
        for status in settled:
            report.add(status)
        if after_send is not None:
            after_send(len(sent.claimed))

    try:
        for envelope in envelopes:
            if unrecorded is not None and (pace is not None or connection.may_wait()):
                record(unrecorded, ledger.finish(token, unrecorded.rows(),
                                                 max_attempts=max_attempts))
                unrecorded = None
            if pace is not None:
                pace()
            connection.reserve()
            if unrecorded is None:
                claim = ledger.claim(envelope.indices, token, lease)
            else:
                sent, unrecorded = unrecorded, None
                settled, claim = ledger.finish_and_claim(token, sent.rows(), envelope.indices,
                                                         lease, max_attempts=max_attempts)
                record(sent, settled)
            if claim.busy_until is not None:
                report.busy_until = max(report.busy_until or 0.0, claim.busy_until)
            if claim.claimed:
                unrecorded = _Unrecorded(claim.claimed,
                                         _send(envelope, claim.claimed, connection, composer))
    finally:
        if unrecorded is not None:
            record(unrecorded, ledger.finish(token, unrecorded.rows(),
                                             max_attempts=max_attempts))
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


def visibility_timeout() -> float | None:
    """The broker's visibility timeout (Redis), from the current Celery app's settings."""
    options = celery.current_app.conf.broker_transport_options or {}
    value = options.get("visibility_timeout")
    return float(value) if value else None


def retry_countdown(report: BatchReport, policy: RetryPolicy, attempt: int,
                    *, now: float | None = None, ceiling: float | None = None) -> float | None:
    """Seconds until this batch should run again, or ``None`` when nothing is left.

    Never more than half the broker's visibility timeout (or *ceiling*): a
    longer ETA on Redis would be redelivered while it waits.
    """
    waits: list[float] = []
    if report.deferred:
        waits.append(policy.countdown(attempt))
    if report.busy_until is not None:
        current = time.time() if now is None else now
        waits.append(max(1.0, report.busy_until - current + 1.0))
    if not waits:
        return None
    if ceiling is None:
        timeout = visibility_timeout()
        ceiling = timeout / 2 if timeout else None
    return min(min(waits), ceiling) if ceiling else min(waits)
