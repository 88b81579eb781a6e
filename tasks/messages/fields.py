"""The rules a message's header fields follow, whether it comes from ``POST /api/messages``
or from SMTP submission: what a mailbox may be, which characters no header may hold, and
which headers Postroom writes itself."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from email_validator import EmailNotValidError

from tasks.delivery.engine.compose import HEADER_CONTROLS, format_address
from tasks.shared.mailbox import checked_address, special_use_allowed

RESERVED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "sender",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "return-path", "received",
})
MAX_HEADER_LINE = 998  # RFC 5322 section 2.1.1


def header_safe(value: str) -> str:
    """*value*, unless it holds a character no header may: C0/C1 controls, U+2028/2029."""
    found = HEADER_CONTROLS.search(value)
    if found:
        raise ValueError("must not contain control characters or line breaks "
                         f"(found U+{ord(found.group()):04X})")
    return value


def mailbox(value: Any) -> str:
    """Validate ``user@example.com`` or ``Name <user@example.com>``; normalise it."""
    if not isinstance(value, str):
        raise ValueError("must be an email address as a string")
    if len(value) > MAX_HEADER_LINE:  # before any parsing: a name and address fit one line
        raise ValueError(f"is longer than {MAX_HEADER_LINE} characters")
    header_safe(value)
    name, address = parseaddr(value)
    if not address or ("<" in value and not value.rstrip().endswith(">")):
        raise ValueError(f"{value[:100]!r} is not an email address")
    try:
        checked = checked_address(address, special_use=special_use_allowed())
    except EmailNotValidError as err:
        raise ValueError(str(err)) from None
    address = f"{checked.local_part}@{checked.ascii_domain}"  # the domain as an A-label
    return format_address(name, address) if name else address
