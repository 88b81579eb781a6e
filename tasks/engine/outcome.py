"""What happened to one recipient of one SMTP transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutcomeStatus = Literal["sent", "deferred", "failed", "suppressed"]


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The result of one delivery attempt to one recipient."""

    status: OutcomeStatus
    smtp_code: int | None = None
    error: str | None = None
    reached: bool = True  # False: no session reached the relay, so no attempt was used

    @classmethod
    def from_reply(cls, code: int, text: bytes | str) -> DeliveryOutcome:
        """Classify an SMTP reply: 2xx sent, 5xx failed, 4xx (or anything unexpected) deferred."""
        message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        if 200 <= code < 300:
            return cls("sent", code)
        if 500 <= code < 600:
            return cls("failed", code, message)
        return cls("deferred", code, message)

    @classmethod
    def transport_failure(cls, reason: str) -> DeliveryOutcome:
        """A timeout or a dropped connection: nothing was confirmed, try again."""
        return cls("deferred", None, reason)

    @classmethod
    def unreached(cls, reason: str, smtp_code: int | None = None) -> DeliveryOutcome:
        """No session could be opened (refused, timed out, greeting or TLS refused)."""
        return cls("deferred", smtp_code, reason, reached=False)
