"""Mail the embedded capture server kept as ``.eml`` files, read for the Outbox page.

A captured file is never changed once it is in place (the server writes a hidden
partial file and renames it), so each file's summary — the few headers the list
shows — is read once, from the header block only, and kept in memory. File names
sort by arrival time, so the list is a sorted directory listing: with 12,000
messages a page reads the headers of at most one page of new files.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

HEADER_LIMIT = 256 * 1024  # a header block longer than this is cut (the list only)
NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CapturedSummary:
    """What the Outbox list shows of one captured message."""

    name: str
    sender: str
    to: str
    cc: str
    subject: str
    date: str
    envelope_to: str
    size: int = 0  # bytes of the whole captured file
    has_attachments: bool = False  # a multipart/mixed message (one part or more attached)

    @property
    def received_at(self) -> float:
        """When it was captured, from its name (``20261202T054400.123456Z-...``), UTC."""
        return datetime.strptime(self.name[:23], "%Y%m%dT%H%M%S.%fZ").replace(
            tzinfo=UTC).timestamp()

    def matches(self, query: str) -> bool:
        """True when *query* (lower case) is in a recipient or the subject."""
        return any(query in field.lower()
                   for field in (self.to, self.cc, self.envelope_to, self.subject))


@dataclass(frozen=True)
class Attachment:
    """One attachment of a captured message, numbered in walk order."""

    index: int
    filename: str
    content_type: str
    size: int


def _header(headers: email.message.Message, name: str) -> str:
    try:
        return str(headers.get(name, "") or "")
    except (ValueError, IndexError, TypeError):  # a malformed header is shown as absent
        return ""


def _read_header_block(path: Path) -> bytes:
    with path.open("rb") as handle:
        block = handle.read(HEADER_LIMIT)
    for end in (b"\r\n\r\n", b"\n\n"):
        cut = block.find(end)
        if cut != -1:
            return block[:cut + len(end)]
    return block


class CapturedMailbox:
    """The outbox directory, with each file's summary read once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._summaries: dict[str, CapturedSummary] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every captured message's name, newest first."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted((entry[:-4] for entry in entries
                       if entry.endswith(".eml") and not entry.startswith(".")), reverse=True)

    def summary(self, name: str) -> CapturedSummary | None:
        """The list's headers of *name*, or None when the file is gone."""
        with self._lock:
            known = self._summaries.get(name)
        if known is not None:
            return known
        try:
            path = self.directory / f"{name}.eml"
            block = _read_header_block(path)
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        headers = BytesHeaderParser(policy=email.policy.default).parsebytes(block)
        found = CapturedSummary(
            name=name, sender=_header(headers, "From"), to=_header(headers, "To"),
            cc=_header(headers, "Cc"), subject=_header(headers, "Subject"),
            date=_header(headers, "Date"), envelope_to=_header(headers, "X-Envelope-To"),
            size=size, has_attachments=headers.get_content_type() == "multipart/mixed")
        with self._lock:
            self._summaries[name] = found
        return found

    def search(self, query: str, offset: int, limit: int) -> tuple[int, list[CapturedSummary]]:
        """The count of messages matching *query* and one page of them, newest first.

        An empty query matches everything and reads only the page's files.
        """
        names = self.names()
        needle = query.strip().lower()
        if not needle:
            page = [self.summary(name) for name in names[offset:offset + limit]]
            return len(names), [found for found in page if found is not None]
        matching = [found for found in (self.summary(name) for name in names)
                    if found is not None and found.matches(needle)]
        return len(matching), matching[offset:offset + limit]

    def path(self, name: str) -> Path | None:
        """The file of *name*, or None for a name that is not a captured message."""
        if not NAME.match(name):
            return None
        path = self.directory / f"{name}.eml"
        return path if path.is_file() else None

    def message(self, name: str) -> tuple[EmailMessage, bytes] | None:
        """The parsed message *name* and its raw bytes, or None."""
        path = self.path(name)
        if path is None:
            return None
        raw = path.read_bytes()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed, raw

    def delete(self, name: str) -> bool:
        """Delete the captured message *name*; False when there is no such message."""
        path = self.path(name)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        with self._lock:
            self._summaries.pop(name, None)
        return True

    def clear(self) -> int:
        """Delete every captured message; the number deleted."""
        removed = 0
        for name in self.names():
            try:
                (self.directory / f"{name}.eml").unlink()
                removed += 1
            except FileNotFoundError:
                continue
        with self._lock:
            self._summaries.clear()
        return removed


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    """The message's plain-text body and its HTML body ('' for a missing one)."""
    bodies = []
    for kind in ("plain", "html"):
        try:
            part = message.get_body(preferencelist=(kind,))
            bodies.append(str(part.get_content()) if part is not None else "")
        except (LookupError, ValueError, KeyError):  # an unknown charset or a broken part
            bodies.append("")
    return bodies[0], bodies[1]


def attachment_parts(message: EmailMessage) -> list[tuple[Attachment, EmailMessage]]:
    """Every attachment (and inline file with a name), numbered from 0."""
    found: list[tuple[Attachment, EmailMessage]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if part.get_content_disposition() != "attachment" and not filename:
            continue
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        assert isinstance(part, EmailMessage)
        found.append((Attachment(index=len(found), filename=filename or f"attachment-{len(found)}",
                                 content_type=part.get_content_type(), size=size), part))
    return found
