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
from tasks.stores.ledger_pipeline import LedgerPipeline

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


def lease_for(timeout: float, messages: int = 1) -> float:
    """How long a claim lasts: time for a session to open (connect, greeting, EHLO,
    STARTTLS, AUTH) and *messages* transactions to run, each reply waiting up to
    *timeout*. Waits for the rate limit or a session slot happen before the claim."""
    return max(10.0, timeout * 12 * messages)


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

    Without shared limits (no *pace*, no session gate) the Redis call for the
    next message is written before the current one is sent and read after, so
    Redis and the SMTP server work at the same time (see :class:`LedgerPipeline`).
    """
    report = BatchReport()
    unrecorded: _Unrecorded | None = None

    def record(sent: _Unrecorded, settled: list[str]) -> None:
        for status in settled:
            report.add(status)
        if after_send is not None:
            after_send(len(sent.claimed))

    if pace is None and connection.gate is None:
        _run_overlapped(ledger, envelopes, connection, composer, token=token,
                        max_attempts=max_attempts, report=report, record=record)
        return report
    lease = lease_for(connection.settings.timeout)
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


def _run_overlapped(ledger: DeliveryLedger, envelopes: Iterable[Envelope],
                    connection: BatchConnection, composer: Composer, *, token: str,
                    max_attempts: int, report: BatchReport,
                    record: Callable[[_Unrecorded, list[str]], None]) -> None:
    """run_batch with one ledger request in flight while each message is sent.

    The request written just before message k goes out records message k-1
    (answered a moment ago) and claims message k+1, so its claim lasts two
    messages' time.
    """
    lease = lease_for(connection.settings.timeout, messages=2)
    upcoming = iter(envelopes)
    unrecorded: _Unrecorded | None = None
    requested: tuple[Envelope, _Unrecorded | None] | None = None  # on the wire, not yet read

    def request(envelope: Envelope) -> None:
        nonlocal unrecorded, requested
        pipe.send(token, unrecorded.rows() if unrecorded else (), envelope.indices, lease,
                  max_attempts=max_attempts)
        requested, unrecorded = (envelope, unrecorded), None

    def flush() -> None:
        nonlocal unrecorded
        assert unrecorded is not None
        pipe.send(token, unrecorded.rows(), (), lease, max_attempts=max_attempts)
        sent, unrecorded = unrecorded, None
        record(sent, pipe.receive()[0])

    with LedgerPipeline(ledger) as pipe:
        try:
            while True:
                if requested is None:
                    first = next(upcoming, None)
                    if first is None:
                        break
                    request(first)
                assert requested is not None
                (envelope, recorded), requested = requested, None
                settled, claim = pipe.receive()
                if recorded is not None:
                    record(recorded, settled)
                if claim.busy_until is not None:
                    report.busy_until = max(report.busy_until or 0.0, claim.busy_until)
                if not claim.claimed:
                    continue
                following = next(upcoming, None)
                if following is not None:
                    request(following)
                elif unrecorded is not None:
                    flush()
                unrecorded = _Unrecorded(claim.claimed,
                                         _send(envelope, claim.claimed, connection, composer))
            if unrecorded is not None:
                flush()
        finally:
            if unrecorded is not None:  # an error came up: record what the server said
                ledger.finish(token, unrecorded.rows(), max_attempts=max_attempts)


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
