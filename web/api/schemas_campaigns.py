"""Campaign request and response schemas (``/api/campaigns``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from web.api.schemas import MAX_ATTACHMENTS, AttachmentIn, HeaderText, Mailbox

MAX_JSON_RECIPIENTS = 10_000  # larger lists go as a CSV upload
SEND_AT_GRACE = 60.0  # seconds in the past still taken as "now" (clock skew, slow clients)


def parse_send_at(value: Any) -> float | None:
    """An ISO 8601 time (UTC if it names no zone) or epoch seconds; ``None`` for now."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 date-time or epoch seconds")
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        value = float(value)  # epoch seconds from a form field
    if isinstance(value, int | float):
        moment = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an ISO 8601 date-time, "
                             "e.g. 2030-01-31T09:00:00Z") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        moment = parsed.timestamp()
    else:
        raise ValueError("must be an ISO 8601 date-time or epoch seconds")
    now = time.time()
    if moment < now - SEND_AT_GRACE:
        raise ValueError("is in the past; leave it out to send now")
    return moment if moment > now else None


class CampaignFields(BaseModel):
    """What a campaign says: its name, templates, sender and when to send."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    subject: HeaderText = Field(min_length=1)
    body: str | None = None
    html: str | None = None
    sender: Mailbox | None = None
    send_at: float | str | None = Field(
        default=None, description="ISO 8601 (UTC unless a zone is given) or epoch seconds")
    attachments: list[AttachmentIn] = Field(
        default=[], max_length=MAX_ATTACHMENTS,
        description="JSON only; a multipart upload sends them as 'attachments' files")
    draft: bool = Field(default=False, description="store as a draft: nothing is sent until "
                        "POST /api/campaigns/{id}/start")

    @field_validator("draft", mode="before")
    @classmethod
    def _form_flag(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("true", "1", "on", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "off", "no"):
            return False
        return value

    @field_validator("send_at", mode="before")
    @classmethod
    def _send_at(cls, value: Any) -> float | None:
        return parse_send_at(value)

    @field_validator("body", "html", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _has_content(self) -> CampaignFields:
        if self.body is None and self.html is None:
            raise ValueError("give body, html or both")
        return self


class CampaignIn(CampaignFields):
    """``POST /api/campaigns`` as JSON (or multipart: these fields plus a CSV ``file``)."""

    recipients: list[Any] = Field(min_length=1, max_length=MAX_JSON_RECIPIENTS,
                                  description='[{"email": ..., "<variable>": ...}, ...]')


class RejectedRow(BaseModel):
    line: int | None = None
    index: int | None = None
    reason: str


class CampaignAccepted(BaseModel):
    """202: the campaign is stored and queued or scheduled."""

    id: str
    status: str
    total: int
    duplicates: int
    suppressed: int
    rejected: int
    rejected_rows: list[RejectedRow]


class CampaignOut(BaseModel):
    """``GET /api/campaigns/<id>``."""

    id: str
    name: str
    status: str = Field(description="draft, scheduled, queued, running, pausing (until no "
                        "batch is sending), paused, completed or cancelled")
    total: int
    counts: dict[str, int]
    send_at: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    rate: float = Field(description="messages per second over the last 10 seconds")
    imported: dict[str, Any] = {}


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]
    next_cursor: float | None = None


class CampaignRecipientOut(BaseModel):
    index: int
    email: str
    status: str
    attempts: int
    smtp_code: int | None = None
    error: str | None = None


class CampaignRecipients(BaseModel):
    recipients: list[CampaignRecipientOut]
    next_cursor: int | None = None


class CampaignTestIn(BaseModel):
    """``POST /api/campaigns/<id>/test``: where the first recipient's message goes as a test."""

    model_config = ConfigDict(extra="forbid")

    to: list[str] = Field(min_length=1, max_length=10,
                          description="1 to 10 addresses; the subject starts with [Test]")


class CampaignTestOut(BaseModel):
    """202: the test message is queued; the campaign stays a draft."""

    id: str
    status: str
    message_id: str = Field(description="the test message, as GET /api/messages/{id} shows it")
    to: list[str]


class CampaignState(BaseModel):
    """The reply to pause, resume, cancel and retry-failed."""

    id: str
    status: str
