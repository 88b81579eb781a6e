"""Building RFC 5322 messages from drafts.

A :class:`Composer` lives for one batch: it encodes each attachment once and
reuses the encoded part for every message of the batch.
"""

from __future__ import annotations

import email.policy
import hashlib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from tasks.engine.errors import InvalidMessageError

POLICY = email.policy.SMTP  # CRLF line ends, long lines folded or encoded


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach, already read into memory."""

    filename: str
    content_type: str
    data: bytes
    disposition: str = "attachment"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything one message says, before it is encoded."""

    sender: str
    to: Sequence[str]
    subject: str
    text: str | None = None
    html: str | None = None
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    reply_to: Sequence[str] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    attachments: Sequence[Attachment] = ()

    @property
    def envelope_recipients(self) -> list[str]:
        """Every address that gets a copy, each once, in order."""
        seen: dict[str, None] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(parseaddr(address)[1] or address, None)
        return list(seen)

    @property
    def envelope_sender(self) -> str:
        return parseaddr(self.sender)[1] or self.sender


@dataclass(frozen=True, slots=True)
class ComposedMessage:
    """Bytes ready for DATA, and the envelope they go out in."""

    message_id: str
    envelope_sender: str
    envelope_recipients: list[str]
    data: bytes


class Composer:
    """Encodes drafts into messages; caches encoded attachments for its lifetime."""

    def __init__(self, *, message_id_domain: str | None = None, ascii_attachments: bool = False):
        self.message_id_domain = message_id_domain
        self.ascii_attachments = ascii_attachments
        self._encoded: dict[tuple[str, str, str, str], EmailMessage] = {}
        self.encodings = 0  # how many attachment parts this composer has encoded

    def compose(self, draft: Draft) -> ComposedMessage:
        """Build *draft* into bytes; raise :class:`InvalidMessageError` if it cannot be."""
        if not draft.envelope_recipients:
            raise InvalidMessageError("the message has no recipients")
        if not draft.sender:
            raise InvalidMessageError("the message has no sender and no default is configured")
        message_id = make_msgid(domain=self._domain_for(draft.envelope_sender))
        try:
            message = self._build(draft, message_id)
            data = message.as_bytes(policy=POLICY)
        except (ValueError, TypeError) as err:  # header injection, bad address syntax
            raise InvalidMessageError(f"the message cannot be built: {err}") from err
        return ComposedMessage(message_id, draft.envelope_sender, draft.envelope_recipients, data)

    def _domain_for(self, envelope_sender: str) -> str:
        if self.message_id_domain:
            return self.message_id_domain
        return envelope_sender.rpartition("@")[2] or "postroom.invalid"

    def _build(self, draft: Draft, message_id: str) -> EmailMessage:
        message = EmailMessage(policy=POLICY)
        message["Subject"] = draft.subject
        message["From"] = draft.sender
        message["To"] = ", ".join(draft.to)
        if draft.cc:
            message["Cc"] = ", ".join(draft.cc)
        if draft.reply_to:
            message["Reply-To"] = ", ".join(draft.reply_to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = message_id
        for name, value in draft.headers.items():
            message[name] = value
        self._set_body(message, draft)
        if draft.attachments:
            message.make_mixed()
            for attachment in draft.attachments:
                message.attach(self._encoded_part(attachment))
        return message

    @staticmethod
    def _set_body(message: EmailMessage, draft: Draft) -> None:
        if draft.text is not None:
            message.set_content(draft.text, charset="utf-8")
            if draft.html is not None:
                message.add_alternative(draft.html, subtype="html", charset="utf-8")
        elif draft.html is not None:
            message.set_content(draft.html, subtype="html", charset="utf-8")
        else:
            message.set_content("", charset="utf-8")

    def _encoded_part(self, attachment: Attachment) -> EmailMessage:
        key = (attachment.digest, attachment.filename, attachment.content_type,
               attachment.disposition)
        part = self._encoded.get(key)
        if part is None:
            part = EmailMessage(policy=POLICY)
            maintype, _, subtype = attachment.content_type.partition("/")
            part.set_content(attachment.data, maintype=maintype, subtype=subtype or "octet-stream",
                             disposition=attachment.disposition,
                             filename=self._filename(attachment.filename))
            self._encoded[key] = part
            self.encodings += 1
        return part

    def _filename(self, filename: str) -> str:
        if not self.ascii_attachments:
            return filename  # non-ASCII names are encoded per RFC 2231 by the policy
        folded = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
        return folded or "attachment"


def format_address(display_name: str, address: str) -> str:
    """``"Name <user@example.com>"`` with the display name quoted as needed."""
    username, _, domain = address.rpartition("@")
    return str(Address(display_name=display_name, username=username, domain=domain))
