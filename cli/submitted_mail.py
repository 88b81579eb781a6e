"""A MIME message submitted over SMTP, read into what ``POST /api/messages`` takes.

The headers give ``sender`` (From), ``to``, ``cc``, ``reply_to`` and ``subject``; the
first text/plain and text/html parts that are not attachments give ``body`` and
``html``; every other leaf part (and any part with a file name or
``Content-Disposition: attachment``) is an attachment. The SMTP envelope decides who
gets the message: its recipients not named in To or Cc become ``bcc``, and a ``Bcc``
header is dropped. Other headers are carried as custom headers, except the ones
Postroom writes itself (Date, Message-ID, MIME and content headers, ...), transport
traces and signatures that would no longer match the rebuilt message.
An ``Idempotency-Key`` header works as the API's header of that name.
"""

from __future__ import annotations

import email
import email.policy
import mimetypes
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from typing import Any

from tasks.messages.fields import RESERVED_HEADERS, mailbox

Upload = tuple[str, str | None, bytes]  # file name, declared type, bytes
IDEMPOTENCY_HEADER = "idempotency-key"
# headers not carried: the envelope's, traces, and signatures of the message as submitted
DROPPED_HEADERS = RESERVED_HEADERS | frozenset({
    IDEMPOTENCY_HEADER, "delivered-to", "x-original-to", "dkim-signature",
    "authentication-results", "arc-seal", "arc-message-signature",
    "arc-authentication-results", "x-google-dkim-signature", "content-id",
    "content-description", "content-language", "content-location",
})


@dataclass(frozen=True, slots=True)
class SubmittedMail:
    """The fields for :class:`web.api.schemas.MessageIn`, its files and its key."""

    fields: dict[str, Any]
    uploads: list[Upload]
    idempotency_key: str | None


def read_submitted(raw: bytes, envelope_recipients: list[str]) -> SubmittedMail:
    """Read *raw* (as received after DATA) sent to *envelope_recipients*."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    to = _addresses(message, "to")
    cc = _addresses(message, "cc")
    named = {_address_key(value) for value in (*to, *cc)}
    bcc = [address for address in envelope_recipients if _address_key(address) not in named]
    fields: dict[str, Any] = {"to": to, "cc": cc, "bcc": bcc,
                              "reply_to": _addresses(message, "reply-to"),
                              "subject": str(message.get("subject", "")),
                              "headers": _custom_headers(message)}
    sender = _addresses(message, "from")
    if sender:
        fields["sender"] = sender[0] if len(sender) == 1 else sender
    body, html, uploads = _contents(message)
    if body is not None:
        fields["body"] = body
    if html is not None:
        fields["html"] = html
    key = message.get(IDEMPOTENCY_HEADER)
    return SubmittedMail(fields, uploads, None if key is None else str(key).strip())


def _address_key(value: str) -> str:
    try:
        return parseaddr(mailbox(value))[1].casefold()
    except ValueError:
        return parseaddr(value)[1].casefold()


def _addresses(message: Message, name: str) -> list[str]:
    values = [str(value) for value in message.get_all(name, [])]
    found: list[str] = []
    for display, address in getaddresses(values):
        if not address:
            continue  # an empty group ("undisclosed-recipients:;")
        try:
            found.append(str(Address(display_name=display, addr_spec=address)) if display
                         else address)
        except ValueError:
            found.append(address)  # the API's validation says what is wrong with it
    return found


def _custom_headers(message: Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        if name.lower() in DROPPED_HEADERS or name.lower().startswith("x-postroom-"):
            continue
        headers.setdefault(name, str(value))
    return headers


def _contents(message: Message) -> tuple[str | None, str | None, list[Upload]]:
    body: str | None = None
    html: str | None = None
    uploads: list[Upload] = []
    for part in _leaves(message):
        kind = part.get_content_type()
        if not _is_attachment(part) and kind == "text/plain" and body is None:
            body = _text(part)
        elif not _is_attachment(part) and kind == "text/html" and html is None:
            html = _text(part)
        else:  # an attached message goes as a file (.eml): message/* is not attachable
            declared = None if part.get_content_maintype() == "message" else kind
            uploads.append((_file_name(part, len(uploads) + 1), declared, _bytes(part)))
    return body, html, uploads


def _leaves(part: Message) -> list[Message]:
    """The parts that hold content, in order; an attached message is one leaf."""
    children = part.get_payload()
    if part.get_content_maintype() == "multipart" and isinstance(children, list):
        return [leaf for child in children if isinstance(child, Message)
                for leaf in _leaves(child)]
    return [part]


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment" or part.get_filename() is not None


def _text(part: Message) -> str:
    if isinstance(part, EmailMessage):
        content = part.get_content()
        if isinstance(content, str):
            return content
    return _bytes(part).decode(part.get_content_charset() or "utf-8", "replace")


def _bytes(part: Message) -> bytes:
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return bytes(inner[0].as_bytes())
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _file_name(part: Message, number: int) -> str:
    name = part.get_filename()
    if name:
        return str(name)
    extension = (".eml" if part.get_content_maintype() == "message"
                 else mimetypes.guess_extension(part.get_content_type()) or ".bin")
    return f"attachment-{number}{extension}"
