"""Reading bounces and complaints: delivery status notifications (RFC 3464) and abuse
reports (ARF, RFC 5965), as the mail that carries them arrives.

:func:`read_report` takes the raw message and returns what it says about which
recipients of which original message; it knows nothing of Redis or Flask.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message

# a reply code stands alone: "554 5.7.1 ...", "554-...", never an address's "203.0.113.7"
SMTP_CODE = re.compile(r"(?<![\w.])([245]\d\d)(?=[ -]|$)")
STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
MAX_RECIPIENTS = 100  # a DSN speaks of a few; the rest of a bigger one is not read
MAX_DIAGNOSTIC = 500  # characters of a Diagnostic-Code kept

# What the email package raises on headers and MIME it cannot make sense of (a malformed
# address header gives IndexError or AttributeError from its header parser).
UNREADABLE = (AttributeError, IndexError, KeyError, LookupError, TypeError, ValueError,
              RecursionError, email.errors.MessageError)


class MalformedReport(ValueError):
    """The mail is not something the email package can read as a report."""


XTEXT = re.compile(r"\+([0-9A-F]{2})")


@dataclass(frozen=True, slots=True)
class ReportedRecipient:
    """One recipient a report speaks of."""

    email: str
    action: str  # failed, delayed, delivered, relayed, expanded; "complaint" for ARF
    status: str | None = None  # the enhanced status code, 5.1.1
    diagnostic: str | None = None
    smtp_code: int | None = None

    @property
    def permanent(self) -> bool:
        """A complaint, or ``Action: failed`` whatever the status class: a 4.x.x
        failure means the relay gave up (Postfix's queue expiry, 4.4.1, 4.2.2)."""
        return self.action in {"complaint", "failed"}


@dataclass(slots=True)
class Report:
    """What one bounce or complaint says."""

    kind: str  # "delivery-status", "feedback-report", or "unknown"
    recipients: list[ReportedRecipient] = field(default_factory=list)
    original_message_id: str | None = None
    original_recipients: list[str] = field(default_factory=list)  # the original's To
    return_paths: list[str] = field(default_factory=list)  # where the report says it went
    envelope_id: str | None = None  # Original-Envelope-Id: the ENVID the original was sent with


def read_report(raw: bytes) -> Report:
    """Parse a DSN or an ARF report; anything else is ``Report("unknown")``; mail the
    email package chokes on raises :class:`MalformedReport`."""
    try:
        return _read(raw)
    except UNREADABLE as err:
        raise MalformedReport(f"the report cannot be read ({type(err).__name__})") from err


def _read(raw: bytes) -> Report:
    # compat32 keeps header values as the text they came in: the default policy's header
    # parser takes minutes over a folded header of a few MB, and raises on malformed ones
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if message.get_content_type() != "multipart/report":
        return Report("unknown")
    kind = str(message.get_param("report-type") or "").lower()
    report = Report(kind if kind in {"delivery-status", "feedback-report"} else "unknown")
    for name in ("Delivered-To", "X-Original-To", "To"):
        report.return_paths += [a for _, a in email.utils.getaddresses(
            [str(v) for v in message.get_all(name, [])]) if a]
    payload = message.get_payload() if message.is_multipart() else []
    parts = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    for part in parts:
        content_type = part.get_content_type()
        full = len(report.recipients) >= MAX_RECIPIENTS  # the cap is the report's, not a part's
        if full and content_type in {"message/delivery-status", "message/feedback-report"}:
            continue
        if content_type == "message/delivery-status":
            report.recipients += _delivery_status(part)
            report.envelope_id = report.envelope_id or _envelope_id(part)
        elif content_type == "message/feedback-report":
            complained, senders = _feedback(part)
            report.recipients += complained
            report.return_paths += senders
        elif content_type in {"message/rfc822", "text/rfc822-headers",
                              "message/rfc822-headers"}:
            original = _original(part)
            if original is not None:
                report.original_message_id = _header(original, "Message-ID")
                report.return_paths += [a for _, a in email.utils.getaddresses(
                    [str(v) for v in original.get_all("Return-Path", [])]) if a]
                report.original_recipients = [
                    address for _, address in email.utils.getaddresses(
                        [str(v) for v in original.get_all("To", [])]) if address
                ][:MAX_RECIPIENTS]
    report.recipients = report.recipients[:MAX_RECIPIENTS]
    report.return_paths = report.return_paths[:MAX_RECIPIENTS]
    if report.kind == "feedback-report" and not any(
            r.email for r in report.recipients) and report.original_recipients:
        report.recipients = [ReportedRecipient(a, "complaint")
                             for a in report.original_recipients]
    return report


def _fields(part: Message) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or feedback part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    return [email.message_from_string(block.strip() + "\n")
            for block in re.split(r"\r?\n\r?\n", text) if block.strip()]


def _delivery_status(part: Message) -> list[ReportedRecipient]:
    found: list[ReportedRecipient] = []
    for block in _fields(part):
        if len(found) >= MAX_RECIPIENTS:
            break
        recipient = _address(_header(block, "Final-Recipient")
                             or _header(block, "Original-Recipient"))
        if not recipient:
            continue  # the per-message fields
        diagnostic = _header(block, "Diagnostic-Code")
        detail = diagnostic.split(";", 1)[-1].strip()[:MAX_DIAGNOSTIC] if diagnostic else None
        code = SMTP_CODE.search(detail or "")
        status = _header(block, "Status")
        status_code = STATUS.search(status or "")
        found.append(ReportedRecipient(
            recipient, (_header(block, "Action") or "").strip().lower(),
            status_code.group(1) if status_code else None, detail,
            int(code.group(1)) if code else None))
    return found


def _envelope_id(part: Message) -> str | None:
    """The per-message ``Original-Envelope-Id``, xtext-decoded (RFC 3461 .4, RFC 3464)."""
    for block in _fields(part):
        value = _header(block, "Original-Envelope-Id")
        if value:
            return XTEXT.sub(lambda found: chr(int(found.group(1), 16)), value.strip())
    return None


def _feedback(part: Message) -> tuple[list[ReportedRecipient], list[str]]:
    """The complained-of recipients, and the envelope senders the report names."""
    found, senders = [], []
    for block in _fields(part):
        kind = (_header(block, "Feedback-Type") or "abuse").strip().lower()
        mail_from = _address(_header(block, "Original-Mail-From"))
        if mail_from:
            senders.append(mail_from)
        for value in (block.get_all("Original-Rcpt-To", []) or [""])[:MAX_RECIPIENTS]:
            found.append(ReportedRecipient(_address(str(value)) or "", "complaint",
                                           None, f"complaint: {kind}"))
    return found, senders


def _original(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return email.message_from_string(payload)
    return None


def _header(message: Message, name: str) -> str | None:
    value = message.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _address(field_value: str | None) -> str | None:
    """``rfc822; ada@example.com`` -> ``ada@example.com``."""
    if not field_value:
        return None
    address = field_value.split(";", 1)[-1].strip().strip("<>").strip()
    return address if "@" in address else None
