"""Who is asking, as rate limits count it: a client's network, or an API caller's token.

An IPv6 client controls a whole /64 (SLAAC hands every host one), so IPv6
clients are counted per /64; an IPv4-mapped IPv6 address counts as its IPv4
address. API callers are counted per bearer token, not per address: one
backend serves many end users from one IP.
"""

from __future__ import annotations

import hashlib
import ipaddress

from flask import request
from flask_limiter.util import get_remote_address

IPV6_PREFIX = 64


def client_network() -> str:
    """``203.0.113.7`` for IPv4, ``2001:db8:1:2::/64`` for any address in that IPv6 /64."""
    return network_of(get_remote_address() or "")


def network_of(address: str) -> str:
    """:func:`client_network` for any client *address* (an SMTP peer's, say)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def presented_token() -> str:
    """The bearer token sent with this request, or ``""``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_key() -> str:
    """A name for the caller's token that does not reveal it (for limits and keys)."""
    return "token:" + hashlib.sha256(presented_token().encode()).hexdigest()[:32]
