"""The mailbox an address names, for budgets that must not be side-stepped by spelling.

``Ada@Example.COM``, ``ada@ｅxample.com`` (fullwidth letters), ``ada@EXAMPLE.com`` and
``ada@example.com.`` are one mailbox; so are ``ada@bücher.de`` and
``ada@xn--bcher-kva.de``. The domain is email-validator's normal form, as an
A-label (IDNA, with its compatibility mapping: case, fullwidth forms). The local
part is email-validator's normal form (unneeded quotes removed, NFC), then NFKC
and case-folded: RFC 5321 lets a server treat case in the local part as
significant, but hardly any does, and merging two spellings into one budget only
ever makes a budget stricter. Sub-addresses (``ada+news@``) are not merged: they
are the addresses a client asked to verify.
"""

from __future__ import annotations

import hashlib
import unicodedata

from email_validator import EmailNotValidError, validate_email


def canonical_mailbox(email: str) -> str | None:
    """``ada@example.com`` for every spelling of it; ``None`` when it is not an address."""
    try:
        checked = validate_email(email.strip().rstrip("."), check_deliverability=False)
    except (EmailNotValidError, UnicodeError, ValueError):
        return None
    local = unicodedata.normalize("NFKC", checked.local_part).casefold()
    return f"{local}@{checked.ascii_domain.lower()}"


def mailbox_digest(email: str) -> str:
    """A stable, non-reversible name for the mailbox *email* names (for keys and limits).

    Text that is not an address is digested as it is (case-folded), so it still
    names one budget of its own.
    """
    mailbox = canonical_mailbox(email) or email.strip().casefold()
    return hashlib.sha256(mailbox.encode("utf-8", "surrogatepass")).hexdigest()[:32]
