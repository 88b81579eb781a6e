"""VERP return paths: ``bounces+<token>@bounces.example.com`` for each message and recipient.

The token names what was sent (``c<campaign>.<recipient>`` or ``m<message>[.<recipient>]``)
and carries a short HMAC keyed with ``SECRET_KEY``, so a bounce to that address says which
recipient of which delivery bounced, and nobody can forge one for another.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass

from tasks.vocabulary import Kind

_TOKEN = re.compile(r"^([cm])([0-9a-f]{32})(?:\.(\d{1,9}))?\.([0-9a-z]{10})$")


@dataclass(frozen=True, slots=True)
class BounceRef:
    """What a VERP token names."""

    kind: str  # Kind.CAMPAIGN or Kind.MESSAGE
    item_id: str
    index: int | None


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC keyed with *secret*, made once; each token signs a copy of it."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _sign(secret: str, ref: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(ref.encode())
    return mac.hexdigest()[:10]


def verp_address(return_path: str, secret: str, ref: BounceRef) -> str:
    """The envelope sender for *ref*: the return path's local part, ``+``, the token."""
    local, _, domain = return_path.rpartition("@")
    body = _token_body(ref)
    return f"{local}+{body}.{_sign(secret, body)}@{domain}"


def read_verp(address: str, return_path: str, secret: str) -> BounceRef | None:
    """What *address* names, if it is a genuine VERP address for *return_path*."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base_local, _, base_domain = return_path.rpartition("@")
    if domain.lower() != base_domain.lower():
        return None
    prefix, plus, token = local.rpartition("+")  # the token has no "+"; the return path may
    if not plus or prefix.lower() != base_local.lower():
        return None
    found = _TOKEN.match(token.lower())
    if found is None:
        return None
    kind, item_id, index, signature = found.groups()
    body = token.lower().rsplit(".", 1)[0]
    if not hmac.compare_digest(signature, _sign(secret, body)):
        return None
    return BounceRef(Kind.CAMPAIGN if kind == "c" else Kind.MESSAGE, item_id,
                     int(index) if index is not None else None)


def is_return_path_address(address: str, return_path: str) -> bool:
    """Whether *address* is the return path or one of its ``+token`` forms."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base_local, _, base_domain = return_path.rpartition("@")
    local, base_local = local.lower(), base_local.lower()
    return domain.lower() == base_domain.lower() and (
        local == base_local or local.rpartition("+")[0] == base_local)


# -- DSN envelope ids (RFC 3461 ENVID): the same signed token as the VERP return path

_XTEXT_SAFE = frozenset(range(33, 127)) - {ord("+"), ord("=")}


def _token_body(ref: BounceRef) -> str:
    body = ("c" if ref.kind == Kind.CAMPAIGN else "m") + ref.item_id
    return body if ref.index is None else f"{body}.{ref.index}"


def envid_for(ref: BounceRef, secret: str) -> str:
    """The ``ENVID`` for *ref*: the signed token of its VERP address (``c<id>.<n>.<sig>``)."""
    body = _token_body(ref)
    return f"{body}.{_sign(secret, body)}"


def read_envid(envid: str, secret: str) -> BounceRef | None:
    """What an ``ENVID`` (or a DSN's ``Original-Envelope-Id``, xtext or not) names, if
    it is genuine; the inverse of :func:`envid_for`."""
    token = xtext_decode(envid.strip()).lower()
    found = _TOKEN.match(token)
    if found is None:
        return None
    kind, item_id, index, signature = found.groups()
    if not hmac.compare_digest(signature, _sign(secret, token.rsplit(".", 1)[0])):
        return None
    return BounceRef(Kind.CAMPAIGN if kind == "c" else Kind.MESSAGE, item_id,
                     int(index) if index is not None else None)


def envid_in(envelope_sender: str) -> str | None:
    """The token of a VERP envelope sender (not verified: the engine only passes it on
    as the ``ENVID``), or ``None`` for any other sender."""
    local = envelope_sender.strip().strip("<>").rpartition("@")[0]
    token = local.rpartition("+")[2] if "+" in local else ""
    return token if _TOKEN.match(token.lower()) else None


_XTEXT_PLAIN = re.compile(r"[!-*,-<>-~]*")  # printable ASCII but "+" and "=": unchanged


def xtext(value: str) -> str:
    """RFC 3461 xtext: ``+`` and ``=``, controls, spaces and non-ASCII as ``+XX``."""
    if _XTEXT_PLAIN.fullmatch(value):  # every token Postroom writes
        return value
    return "".join(chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in value.encode())


def xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)
