"""Suppression by kind of mail: what a batch's ``BatchOptions(suppressed=...)`` checks.

- A hard bounce, a complaint or an operator's entry (``bounced``, ``complained``,
  ``manual``) stops every later message to the address: API messages, campaign
  recipients and one-time codes.
- An unsubscribe stops campaigns only: password resets and codes still arrive.

A recipient stopped this way is recorded ``suppressed`` by the batch; :class:`SuppressedNotes`
then writes why into its record (``on the suppression list (bounced)``), which the API and
the pages show. An operator lifts it with ``DELETE /api/suppressions/<email>``.
"""

from __future__ import annotations

import json
import logging

from redis import Redis
from redis.exceptions import WatchError

from tasks.bounces.store import SuppressionList, listed_error, normalise
from tasks.delivery.ledger import DeliveryLedger
from tasks.delivery.service import MessageFate
from tasks.vocabulary import Kind, Status, SuppressionReason

log = logging.getLogger(__name__)

MailKind = Kind
STOPS_EVERY_KIND = frozenset({SuppressionReason.BOUNCED, SuppressionReason.COMPLAINED,
                              SuppressionReason.MANUAL})


def stops(reason: str | None, kind: MailKind) -> bool:
    """Whether an address suppressed for *reason* may not receive mail of *kind*."""
    if reason is None:
        return False
    return kind == Kind.CAMPAIGN or reason in STOPS_EVERY_KIND


class SuppressionCheck:
    """``BatchOptions(suppressed=...)`` for one kind of mail; remembers each reason."""

    def __init__(self, suppressions: SuppressionList, kind: MailKind) -> None:
        self.suppressions = suppressions
        self.kind = kind
        self.reasons: dict[str, str] = {}

    def __call__(self, emails: list[str]) -> list[bool]:
        if not emails:
            return []
        flags = []
        for email, reason in zip(emails, self.suppressions.reasons(emails), strict=True):
            barred = stops(reason, self.kind)
            if barred and reason is not None:
                self.reasons[normalise(email)] = reason
            flags.append(barred)
        return flags

    def why(self, email: str) -> str | None:
        return self.reasons.get(normalise(email))


class SuppressedNotes:
    """A batch observer: into each barred recipient's record, why it was barred."""

    def __init__(self, ledger: DeliveryLedger, check: SuppressionCheck) -> None:
        self.ledger = ledger
        self.check = check

    def __call__(self, sent: MessageFate) -> None:
        if sent.message is not None:
            return
        for record, outcome in zip(sent.recipients, sent.outcomes, strict=True):
            reason = self.check.why(record.email)
            if outcome.status == Status.SUPPRESSED and reason:  # barred by this check
                note_error(self.ledger.redis, self.ledger.records_key, record.index,
                           Status.SUPPRESSED, listed_error(reason))
                log.info("recipient %d of %s not sent: suppressed (%s)", record.index,
                         self.ledger.delivery_id, reason)


def note_error(redis: Redis, records_key: str, index: int, status: str, error: str,
               *, tries: int = 5) -> bool:
    """Set the error text of recipient *index* if it is still in *status* (never over a
    state written since); ``False`` when it was not."""
    field = str(index)
    for _ in range(tries):
        with redis.pipeline() as pipe:
            try:
                pipe.watch(records_key)
                raw = pipe.hget(records_key, field)
                if raw is None:
                    return False
                data = json.loads(raw)
                if data.get("s") != status:
                    return False
                data["r"] = error
                pipe.multi()
                pipe.hset(records_key, field, json.dumps(data, separators=(",", ":"),
                                                         ensure_ascii=False))
                pipe.execute()
                return True
            except WatchError:
                continue
    return False


def suppression_check(redis: Redis, kind: MailKind) -> SuppressionCheck:
    return SuppressionCheck(SuppressionList(redis), kind)
