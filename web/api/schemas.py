"""Request and response schemas; they validate requests and describe the API."""

from __future__ import annotations

import base64
import binascii
import re
from email.utils import parseaddr
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from tasks.messages.fields import MAX_HEADER_LINE, RESERVED_HEADERS, header_safe, mailbox
from tasks.shared.attachments import content_type_for
from tasks.shared.errors import Invalid

HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII, no colon
MAX_RECIPIENTS = 100
MAX_ATTACHMENTS = 20


def file_name_checked(name: str) -> str:
    """An uploaded file's name, or :class:`Invalid` naming ``attachments`` when no header
    may carry it."""
    try:
        return header_safe(name)
    except ValueError as err:
        raise Invalid.of("attachments", f"{name[:80]!r}: {err}",
                         "an attachment's file name is not valid") from None


def header_text(value: Any) -> Any:
    """A header's text, refused by its length before it is searched for controls."""
    if isinstance(value, str):
        if len(value) > MAX_HEADER_LINE:
            raise ValueError(f"String should have at most {MAX_HEADER_LINE} characters")
        header_safe(value)
    return value


def _address_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Mailbox = Annotated[str, BeforeValidator(mailbox)]
MailboxList = Annotated[list[Mailbox], BeforeValidator(_address_list),
                        Field(max_length=MAX_RECIPIENTS)]
HeaderText = Annotated[str, BeforeValidator(header_text), Field(max_length=MAX_HEADER_LINE)]


class AttachmentIn(BaseModel):
    """A file sent inside JSON: its name, its bytes in base64, and optionally its type."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=1000)
    content: str = Field(description="the file's bytes, base64-encoded")
    content_type: str | None = Field(default=None, description="e.g. application/pdf; "
                                     "guessed from the file name when absent")

    @field_validator("filename")
    @classmethod
    def _file_name(cls, value: str) -> str:
        return header_safe(value)

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        compact = "".join(value.split())
        try:
            base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64 (RFC 4648)") from None
        return compact

    @field_validator("content_type")
    @classmethod
    def _attachable_type(cls, value: str | None) -> str | None:
        if value is not None:
            content_type_for("", value)  # raises ValueError with the reason
        return value

    def data(self) -> bytes:
        return base64.b64decode(self.content)


class MessageIn(BaseModel):
    """``POST /api/messages``: one message to one or more recipients."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    to: MailboxList = Field(min_length=1)
    cc: MailboxList = []
    bcc: MailboxList = []
    reply_to: MailboxList = []
    sender: Mailbox | None = None
    subject: HeaderText
    body: str | None = None
    html: str | None = None
    headers: dict[str, HeaderText] = {}
    attachments: list[AttachmentIn] = Field(default=[], max_length=MAX_ATTACHMENTS)

    @field_validator("headers")
    @classmethod
    def _custom_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by Postroom; use the matching field")
            longest_word = max(map(len, headers[name].split(" ")), default=0)
            if len(name) + 2 + longest_word > MAX_HEADER_LINE:
                raise ValueError(f"{name!r} has a word too long for one header line "
                                 f"({MAX_HEADER_LINE} characters with the name)")
        return headers

    @model_validator(mode="after")
    def _has_content(self) -> MessageIn:
        if self.body is None and self.html is None:
            raise ValueError("give body, html or both")
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
        return self

    def recipients(self) -> list[str]:
        """Envelope addresses, each once, in order (to, cc, bcc)."""
        seen: dict[str, None] = {}
        for value in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(parseaddr(value)[1], None)
        return list(seen)

    def stored_fields(self) -> dict[str, Any]:
        """The message as it is stored (its attachments apart: their bytes are stored first)."""
        return self.model_dump(exclude_none=True, exclude={"attachments"})


class Accepted(BaseModel):
    """202: the work is queued."""

    id: str
    status: str


class RecipientOut(BaseModel):
    email: str
    status: str
    attempts: int
    smtp_code: int | None = None
    error: str | None = None


class MessageOut(BaseModel):
    """``GET /api/messages/<id>``."""

    id: str
    status: str = Field(description="from the recipients (tasks.messages.store.message_status): "
                        "queued or sending while any is queued or sending, then deferred while "
                        "any is deferred, then sent, failed or partial")
    created_at: float
    recipients: list[RecipientOut]


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody
