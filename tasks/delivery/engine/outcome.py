"""What an SMTP reply means, and what happened to one recipient of one transaction.

:func:`meaning` is the one reply table of the engine (RFC 5321 .4.2.5, .4.5.3.1.10,
RFC 3463 status codes). Each row says what a reply at one stage of the session
does to the recipients it concerns and to the session:

===========  ==========================================  =====================================
stage        reply                                       meaning
===========  ==========================================  =====================================
any          421                                         ``end_session``: the session ends; no
                                                         recipient is charged an attempt
greeting     4xx / 5xx                                   ``stop_relay``: no session; the batch
                                                         is deferred, no attempt used
auth         535, 534, 454                               ``credentials``: the relay's breaker
                                                         opens; the batch is deferred
mail         4xx                                         ``stop_relay``: a relay-wide refusal;
                                                         the session ends, the batch is
                                                         deferred, no attempt used
mail         5xx                                         ``failed``: the message's recipients
                                                         fail with the server's text
rcpt         452 with 4.5.3 / "too many recipients"      ``next_transaction``: the recipient
                                                         goes in the next transaction at once
rcpt, data,  2xx / 4xx / 5xx                             ``sent`` / ``deferred`` (one attempt) /
dot                                                      ``failed``
===========  ==========================================  =====================================

Whatever the row, a *throttling* reply (421/450/451/452/454 that speaks of a rate,
"too much mail", throttling, or has an enhanced code 4.7.x) also lowers the relay's
send rate (:mod:`tasks.delivery.pacing`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tasks.vocabulary import Status

OutcomeStatus = Status  # sent, deferred, failed or suppressed
Stage = Literal["greeting", "auth", "mail", "rcpt", "data", "dot"]
# a recipient's outcome (a status), or what the reply does to the session or the relay
Action = Literal[Status.SENT, Status.DEFERRED, Status.FAILED, "next_transaction", "end_session",
                 "stop_relay", "credentials"]

THROTTLE_CODES = frozenset({421, 450, 451, 452, 454})
CREDENTIALS_REFUSED = frozenset({534, 535, 454})
_RATE_WORDING = re.compile(
    r"too\s+much\s+mail|too\s+many\s+(?:messages|mails|connections|sessions)|\brate\b"
    r"|rate[- ]limit|throttl|slow\s+down|quota", re.IGNORECASE)
_POLICY_STATUS = re.compile(r"(?<![\d.])4\.7\.\d{1,3}(?![\d.])")
_TOO_MANY_RECIPIENTS = re.compile(r"(?<![\d.])4\.5\.3(?![\d.])|too\s+many\s+recipients",
                                  re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ReplyMeaning:
    """What one reply does: to the recipients it concerns, and to the relay's pace."""

    action: Action
    throttle: bool = False  # lower the relay's send rate


def _text(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def is_throttle(code: int, text: bytes | str) -> bool:
    """A reply that says the relay wants mail more slowly."""
    if code not in THROTTLE_CODES:
        return False
    message = _text(text)
    if _TOO_MANY_RECIPIENTS.search(message):
        return False
    return bool(_RATE_WORDING.search(message) or _POLICY_STATUS.search(message))


def meaning(stage: Stage, code: int, text: bytes | str) -> ReplyMeaning:
    """The row of the reply table for *code* at *stage* (see the module docstring)."""
    throttle = is_throttle(code, text)
    if code == 421:
        return ReplyMeaning("end_session", throttle)
    if 200 <= code < 300 or stage == "data" and code == 354:
        return ReplyMeaning(Status.SENT)
    if stage == "greeting":
        return ReplyMeaning("stop_relay", throttle)
    if stage == "auth":
        return ReplyMeaning("credentials" if code in CREDENTIALS_REFUSED else "stop_relay",
                            throttle)
    if stage == "mail":
        return ReplyMeaning(Status.FAILED if 500 <= code < 600 else "stop_relay", throttle)
    if stage == "rcpt" and code == 452 and _TOO_MANY_RECIPIENTS.search(_text(text)):
        return ReplyMeaning("next_transaction")
    return ReplyMeaning(Status.FAILED if 500 <= code < 600 else Status.DEFERRED, throttle)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The result of one delivery attempt to one recipient."""

    status: OutcomeStatus
    smtp_code: int | None = None
    error: str | None = None
    reached: bool = True  # False: no reply named this recipient, so no attempt was used

    @property
    def counted(self) -> bool:
        """Whether this outcome uses one of the recipient's attempts."""
        return self.reached

    @classmethod
    def from_reply(cls, code: int, text: bytes | str) -> DeliveryOutcome:
        """Classify a reply naming a recipient: 2xx sent, 5xx failed, 4xx (or anything
        unexpected) deferred."""
        message = _text(text)
        if 200 <= code < 300:
            return cls(Status.SENT, code)
        if 500 <= code < 600:
            return cls(Status.FAILED, code, message)
        return cls(Status.DEFERRED, code, message)

    @classmethod
    def transport_failure(cls, reason: str) -> DeliveryOutcome:
        """A timeout or a dropped connection: nothing was confirmed, try again."""
        return cls(Status.DEFERRED, None, reason)

    @classmethod
    def unreached(cls, reason: str, smtp_code: int | None = None) -> DeliveryOutcome:
        """No session could be opened (refused, timed out, greeting or TLS refused)."""
        return cls(Status.DEFERRED, smtp_code, reason, reached=False)

    @classmethod
    def untried(cls, code: int, text: bytes | str) -> DeliveryOutcome:
        """Deferred by a reply about the session or the relay, not about this recipient
        (421, a 4xx to ``MAIL FROM``): no attempt used."""
        return cls(Status.DEFERRED, code, _text(text), reached=False)
