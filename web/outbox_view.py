"""How the Outbox shows a captured message: readable sizes, relative times, the
remote images its HTML view blocks, and Mailpit-shaped JSON for the list and a message."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from flask import Blueprint

from web.captured_mail import Attachment, CapturedSummary

# src=, background= or CSS url() pointing off the message (http, https or protocol-relative)
REMOTE_IMAGE = re.compile(r"""(?:\b(?:src|background|srcset)\s*=\s*["']?\s*|url\(\s*["']?\s*)"""
                          r"""(?:https?:)?//""", re.IGNORECASE)
UNITS = ("kB", "MB", "GB")


def readable_size(size: int) -> str:
    """``812 B``, ``12.3 kB``, ``4.0 MB`` (powers of 1000, as mail clients show them)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in UNITS:
        value /= 1000
        if value < 1000 or unit == UNITS[-1]:
            return f"{value:.1f} {unit}"
    return f"{size} B"  # pragma: no cover - the loop always returns


def relative_time(epoch: float, now: float | None = None) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``2 days ago``."""
    seconds = max(0, int((now if now is not None else time.time()) - epoch))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    return f"{days} day{'s' if days != 1 else ''} ago"


def exact_time(epoch: float) -> str:
    """``2026-12-02 05:44:00 UTC``: the hover text of a relative time."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def remote_images(html: str) -> int:
    """How many remote images (or backgrounds) the HTML asks for; the view loads none."""
    return len(REMOTE_IMAGE.findall(html))


def register_filters(bp: Blueprint) -> None:
    bp.add_app_template_filter(readable_size, "readable_size")
    bp.add_app_template_filter(relative_time, "relative_time")
    bp.add_app_template_filter(exact_time, "exact_time")
    bp.add_app_template_filter(iso_time, "iso_time")


def _addresses(text: str) -> list[dict[str, str]]:
    return [{"Name": name, "Address": address}
            for name, address in getaddresses([text]) if address or name]


def summary_json(found: CapturedSummary) -> dict[str, Any]:
    """One list entry, as Mailpit's ``GET /api/v1/messages`` gives it."""
    sender = _addresses(found.sender)
    return {"ID": found.name, "From": sender[0] if sender else {"Name": "", "Address": ""},
            "To": _addresses(found.to), "Cc": _addresses(found.cc), "Subject": found.subject,
            "Created": iso_time(found.received_at), "Size": found.size,
            "Attachments": 1 if found.has_attachments else 0}


def message_json(name: str, message: EmailMessage, size: int, text: str, html: str,
                 attachments: list[Attachment]) -> dict[str, Any]:
    """One message, as Mailpit's ``GET /api/v1/message/{ID}`` gives it."""
    def header(field: str) -> str:
        try:
            return str(message.get(field, "") or "")
        except (ValueError, IndexError, TypeError):
            return ""

    sender = _addresses(header("From"))
    return {"ID": name, "MessageID": header("Message-ID").strip("<>"),
            "From": sender[0] if sender else {"Name": "", "Address": ""},
            "To": _addresses(header("To")), "Cc": _addresses(header("Cc")),
            "ReplyTo": _addresses(header("Reply-To")), "Subject": header("Subject"),
            "Date": header("Date"), "Text": text, "HTML": html, "Size": size,
            "RemoteImages": remote_images(html),
            "Attachments": [{"PartID": str(a.index), "FileName": a.filename,
                             "ContentType": a.content_type, "Size": a.size}
                            for a in attachments]}
