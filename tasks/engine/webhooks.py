"""Calling a client app's webhook endpoint: the URL check, the signature, one POST.

No Flask here: the task (:mod:`tasks.webhooks`) passes the settings in.

- :func:`check_url` refuses what is not ``http``/``https``, and (unless private
  addresses are allowed) a host that resolves to a loopback, private, link-local,
  multicast, reserved or unspecified address: a webhook must not become a way into
  the deployment's own network (SSRF). It runs when an endpoint is registered and
  again before every call, since DNS answers can change.
- :func:`signature` is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
- :func:`post` makes one POST with a timeout and follows no redirect.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

TIMEOUT = 10.0  # seconds for the whole answer's headers
USER_AGENT = "Postroom-Webhooks/1"


class UnsafeURL(ValueError):
    """The URL may not be called: the reason says why."""


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`UnsafeURL` unless *url* may be called."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UnsafeURL(f"not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("only http:// and https:// URLs are called")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("credentials in the URL are not allowed")
    if allow_private:
        return
    for address in resolve(host, port or (443 if parts.scheme == "https" else 80)):
        if not public(address):
            raise UnsafeURL(f"the host resolves to a non-public address ({address}); "
                            "set WEBHOOK_ALLOW_PRIVATE=true to allow it")


def resolve(host: str, port: int) -> list[str]:
    """Every address *host* resolves to (an :class:`UnsafeURL` when none)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UnsafeURL(f"the host does not resolve: {err}") from None
    return sorted({str(info[4][0]) for info in infos})


def public(address: str) -> bool:
    """Whether *address* is on the public internet (IPv4-mapped IPv6 looked through;
    shared address space such as 100.64.0.0/10 is not)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_loopback or ip.is_private or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Postroom-Signature`` header for *body* signed at *timestamp*."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: the status code, or the error when there was no answer."""

    status_code: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def post(url: str, body: bytes, *, event_type: str, secret: str,
         timeout: float = TIMEOUT, now: float | None = None) -> Answer:
    """POST *body* to *url*, signed with *secret*; redirects are not followed."""
    timestamp = int(time.time() if now is None else now)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "Postroom-Event": event_type,
               "Postroom-Signature": signature(secret, body, timestamp)}
    try:
        with requests.Session() as session:
            session.trust_env = False  # the checked URL itself, never a proxy from the env
            with session.post(url, data=body, headers=headers, timeout=timeout,
                              allow_redirects=False, stream=True) as response:
                return Answer(response.status_code)
    except requests.Timeout:
        return Answer(None, f"no answer within {timeout:g} s")
    except requests.RequestException as err:
        return Answer(None, f"{type(err).__name__}: {_short(err)}")


def _short(err: Exception) -> str:
    return str(err)[:300]
