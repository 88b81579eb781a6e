"""Building RFC 5322 messages from drafts.

A :class:`Composer` lives for one batch. What is the same for every message of
the batch is encoded once and kept as bytes: each attachment part, and every
header value seen before (``From``, ``Reply-To``, custom headers). Only what
differs per recipient is encoded per message, and the message is written
straight to bytes around a MIME skeleton fixed for the batch:

- text only: a single ``text/plain`` part, not multipart;
- text and HTML, or HTML alone (a text alternative is derived from it):
  ``multipart/alternative``;
- with attachments: ``multipart/mixed`` around the body.

Output is 7-bit clean with CRLF line ends: text is sent as-is when it is ASCII
with lines of at most 998 characters, otherwise quoted-printable (mostly
ASCII) or base64; attachments are base64 with RFC 2231 file names.

Domains in address headers go out as A-labels (IDNA: ``bücher.de`` becomes
``xn--bcher-kva.de``). An address whose local part is not ASCII cannot be
written any other way than in UTF-8, so its header is written in UTF-8 (RFC
6532), never as an encoded-word inside the address; such a message can only go
to a relay that offers SMTPUTF8 (:mod:`tasks.delivery.engine.transaction` checks).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import functools
import hashlib
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address, AddressHeader
from email.message import MIMEPart
from email.utils import formatdate, make_msgid, parseaddr

import idna

from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.plaintext import text_from_html

POLICY = email.policy.SMTP  # CRLF line ends, long lines folded or encoded
UTF8_POLICY = email.policy.SMTPUTF8  # for headers with non-ASCII local parts (RFC 6532)
MAX_LINE = 998  # RFC 5322 section 2.1.1
_FOLD_AT = 78
_CACHE_LIMIT = 4096

_HEADER_NAME = re.compile(r"[!-9;-~]+")
# C0 and C1 control characters (tab included) and the Unicode line and paragraph
# separators: none may appear in a header field, whatever a client sends.
HEADER_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_ONE_ADDRESS = rf"(?:{_ADDR}|{_ATOM}(?: {_ATOM})* <{_ADDR}>)"
BARE_ADDRESS = re.compile(_ADDR)  # user@example.com, nothing around it
_SIMPLE_ADDRESSES = re.compile(rf"{_ONE_ADDRESS}(?:, {_ONE_ADDRESS})*")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach, already read into memory.

    *sha256* may be given when it is known (the attachment store knows it), so
    the composer does not hash the bytes again.
    """

    filename: str
    content_type: str
    data: bytes
    disposition: str = "attachment"
    sha256: str | None = None

    @property
    def digest(self) -> str:
        return self.sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything one message says, before it is encoded.

    *message_id* (``<id@domain>``) keeps a message's identity across retries;
    without it each build gets a new one.
    """

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
    message_id: str | None = None
    return_path: str | None = None  # the envelope sender (a VERP address), when not From

    @property
    def envelope_recipients(self) -> list[str]:
        """Every address that gets a copy, each once, in order."""
        seen: dict[str, None] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(addr_spec(address), None)
        return list(seen)

    @property
    def envelope_sender(self) -> str:
        return addr_spec(self.sender)


def a_label_address(address: str) -> str:
    """``ada@xn--bcher-kva.de`` for ``ada@bücher.de``; :class:`ValueError` if it cannot be."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as err:
        raise ValueError(f"the domain of {address!r} has no A-label form: {err}") from None


def _a_label_mailbox(value: str) -> str:
    """``Name <ada@xn--bcher-kva.de>`` for ``Name <ada@bücher.de>``; ASCII values as they are."""
    if value.isascii():
        return value
    name, address = parseaddr(value)
    if not address:
        return value
    try:
        ascii_address = a_label_address(address)
    except ValueError as err:
        raise InvalidMessageError(str(err)) from None
    if not name:
        return ascii_address
    username, _, domain = ascii_address.rpartition("@")
    return str(Address(display_name=name, username=username, domain=domain))


def _address_list(values: Sequence[str]) -> str:
    return ", ".join(_a_label_mailbox(value) for value in values)


def addr_spec(address: str) -> str:
    """``user@example.com`` out of ``Name <user@example.com>`` (or a bare address)."""
    if BARE_ADDRESS.fullmatch(address):
        return address
    return _parsed_addr_spec(address)


@functools.lru_cache(maxsize=1024)
def _parsed_addr_spec(address: str) -> str:
    return parseaddr(address)[1] or address


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
        self.encodings = 0  # how many attachment parts this composer has encoded
        self._parts: dict[tuple[str, str, str, str], bytes] = {}
        self._digests: dict[int, tuple[bytes, str]] = {}
        self._headers: dict[tuple[str, str], bytes] = {}
        self._last: dict[str, tuple[str, bytes]] = {}  # each header's last value, encoded
        self._domains: dict[str, str] = {}  # envelope sender -> its Message-ID domain
        self._token = secrets.token_hex(12)
        self._mixed = f"=_m{self._token}"
        self._alternative = f"=_a{self._token}"
        self._date: tuple[int, bytes] = (0, b"")

    def compose(self, draft: Draft) -> ComposedMessage:
        """Build *draft* into bytes; raise :class:`InvalidMessageError` if it cannot be."""
        recipients = draft.envelope_recipients
        sender = draft.envelope_sender
        if not recipients:
            raise InvalidMessageError("the message has no recipients")
        if not draft.sender:
            raise InvalidMessageError("the message has no sender and no default is configured")
        message_id = draft.message_id or make_msgid(domain=self.domain_for(sender))
        if not (message_id.startswith("<") and message_id.endswith(">") and "@" in message_id):
            raise InvalidMessageError(f"Message-ID {message_id!r} is not <id@domain>")
        data = b"".join((self._head(draft, message_id), self._body(draft)))
        return ComposedMessage(message_id, draft.return_path or sender, recipients, data)

    def message_id_for(self, local_part: str, envelope_sender: str) -> str:
        """A Message-ID that stays the same for every build of one message (retries too)."""
        return f"<{local_part}@{self.domain_for(envelope_sender)}>"

    def domain_for(self, envelope_sender: str) -> str:
        """The right-hand side of Message-IDs (and list ids) for mail from *envelope_sender*."""
        if self.message_id_domain:
            return self.message_id_domain
        domain = self._domains.get(envelope_sender)
        if domain is None:  # a batch has one sender, or a few
            try:
                domain = a_label_address(envelope_sender).rpartition("@")[2] or "postroom.invalid"
            except ValueError:
                domain = "postroom.invalid"
            if len(self._domains) < _CACHE_LIMIT:
                self._domains[envelope_sender] = domain
        return domain

    # -- headers

    def _head(self, draft: Draft, message_id: str) -> bytes:
        header = self._header
        lines = [header("Subject", draft.subject), header("From", _address_list([draft.sender])),
                 header("To", _address_list(draft.to))]
        if draft.cc:
            lines.append(header("Cc", _address_list(draft.cc)))
        if draft.reply_to:
            lines.append(header("Reply-To", _address_list(draft.reply_to)))
        lines += [self._date_line(), header("Message-ID", message_id)]
        for name, value in draft.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise InvalidMessageError(f"{name!r} is not a valid header name")
            lines.append(header(name, value))
        lines.append(b"MIME-Version: 1.0\r\n")
        return b"".join(lines)

    def _date_line(self) -> bytes:
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, f"Date: {formatdate(second, usegmt=True)}\r\n".encode())
        return self._date[1]

    def _header(self, name: str, value: str) -> bytes:
        last = self._last.get(name)
        if last is not None and last[0] == value:  # From, List-Id...: the same every message
            return last[1]
        line = self._encoded_header(name, value)
        self._last[name] = (value, line)
        return line

    def _encoded_header(self, name: str, value: str) -> bytes:
        if HEADER_CONTROLS.search(value):
            raise InvalidMessageError(f"{name}: a header value must not contain control "
                                      "characters or line breaks")
        if (len(name) + len(value) + 2 <= _FOLD_AT and value.isascii() and value.isprintable()
                and (name.lower() not in _ADDRESS_HEADERS or _SIMPLE_ADDRESSES.fullmatch(value))):
            return f"{name}: {value}\r\n".encode("ascii")
        folded = self._headers.get((name, value))
        if folded is None:
            plain = (value.isascii() and value.isprintable()
                     and name.lower() not in _ADDRESS_HEADERS)
            folded = _fold_ascii(name, value) if plain else _fold(name, value)
            if len(self._headers) < _CACHE_LIMIT:
                self._headers[(name, value)] = folded
        return folded

    # -- body

    def _body(self, draft: Draft) -> bytes:
        text, html = draft.text, draft.html
        if html is not None and text is None:
            text = text_from_html(html)
        if html is None:
            body = self._text_part(text or "", "plain")
        else:
            body = _multipart("alternative", self._alternative, [
                self._text_part(text or "", "plain"), self._text_part(html, "html")])
        if not draft.attachments:
            return body
        return _multipart("mixed", self._mixed,
                          [body, *(self._encoded_part(a) for a in draft.attachments)])

    def _text_part(self, text: str, subtype: str) -> bytes:
        content, encoding = _encode_text(text, self._token)
        return b"".join((f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
                         f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode(), content))

    def _encoded_part(self, attachment: Attachment) -> bytes:
        key = (self._digest(attachment), attachment.filename, attachment.content_type,
               attachment.disposition)
        part = self._parts.get(key)
        if part is None:
            part = self._encode_attachment(attachment)
            self._parts[key] = part
            self.encodings += 1
        return part

    def _digest(self, attachment: Attachment) -> str:
        if attachment.sha256:
            return attachment.sha256
        known = self._digests.get(id(attachment.data))
        if known is None or known[0] is not attachment.data:
            known = (attachment.data, hashlib.sha256(attachment.data).hexdigest())
            self._digests[id(attachment.data)] = known
        return known[1]

    def _encode_attachment(self, attachment: Attachment) -> bytes:
        maintype, _, subtype = attachment.content_type.partition("/")
        if maintype in {"", "multipart", "message"} or not subtype:
            maintype, subtype = "application", "octet-stream"
        part = MIMEPart(policy=POLICY)
        try:
            part.set_content(attachment.data, maintype=maintype, subtype=subtype,
                             disposition=attachment.disposition,
                             filename=self._filename(attachment.filename))
            return part.as_bytes(policy=POLICY)
        except (ValueError, TypeError) as err:
            raise InvalidMessageError(f"attachment {attachment.filename!r}: {err}") from err

    def _filename(self, filename: str) -> str:
        if not self.ascii_attachments:
            return filename  # non-ASCII names are encoded per RFC 2231 by the policy
        folded = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
        return folded or "attachment"


def _fold_ascii(name: str, value: str) -> bytes:
    """An ASCII header folded at spaces only, never encoded.

    The standard library turns a word longer than a line (a URL in
    ``List-Unsubscribe``, a long token) into RFC 2047 encoded-words, which
    clients do not decode in such headers; RFC 5322 allows lines up to 998.
    """
    lines = [f"{name}:"]
    for word in value.split(" "):
        starts_line = lines[-1].strip() in ("", f"{name}:")
        if len(lines[-1]) + 1 + len(word) > _FOLD_AT and not starts_line:
            lines.append("")
        lines[-1] += " " + word
    if any(len(line) > MAX_LINE for line in lines):
        raise InvalidMessageError(f"the {name} header has a word longer than a line may be")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _fold(name: str, value: str) -> bytes:
    """One header, folded and encoded (RFC 2047) by the standard library."""
    try:
        header = POLICY.header_factory(name, value)
        policy = POLICY
        if isinstance(header, AddressHeader):
            for address in header.addresses:
                if not address.username or not address.domain:
                    raise ValueError(f"{address!s} is not an email address")
                if not address.username.isascii():
                    policy = UTF8_POLICY  # an encoded-word is not allowed in an address
        folded: str = header.fold(policy=policy)
        return folded.encode("utf-8" if policy is UTF8_POLICY else "ascii")
    except (ValueError, TypeError, IndexError, UnicodeError) as err:
        raise InvalidMessageError(f"the {name} header cannot be built: {err}") from err


def _encode_text(text: str, boundary_token: str) -> tuple[bytes, str]:
    """*text* as CRLF lines in a 7-bit transfer encoding, and that encoding's name."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if (text.isascii() and boundary_token not in text
            and (len(text) <= MAX_LINE or max(map(len, text.split("\n"))) <= MAX_LINE)):
        return text.replace("\n", "\r\n").encode("ascii"), "7bit"
    raw = text.encode("utf-8")
    if len(raw) - len(text) <= len(text) // 4:  # mostly ASCII: stays readable
        return binascii.b2a_qp(raw.replace(b"\n", b"\r\n"), istext=True), "quoted-printable"
    return base64.encodebytes(raw).replace(b"\n", b"\r\n"), "base64"


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return b"".join((f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'
                     f"--{boundary}\r\n".encode(), delimiter.join(parts),
                     f"\r\n--{boundary}--\r\n".encode()))


def format_address(display_name: str, address: str) -> str:
    """``"Name <user@example.com>"`` with the display name quoted as needed."""
    username, _, domain = address.rpartition("@")
    return str(Address(display_name=display_name, username=username, domain=domain))
