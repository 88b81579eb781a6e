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

Special-use and private-use names (``.local``, ``.internal``, ``.lan``,
``.home.arpa``, ...: RFC 6761, RFC 8375, ICANN's ``.internal``) are refused unless
the caller passes them in *special_use* (``ALLOW_SPECIAL_USE_DOMAINS``): a
deployment inside a company network may send to ``ada@corp.local``; a public
API refuses it by default.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Collection

from email_validator import (
    SPECIAL_USE_DOMAIN_NAMES,
    EmailNotValidError,
    EmailSyntaxError,
    ValidatedEmail,
    validate_email,
)
from flask import current_app, has_app_context

MAX_ADDRESS_CHARS = 254  # RFC 5321's 256-octet path less its angle brackets (RFC 3696 errata)
TOO_LONG = f"The email address is too long (more than {MAX_ADDRESS_CHARS} characters)."
# Names for private networks that email-validator lets through (it refuses its own list)
PRIVATE_USE_DOMAINS = ("internal", "lan", "home.arpa", "intranet", "corp", "private")
SPECIAL_USE_DOMAINS = tuple(dict.fromkeys([*SPECIAL_USE_DOMAIN_NAMES, *PRIVATE_USE_DOMAINS]))
PRIVATE_USE = ("The part after the @-sign is a special-use or private-use name that this "
               "deployment does not send to (ALLOW_SPECIAL_USE_DOMAINS).")


def special_use_allowed() -> tuple[str, ...]:
    """The special-use names this deployment sends to (``ALLOW_SPECIAL_USE_DOMAINS``):
    ``("local", "internal")`` when allowed; empty (refused) by default."""
    if not has_app_context():
        return ()
    return tuple(current_app.config.get("ALLOW_SPECIAL_USE_DOMAINS") or ())


def checked_address(value: str, *, strip: bool = True,
                    special_use: Collection[str] = ()) -> ValidatedEmail:
    """email-validator's verdict on *value* (no DNS; spaces around it ignored unless
    *strip* is false), refused at once when too long. Domains under a special-use
    or private-use name are refused unless that name is in *special_use*.

    Raises :class:`EmailNotValidError` (an :class:`EmailSyntaxError` for the length).
    """
    if len(value) > MAX_ADDRESS_CHARS + 2:  # room for the spaces callers strip
        raise EmailSyntaxError(TOO_LONG)
    text = value.strip() if strip else value
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailSyntaxError:
        if not (special_use and _under(text.rpartition("@")[2], special_use)):
            raise
        return _under_special_use(text)
    if _under(checked.ascii_domain, PRIVATE_USE_DOMAINS) and not _under(
            checked.ascii_domain, special_use):
        raise EmailSyntaxError(PRIVATE_USE)
    return checked


_PROBE = ".su-probe.com"  # stands in for the special-use name: the rest is checked as usual


def _under_special_use(text: str) -> ValidatedEmail:
    """email-validator's verdict on an address under an allowed special-use name (it has
    no option for one): the address is checked with a public suffix appended, which is
    then taken off again."""
    checked = validate_email(text.rstrip(".") + _PROBE, check_deliverability=False)
    for name in ("domain", "ascii_domain", "normalized", "ascii_email"):
        value = getattr(checked, name)
        if isinstance(value, str) and value.endswith(_PROBE):
            setattr(checked, name, value[:-len(_PROBE)])
    return checked


def _under(domain: str, names: Collection[str]) -> bool:
    domain = domain.strip().rstrip(".").lower()
    return any(domain == name or domain.endswith("." + name) for name in names)


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
