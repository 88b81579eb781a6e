"""The delivery service: claim recipients, build, send, record — for one batch.

Tasks call :func:`run_batch` with a ledger, the outgoing messages to send and an open
:class:`~tasks.delivery.engine.session.BatchConnection`. One loop serves every kind of
batch, with or without shared limits:

1. take the batch's claim lease (:class:`~tasks.delivery.leases.ClaimLease`), so
   its claims stay good exactly as long as this run is alive, and carry the
   run's fencing token in every ledger script;
2. claim the recipients of the next few outgoing messages in one Redis call, and drop
   those on the suppression list;
3. for each outgoing message: build the message (one ahead of the one being sent, so
   the session can send its commands with the previous message's content),
   make sure the lease is still this run's, wait for the rate limit, send it on
   the batch's connection, and write its outcomes to Redis without waiting for
   the reply (:class:`~tasks.delivery.ledger_stream.LedgerStream`);
4. give back whatever was claimed and not sent when the batch stops early.

A batch delivered twice sends nothing twice; a worker that dies, or a run cut
off from Redis until another took its lease over, can have duplicated at most
the message it had in flight: it stops before its next one, and whatever it
still tries to record or give back is refused.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from redis.exceptions import RedisError

from tasks.delivery.engine.compose import ComposedMessage, Composer, Draft
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.outcome import DeliveryOutcome
from tasks.delivery.engine.session import BatchConnection
from tasks.delivery.engine.transaction import Upcoming
from tasks.delivery.leases import ClaimLease, LeaseBusy
from tasks.delivery.ledger import DeliveryLedger, Outcome, RecipientRecord
from tasks.delivery.ledger_stream import LedgerStream
from tasks.shared.backoff import backoff, within_visibility
from tasks.vocabulary import DELIVERY_OUTCOMES, Status

log = logging.getLogger(__name__)

CLAIM_AHEAD = 32  # outgoing messages claimed in one Redis call
# the outcomes a batch summary always shows, in its order
SUMMED = (Status.SENT, Status.DEFERRED, Status.FAILED, Status.SUPPRESSED)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: the ledger recipients it goes to, and how to draft it."""

    indices: list[int]
    draft_for: Callable[[list[RecipientRecord]], Draft]


@dataclass(slots=True)
class BatchReport:
    """What one run of a batch did."""

    counts: dict[str, int] = field(default_factory=dict)
    busy_until: float | None = None  # another live run holds some recipients until then
    next_retry: float | None = None  # the earliest retry time of what this run deferred
    lost: int = 0  # claims another run took over before this one recorded them
    fenced: bool = False  # this run lost its lease to another run and stopped
    lease_busy: bool = False  # another run held the batch's lease: this one did nothing
    parked: float | None = None  # every relay down: parked, to be looked at by then

    def add(self, status: str, n: int = 1) -> None:
        self.counts[status] = self.counts.get(status, 0) + n

    def busy(self, until: float | None) -> None:
        if until is not None:
            self.busy_until = max(self.busy_until or 0.0, until)

    @property
    def deferred(self) -> int:
        return self.counts.get(Status.DEFERRED, 0)

    def summary(self) -> dict[str, int]:
        """What the run did, as a task result (Flower shows it): recipient counts by outcome,
        never an address."""
        found: dict[str, int] = dict.fromkeys(SUMMED, 0)
        found.update({status: int(n) for status, n in self.counts.items()})
        if self.lost:
            found["lost"] = self.lost
        return found

    def described(self) -> str:
        """``48 sent, 1 deferred, 1 failed`` (and any other outcome it had): the batch's
        one log line."""
        return ", ".join(f"{n} {status}" for status, n in self.summary().items()
                         if n or status in DELIVERY_OUTCOMES)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, within an attempt limit and a deadline."""

    max_attempts: int = 8
    base: float = 30.0
    cap: float = 1800.0
    max_age: float | None = None  # seconds from a delivery's creation to its deadline

    def countdown(self, attempt: int, rng: random.Random | None = None) -> float:
        return backoff(attempt, base=self.base, cap=self.cap, rng=rng)

    def deadline(self, created_at: float | None) -> float | None:
        if self.max_age is None or created_at is None:
            return None
        return created_at + self.max_age


@dataclass(frozen=True, slots=True)
class MessageFate:
    """One message's fate: what was built (``None`` when it was not: it could not be, or
    its recipients are on the suppression list), to whom, what each recipient's outcome
    was and how long the SMTP exchange took."""

    draft: Draft | None
    message: ComposedMessage | None
    recipients: list[RecipientRecord]
    outcomes: list[DeliveryOutcome]
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a batch runs beyond what it sends."""

    token: str  # the same for every run of one batch (a redelivered task, a retry)
    policy: RetryPolicy = RetryPolicy()
    created_at: float | None = None  # of the delivery, for the policy's deadline
    lease: float = 10.0  # seconds a claim outlives the last renewal of its run
    suppressed: Callable[[list[str]], list[bool]] | None = None  # the suppression list
    should_stop: Callable[[], bool] | None = None  # paused or cancelled: stop before a message
    # whether the message about to go is the run's last (its time slice is over): nothing is
    # sent ahead of the next one, so the session ends between transactions and can be kept
    last_call: Callable[[], bool] | None = None
    observe: Callable[[MessageFate], None] | None = None  # each message's fate, as it is known
    # each message's fate once the ledger has recorded it, with the status the ledger set
    # per recipient (a deferral past the attempts or the deadline is failed there) or
    # ``lost:<n>``/``fenced:<n>`` when this run's outcome was not recorded
    recorded: Callable[[MessageFate, list[str]], None] | None = None


def run_batch(ledger: DeliveryLedger, outgoing: Iterable[Outgoing],
              connection: BatchConnection, composer: Composer,
              options: BatchOptions) -> BatchReport:
    """Send every outgoing message whose recipients can be claimed; record every outcome."""
    report = BatchReport()
    try:
        lease = ClaimLease(ledger.redis, options.token, options.lease).__enter__()
    except LeaseBusy as busy:
        report.busy(busy.until)
        report.lease_busy = True
        return report
    try:
        with LedgerStream(ledger) as stream:
            _Run(stream, connection, composer, options, report, lease).deliver(outgoing)
    finally:
        lease.__exit__(None, None, None)
    return report


class _Run:
    """One run of :func:`run_batch`: the loop and what it has claimed."""

    def __init__(self, stream: LedgerStream, connection: BatchConnection, composer: Composer,
                 options: BatchOptions, report: BatchReport, lease: ClaimLease) -> None:
        self.stream = stream
        self.lease = lease
        self.token, self.run = options.token, lease.run
        self.connection = connection
        self.composer = composer
        self.options = options
        self.report = report
        self.deadline = options.policy.deadline(options.created_at)
        self.held: dict[int, RecipientRecord] = {}  # claimed, not yet sent

    def deliver(self, outgoing: Iterable[Outgoing]) -> None:
        """Build each message one step ahead of sending it, so the session can send the
        next message's commands with this one's content."""
        built: _Built | None = None
        try:
            for chunk in _chunks(iter(outgoing), CLAIM_AHEAD):
                if not self._claim(chunk):
                    return
                for item in chunk:
                    claimed = [self.held[i] for i in item.indices if i in self.held]
                    if not claimed:
                        continue
                    following = _build(item, claimed, self.composer)
                    if built is not None and not self._send(built, following):
                        return
                    built = following
            if built is not None:
                self._send(built, None)
        finally:
            self._give_back()

    def _send(self, built: _Built, following: _Built | None) -> bool:
        """Send *built* (or record why it cannot be); ``False`` when the batch must stop."""
        if self.options.should_stop is not None and self.options.should_stop():
            return False
        if built.message is None:
            self._record(built.claimed, built.failure, built)
            return True
        self.connection.wait_turn()  # the relay's pace, per MAIL FROM (tasks.delivery.pacing)
        self.stream.settle()  # a refused outcome says the lease was taken over
        if not self.lease.usable():  # taken over, or not renewed in time: stop sending
            self._stop_fenced()
            return False
        last = (following is not None and self.options.last_call is not None
                and self.options.last_call())
        upcoming = None
        if not last and following is not None and following.message is not None:
            upcoming = Upcoming(following.message.envelope_sender,
                                tuple(following.emails), len(following.message.data))
        started = time.perf_counter()
        by_email = self.connection.send_data(built.message.envelope_sender, built.emails,
                                             built.message.data, upcoming=upcoming)
        self._record(built.claimed, [by_email[email] for email in built.emails], built,
                     time.perf_counter() - started)
        return not last

    def _claim(self, chunk: list[Outgoing]) -> bool:
        """Claim the chunk's recipients; ``False`` when this run no longer holds the lease."""
        claim = self.stream.claim([i for e in chunk for i in e.indices], self.token, self.run)
        if claim.fenced:
            self.lease.fenced()
            self._stop_fenced()
            return False
        self.report.busy(claim.busy_until)
        claimed = claim.claimed
        if self.options.suppressed is not None and claimed:
            flags = self.options.suppressed([r.email for r in claimed])
            barred = [r for r, flag in zip(claimed, flags, strict=True) if flag]
            if barred:
                self._record(barred, [DeliveryOutcome(Status.SUPPRESSED, None,
                                                      "on the suppression list")] * len(barred))
                claimed = [r for r, flag in zip(claimed, flags, strict=True) if not flag]
        self.held.update((r.index, r) for r in claimed)
        return True

    def _stop_fenced(self) -> None:
        """The lease is another run's (or may be): what this run holds is that run's now."""
        self.report.fenced = True
        self.held = {}  # never handed back: the run holding the lease may be sending them

    def _record(self, claimed: list[RecipientRecord], outcomes: list[DeliveryOutcome],
                built: _Built | None = None, seconds: float = 0.0) -> None:
        policy = self.options.policy
        now = time.time()
        rows = [Outcome(r.index, o.status, o.smtp_code, o.error, counted=o.reached,
                        retry_at=now + policy.countdown(r.deferrals + 1)
                        if o.status == Status.DEFERRED else 0.0)
                for r, o in zip(claimed, outcomes, strict=True)]
        for r in claimed:
            self.held.pop(r.index, None)
        retry = min((row.retry_at for row in rows if row.status == Status.DEFERRED), default=None)
        if retry is not None:
            self.report.next_retry = min(self.report.next_retry or retry, retry)
        fate = MessageFate(built.draft if built else None,
                                built.message if built else None, claimed, outcomes, seconds)
        self.stream.finish(self.token, self.run, rows, max_attempts=policy.max_attempts,
                           deadline=self.deadline,
                           then=lambda statuses: self._settled(statuses, fate))
        if self.options.observe is not None:
            self.options.observe(fate)

    def _settled(self, statuses: list[str], fate: MessageFate) -> None:
        for status in statuses:
            if status.startswith("fenced:"):
                self.lease.fenced()
                self.report.fenced = True
                self.report.lost += 1
                log.warning("outcome for recipient %s of %s refused: another run holds the "
                            "lease", status[7:], self.stream.ledger.delivery_id)
            elif status.startswith("lost:"):
                self.report.lost += 1
                log.warning("claim on recipient %s of %s was taken over before its outcome "
                            "was recorded", status[5:], self.stream.ledger.delivery_id)
            else:
                self.report.add(status)
        if self.options.recorded is not None:
            self.options.recorded(fate, statuses)

    def _give_back(self) -> None:
        if not self.held:
            return
        indices, self.held = sorted(self.held), {}
        try:
            self.stream.drain()
            if self.stream.ledger.release(self.token, self.run, indices) < 0:
                self.lease.fenced()
                self.report.fenced = True
        except (RedisError, OSError) as err:  # the lease runs out; a later run takes them
            log.warning("could not give back %d claimed recipient(s) of %s: %s",
                        len(indices), self.stream.ledger.delivery_id, err)


def _chunks(outgoing: Iterator[Outgoing], size: int) -> Iterator[list[Outgoing]]:
    while chunk := list(islice(outgoing, size)):
        yield chunk


@dataclass(slots=True)
class _Built:
    """A claimed outgoing message, built: its message, or the reason it cannot be built."""

    claimed: list[RecipientRecord]
    emails: list[str]
    draft: Draft | None
    message: ComposedMessage | None
    failure: list[DeliveryOutcome]


def _build(item: Outgoing, claimed: list[RecipientRecord], composer: Composer) -> _Built:
    emails = [record.email for record in claimed]
    draft: Draft | None = None
    try:
        draft = item.draft_for(claimed)
        return _Built(claimed, emails, draft, composer.compose(draft), [])
    except InvalidMessageError as err:
        log.warning("message for %d recipient(s) cannot be built: %s", len(claimed), err)
        return _Built(claimed, emails, draft, None, [DeliveryOutcome(Status.FAILED, None, str(err))]
                      * len(claimed))


def retry_countdown(report: BatchReport, *, now: float | None = None,
                    ceiling: float | None = None) -> float | None:
    """Seconds until this batch should run again, or ``None`` when nothing is left.

    Never more than half the broker's visibility timeout (or *ceiling*): a
    longer ETA on Redis would be redelivered while it waits.
    """
    current = time.time() if now is None else now
    waits = [max(0.1, when - current + 0.1)
             for when in (report.next_retry, report.busy_until) if when is not None]
    if not waits:
        return None
    return within_visibility(min(waits), ceiling)
