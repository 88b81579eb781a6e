"""What the API answers, as typed, frozen dataclasses (built from the JSON by ``from_json``)."""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass, field, fields
from typing import Any, Self


class _FromJSON:
    __slots__ = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Keep the fields this class knows; a field a newer Postroom adds is ignored."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach: its name, its bytes and (guessed from the name when absent) type."""

    filename: str
    content: bytes
    content_type: str | None = None

    def media_type(self) -> str:
        guessed = mimetypes.guess_type(self.filename)[0]
        return self.content_type or guessed or "application/octet-stream"

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"filename": self.filename,
                                 "content": base64.b64encode(self.content).decode("ascii")}
        if self.content_type:
            shown["content_type"] = self.content_type
        return shown


@dataclass(frozen=True, slots=True)
class Accepted(_FromJSON):
    """202: queued. ``status_url`` is the ``Location`` of its status; ``replayed`` is true
    when an Idempotency-Key matched an earlier request (nothing new was queued)."""

    id: str
    status: str
    status_url: str = ""
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Recipient(_FromJSON):
    email: str
    status: str
    attempts: int
    smtp_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """``GET /api/messages/{id}``: the status, and each recipient's."""

    id: str
    status: str
    created_at: float
    recipients: list[Recipient]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(id=data["id"], status=data["status"], created_at=data["created_at"],
                   recipients=[Recipient.from_json(r) for r in data.get("recipients", [])])


@dataclass(frozen=True, slots=True)
class CodeRequest(_FromJSON):
    """``GET /api/otp/{id}``: how the code's delivery and verification stand."""

    id: str
    status: str
    attempts_left: int
    expires_at: float
    updated_at: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedRow(_FromJSON):
    reason: str
    line: int | None = None
    index: int | None = None


@dataclass(frozen=True, slots=True)
class CampaignAccepted:
    """202: the campaign is stored; how its recipients were read."""

    id: str
    status: str
    total: int
    duplicates: int
    suppressed: int
    rejected: int
    rejected_rows: list[RejectedRow]
    status_url: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any], status_url: str = "") -> CampaignAccepted:
        return cls(id=data["id"], status=data["status"], total=data["total"],
                   duplicates=data["duplicates"], suppressed=data["suppressed"],
                   rejected=data["rejected"],
                   rejected_rows=[RejectedRow.from_json(r) for r in data["rejected_rows"]],
                   status_url=status_url)


@dataclass(frozen=True, slots=True)
class Campaign(_FromJSON):
    id: str
    name: str
    status: str
    total: int
    counts: dict[str, int]
    created_at: float
    rate: float
    send_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    imported: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CampaignPage:
    campaigns: list[Campaign]
    next_cursor: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CampaignPage:
        return cls([Campaign.from_json(c) for c in data["campaigns"]], data.get("next_cursor"))


@dataclass(frozen=True, slots=True)
class CampaignRecipient(_FromJSON):
    index: int
    email: str
    status: str
    attempts: int
    smtp_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CampaignRecipientPage:
    recipients: list[CampaignRecipient]
    next_cursor: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CampaignRecipientPage:
        return cls([CampaignRecipient.from_json(r) for r in data["recipients"]],
                   data.get("next_cursor"))


@dataclass(frozen=True, slots=True)
class CampaignState(_FromJSON):
    """The answer to start, pause, resume, cancel and retry-failed."""

    id: str
    status: str


@dataclass(frozen=True, slots=True)
class CampaignTest(_FromJSON):
    id: str
    status: str
    message_id: str
    to: list[str]


@dataclass(frozen=True, slots=True)
class Suppression(_FromJSON):
    email: str
    reason: str
    created_at: float | None = None
    campaign_id: str | None = None


@dataclass(frozen=True, slots=True)
class SuppressionPage:
    suppressions: list[Suppression]
    next_cursor: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuppressionPage:
        return cls([Suppression.from_json(s) for s in data["suppressions"]],
                   data.get("next_cursor"))


@dataclass(frozen=True, slots=True)
class Webhook(_FromJSON):
    id: str
    url: str
    events: list[str]
    created_at: float
    disabled: bool = False
    disabled_at: float | None = None


@dataclass(frozen=True, slots=True)
class WebhookCreated(_FromJSON):
    """A new endpoint; ``secret`` signs its events and is shown only in this answer."""

    id: str
    url: str
    events: list[str]
    secret: str = field(repr=False)
    created_at: float


@dataclass(frozen=True, slots=True)
class DeliveryAttempt(_FromJSON):
    event_id: str
    event_type: str
    attempt: int
    at: float
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: list[DeliveryAttempt]
    next_cursor: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryPage:
        return cls([DeliveryAttempt.from_json(d) for d in data["deliveries"]],
                   data.get("next_cursor"))


@dataclass(frozen=True, slots=True)
class BounceMatch(_FromJSON):
    email: str
    action: str
    message_id: str | None = None
    campaign_id: str | None = None
