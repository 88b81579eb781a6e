"""API tokens and what each may do: ``API_TOKENS=tokenA,tokenB:send,tokenC:read+send``.

A token listed alone keeps every scope (as before scopes existed); ``token:scope+scope``
limits it to the scopes named. The scopes:

- ``read``: the GETs (a message's, an OTP request's or a campaign's status);
- ``send``: what sends mail (``POST /api/messages``, ``/api/otp``, its verify, and
  ``POST /api/campaigns``);
- ``admin``: the rest (the suppression list, webhooks, bounces, campaign control),
  and any mutating operation not named above.

Tokens are compared in constant time, each against every listed token.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

SCOPES = ("read", "send", "admin")
EVERY_SCOPE = frozenset(SCOPES)
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SENDING = frozenset({("POST", "/api/messages"), ("POST", "/api/otp"),
                     ("POST", "/api/otp/{request_id}/verify"), ("POST", "/api/campaigns"),
                     ("POST", "/api/campaigns/{campaign_id}/test"),
                     ("POST", "/api/campaigns/{campaign_id}/start")})
ADMIN_PATHS = ("/api/suppressions", "/api/webhooks", "/api/bounces")
_RULE_PART = re.compile(r"<(?:[^:<>]+:)?([^:<>]+)>")


@dataclass(frozen=True)
class Grant:
    """One listed token and the scopes it carries."""

    token: bytes
    scopes: frozenset[str]


def grants(entries: list[str] | tuple[str, ...]) -> tuple[Grant, ...]:
    """``API_TOKENS``' entries as grants; :class:`ValueError` names a malformed one."""
    found: list[Grant] = []
    for entry in entries:
        token, colon, named = str(entry).strip().rpartition(":")
        if not colon:
            token, named = named, ""
        if not token:
            raise ValueError(f"an entry has no token before its scopes: {named!r}")
        if not colon:
            found.append(Grant(token.encode(), EVERY_SCOPE))
            continue
        scopes = frozenset(word.strip().lower() for word in named.split("+") if word.strip())
        unknown = sorted(scopes - EVERY_SCOPE)
        if unknown or not scopes:
            raise ValueError(f"unknown scope {unknown[0] if unknown else named!r} "
                             f"(scopes: {', '.join(SCOPES)}, joined with '+')")
        found.append(Grant(token.encode(), scopes))
    return tuple(found)


def token_of(entry: str) -> str:
    """The token an ``API_TOKENS`` entry lists, without its scopes."""
    token, colon, named = entry.strip().rpartition(":")
    return token if colon else named


def granted(presented: str, known: tuple[Grant, ...]) -> frozenset[str] | None:
    """The scopes of the listed token equal to *presented*; ``None`` when none is.

    Every listed token is compared, in constant time, whichever matches.
    """
    candidate = presented.encode()
    scopes: frozenset[str] | None = None
    for grant in known:
        if hmac.compare_digest(candidate, grant.token) and scopes is None:
            scopes = grant.scopes
    return scopes


def path_template(rule: str) -> str:
    """``/api/otp/{request_id}`` for the Flask rule ``/api/otp/<request_id>``."""
    return _RULE_PART.sub(r"{\1}", rule)


def needed_scope(method: str, path: str) -> str:
    """The scope an operation needs, by method and OpenAPI-style path."""
    method = method.upper()
    if path.startswith(ADMIN_PATHS):
        return "admin"
    if (method, path) in SENDING:
        return "send"
    if method in READING_METHODS:
        return "read"
    return "admin"
