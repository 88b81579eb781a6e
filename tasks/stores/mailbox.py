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

:func:`checked_address` is the one door to email-validator: text longer than an
address can be (:data:`MAX_ADDRESS_CHARS`) is refused before any normalisation,
so a megabyte "address" costs a length check, not a second of Unicode work.
"""

from __future__ import annotations

import hashlib
import unicodedata

from email_validator import EmailNotValidError, EmailSyntaxError, ValidatedEmail, validate_email

MAX_ADDRESS_CHARS = 254  # RFC 5321's 256-octet path less its angle brackets (RFC 3696 errata)
TOO_LONG = f"The email address is too long (more than {MAX_ADDRESS_CHARS} characters)."


def checked_address(value: str, *, strip: bool = True) -> ValidatedEmail:
    """email-validator's verdict on *value* (no DNS; spaces around it ignored unless
    *strip* is false), refused at once when too long.

    Raises :class:`EmailNotValidError` (an :class:`EmailSyntaxError` for the length).
    """
    if len(value) > MAX_ADDRESS_CHARS + 2:  # room for the spaces callers strip
        raise EmailSyntaxError(TOO_LONG)
    return validate_email(value.strip() if strip else value, check_deliverability=False)


def canonical_mailbox(email: str) -> str | None:
    """``ada@example.com`` for every spelling of it; ``None`` when it is not an address."""
    try:
        checked = checked_address(email.strip().rstrip(".") if len(email) < 1000 else email)
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
