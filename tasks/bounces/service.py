"""Applying bounces and complaints: find the recipient a report speaks of, mark it
``bounced`` and put the address on the suppression list.

Over SMTP (the listener: nobody is authenticated) a report is matched only by a signed token:
the VERP address it was sent to (``MAIL_RETURN_PATH``, see :mod:`tasks.delivery.engine.verp`),
or its ``Original-Envelope-Id`` (the ENVID the message was sent with: the same signed token),
and only for the recipient that token names (a token naming a whole message names a recipient
only when the message had one). Through ``POST /api/bounces`` (an API token) a signed token in
the report's headers, else the original message's Message-ID, which Postroom makes from what it
sent (``<campaign.recipient@domain>``, ``<message@domain>``, ``<message.recipient@domain>``),
may match too. Either way the report must name that recipient (Final-Recipient,
Original-Recipient, Original-Rcpt-To or the returned message's To): a report that names nobody
matches nobody. A failure (``Action: failed``, whatever the status class: 4.x.x means the relay
gave up) or a complaint marks the recipient ``bounced``, suppresses the address (``bounced`` or
``complained``) and counts in ``postroom_deliveries_total{outcome="bounced"}``; a delay
(``Action: delayed``) is only recorded. Reports that match nothing are kept for a week for an
operator to look at, as a summary of a few KB (:mod:`tasks.bounces.kept`), at most
:data:`KEEP_AT_MOST` of them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from tasks.bounces.kept import kept_summary
from tasks.bounces.reports import (
    MAX_DIAGNOSTIC,
    MalformedReport,
    Report,
    ReportedRecipient,
    read_report,
)
from tasks.bounces.store import SuppressionList, normalise
from tasks.campaigns import CampaignStore
from tasks.delivery.counters import DeliveryMetrics, MetricsTally
from tasks.delivery.engine.verp import BounceRef, read_verp
from tasks.delivery.ledger import DeliveryLedger
from tasks.messages import MessageStore
from tasks.shared.keys import key
from tasks.vocabulary import Kind, Status, SuppressionReason
from tasks.webhooks import Event
from tasks.webhooks.events import bounced_event
from tasks.webhooks.tasks import emit

log = logging.getLogger(__name__)

ENVELOPE_ID_HOME = "envid@envelope-id.invalid"  # ENVID tokens are read as VERP forms of this
OUR_MESSAGE_ID = re.compile(r"^<?([0-9a-f]{32})(?:\.(\d{1,9}))?@[^>]+>?$")
KEPT = 7 * 24 * 3600  # unmatched reports and delays, for an operator to look at
KEEP_AT_MOST = 500  # entries per list; each at most kept.MAX_ENTRY_BYTES (4 KB): 2 MB


@dataclass(frozen=True, slots=True)
class Matched:
    """A recipient a report was applied to."""

    email: str
    action: str
    message_id: str | None = None
    campaign_id: str | None = None

    def public(self) -> dict[str, str]:
        shown = {"email": self.email, "action": self.action}
        if self.message_id:
            shown["message_id"] = self.message_id
        if self.campaign_id:
            shown["campaign_id"] = self.campaign_id
        return shown


def bounce_desk(redis: Redis, config: Mapping[str, Any]) -> BounceDesk:
    """The desk as the app configures it (``MAIL_RETURN_PATH``, ``SECRET_KEY``)."""
    return BounceDesk(redis, return_path=config.get("MAIL_RETURN_PATH"),
                      secret_key=config.get("SECRET_KEY"))


class BounceDesk:
    """Takes raw bounce and complaint mail; applies what matches."""

    def __init__(self, redis: Redis, *, return_path: str | None = None,
                 secret_key: str | None = None) -> None:
        self.redis = redis
        self.return_path = return_path
        self.secret_key = secret_key
        self.campaigns = CampaignStore(redis)
        self.messages = MessageStore(redis)
        self.suppressions = SuppressionList(redis)

    def take(self, raw: bytes, envelope_to: Sequence[str] = (), *,
             authenticated: bool = False) -> list[Matched]:
        """Apply the report in *raw*; what it matched (empty: kept as unmatched).

        By SMTP (*authenticated* false) only a signed VERP token among *envelope_to*, the
        RCPT addresses, can match; ``POST /api/bounces`` (*authenticated*) may match by a
        token in the report's headers or by the original's Message-ID. Mail the email
        package cannot read is kept as a summary and raises :class:`MalformedReport`.
        """
        try:
            report = read_report(raw)
        except MalformedReport:
            self._keep("unmatched", kept_summary(raw, None, envelope_to))
            log.info("a report that cannot be read was kept for a week")
            raise
        addresses = list(envelope_to) + (report.return_paths if authenticated else [])
        ref = self._verp(addresses) or self._envelope_id(report)
        if ref is None and not authenticated:
            return self._unmatched(raw, report, envelope_to)
        bounced: list[Event] = []
        matched: list[Matched] = []
        seen: set[tuple[str, int]] = set()
        tally = MetricsTally()  # newly bounced recipients, for /metrics
        for reported in report.recipients:
            found = self._apply(report, reported, ref, bounced, seen, tally)
            if found is not None:
                matched.append(found)
        emit(self.redis, bounced)
        DeliveryMetrics(self.redis).write(tally)
        return matched or self._unmatched(raw, report, envelope_to)

    def _unmatched(self, raw: bytes, report: Report, envelope_to: Sequence[str]
                   ) -> list[Matched]:
        self._keep("unmatched", kept_summary(raw, report, envelope_to))
        log.info("a %s report matched no recipient; kept for a week", report.kind)
        return []

    def _verp(self, addresses: list[str]) -> BounceRef | None:
        """The first genuine VERP token among *addresses* (``MAIL_RETURN_PATH``)."""
        if not (self.return_path and self.secret_key):
            return None
        for address in addresses:
            ref = read_verp(address, self.return_path, self.secret_key)
            if ref is not None:
                return ref
        return None

    def _envelope_id(self, report: Report) -> BounceRef | None:
        """What the report's ``Original-Envelope-Id`` names: the VERP token, signed here."""
        token = report.envelope_id
        if not (token and self.secret_key) or "@" in token:
            return None
        local, _, domain = ENVELOPE_ID_HOME.partition("@")
        return read_verp(f"{local}+{token}@{domain}", ENVELOPE_ID_HOME, self.secret_key)

    def _apply(self, report: Report, reported: ReportedRecipient, ref: BounceRef | None,
               bounced: list[Event], seen: set[tuple[str, int]],
               tally: MetricsTally) -> Matched | None:
        target = self._target(report, reported.email, ref)
        if target is None:
            return None
        ledger, index, address, message_id, campaign_id = target
        if (ledger.delivery_id, index) in seen:
            return None  # one report, one change per recipient
        seen.add((ledger.delivery_id, index))
        if reported.permanent:
            complaint = reported.action == "complaint"
            reason = reported.diagnostic or (f"{reported.status} {reported.action}"
                                             if reported.status else reported.action)
            was = ledger.bounce(index, reported.smtp_code, reason)
            if was is None:
                return None
            if was != Status.BOUNCED:  # counted once, at its first bounce
                tally.outcome(Kind.CAMPAIGN if campaign_id else Kind.MESSAGE, Status.BOUNCED, None)
            why = SuppressionReason.COMPLAINED if complaint else SuppressionReason.BOUNCED
            self.suppressions.add(address, why, campaign_id=campaign_id)
            bounced.append(bounced_event(message_id, campaign_id, index, address,
                                         reported.smtp_code, reason))
            log.info("recipient %d of %s %s", index, ledger.delivery_id, why)
        elif reported.action == "delayed":
            self._keep("delays", json.dumps({"at": time.time(), "delivery":
                                             ledger.delivery_id, "recipient": index,
                                             "status": reported.status,
                                             "diagnostic": (reported.diagnostic or "")
                                             [:MAX_DIAGNOSTIC]}))
        else:
            return None
        return Matched(address, reported.action, message_id, campaign_id)

    def _target(self, report: Report, email: str, ref: BounceRef | None
                ) -> tuple[DeliveryLedger, int, str, str | None, str | None] | None:
        """The recipient a report speaks of: by its VERP or ENVID token, else by the
        original Message-ID; either way the report's recipient must be that recipient."""
        wanted = normalise(email) if email else None
        if not wanted:
            return None  # a report that names nobody changes nobody's mail
        if ref is not None:
            kind, item_id, index = ref.kind, ref.item_id, ref.index
        else:
            found = OUR_MESSAGE_ID.match(report.original_message_id or "")
            if found is None:
                return None
            item_id = found.group(1)
            index = int(found.group(2)) if found.group(2) is not None else None
            kind = Kind.CAMPAIGN if self.campaigns.get(item_id) is not None else Kind.MESSAGE
        if kind == Kind.CAMPAIGN:
            if index is None or self.campaigns.get(item_id) is None:
                return None
            ledger = self.campaigns.ledger(item_id)
            record = next(iter(ledger.get([index])), None)
            if record is None or normalise(record.email) != wanted:
                return None
            return ledger, record.index, record.email, None, item_id
        if self.messages.get(item_id) is None:
            return None
        ledger = self.messages.ledger(item_id)
        if index is not None:
            records = ledger.get([index])
        elif ref is not None:  # a token for the whole message names its only recipient
            records = ledger.get([0, 1])
            if len(records) != 1:
                return None
        else:
            records, _ = ledger.page(limit=10_000)
        for record in records:
            if normalise(record.email) == wanted:
                return ledger, record.index, record.email, item_id, None
        return None

    def _keep(self, what: str, entry: str) -> None:
        name = key("bounces", what)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(name, entry)
        pipe.ltrim(name, 0, KEEP_AT_MOST - 1)
        pipe.expire(name, KEPT)
        pipe.execute()
