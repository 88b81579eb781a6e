"""What is kept of a bounce or complaint that matched nothing: a summary of a few KB.

The report itself came from anyone (the listener is an MX, open to the internet), so it is
never kept whole: only a few of its headers, where it was sent, what it says of each
recipient (the first few, their diagnostic cut short) and its size, as one JSON entry of at
most :data:`MAX_ENTRY_BYTES`. The headers are read with the lenient ``compat32`` parser from
the header section alone, so mail the email package chokes on is summarised all the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from tasks.bounces.reports import Report

MAX_ENTRY_BYTES = 4096
HEADER_SECTION = 16 * 1024  # bytes of the message read for its headers
SHOWN_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "Content-Type")
MAX_HEADER = 200  # characters of each header kept
MAX_RECIPIENTS = 5
MAX_DIAGNOSTIC = 300


def kept_summary(raw: bytes, report: Report | None, envelope_to: Sequence[str] = ()) -> str:
    """The JSON entry kept for *raw* (*report* ``None``: it could not be read)."""
    entry: dict[str, Any] = {"at": time.time(), "bytes": len(raw),
                             "kind": report.kind if report is not None else "malformed",
                             "envelope_to": [_cut(a, MAX_HEADER) for a in envelope_to[:3]],
                             "headers": _headers(raw)}
    if report is not None:
        entry["original_message_id"] = _cut(report.original_message_id, MAX_HEADER)
        entry["recipients"] = [
            {"email": _cut(r.email, MAX_HEADER), "action": _cut(r.action, 40),
             "status": r.status, "diagnostic": _cut(r.diagnostic, MAX_DIAGNOSTIC)}
            for r in report.recipients[:MAX_RECIPIENTS]]
        entry["recipients_total"] = len(report.recipients)
    text = json.dumps(entry, ensure_ascii=True)
    while len(text) > MAX_ENTRY_BYTES:  # long escapes: drop detail until it fits
        if entry.get("recipients"):
            entry["recipients"].pop()
        elif entry["headers"]:
            entry["headers"].popitem()
        else:
            entry["envelope_to"] = []
            entry.pop("original_message_id", None)
        text = json.dumps(entry, ensure_ascii=True)
    return text


def _headers(raw: bytes) -> dict[str, str]:
    head = raw[:HEADER_SECTION]
    end = head.find(b"\r\n\r\n")
    head = head if end < 0 else head[:end + 4]
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    shown = {}
    for name in SHOWN_HEADERS:
        value = parsed.get(name)
        if value is not None:
            shown[name] = _cut(str(value), MAX_HEADER) or ""
    return shown


def _cut(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"
