"""Calling a client app's webhook endpoint: the URL check, the signature, one POST.

No Flask here: the task (:mod:`tasks.webhooks.tasks`) passes the settings in.

- :func:`check_url` refuses what is not ``http``/``https``, and (unless private
  addresses are allowed) a host that resolves to a loopback, private, link-local,
  multicast, reserved or unspecified address, or to an IPv6 form that carries one
  (IPv4-mapped or -compatible, 6to4, NAT64; Teredo always): a webhook must not become
  a way into the deployment's own network (SSRF). It runs when an endpoint is
  registered; :func:`pin` runs it again before every call, since DNS answers change.
  A refusal never names the address the host resolved to.
- :func:`signature` is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
- :func:`post` resolves the host once, checks every address, and makes one POST to
  the checked address (:mod:`tasks.webhooks.pinned`), with one deadline on the whole
  answer; it follows no redirect.
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
from requests.models import PreparedRequest

from tasks.webhooks.pinned import Deadline, PinnedAdapter

TIMEOUT = 10.0  # seconds for the whole call: connect, TLS, sending and the answer's headers
USER_AGENT = "Postroom-Webhooks/1"
REFUSED = ("the host resolves to a private, loopback or otherwise non-public address; "
           "set WEBHOOK_ALLOW_PRIVATE=true to allow it")
# IPv6 forms that carry an IPv4 address a packet may end up at.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits
TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380: tunnelled to any IPv4 host
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated (RFC 4291 2.5.5.1)


class UnsafeURL(ValueError):
    """The URL may not be called: the reason says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL, in the form it is sent, and the one checked address it is sent to."""

    url: str
    host: str
    address: str


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`UnsafeURL` unless *url* may be called (resolved only when private
    addresses are not allowed)."""
    if allow_private:
        _parse(url)
    else:
        pin(url, allow_private=False)


def pin(url: str, *, allow_private: bool) -> Target:
    """Resolve *url*'s host once and check every address it has; the first is the one
    to connect to. Raises :class:`UnsafeURL`."""
    url, host, port = _parse(url)
    addresses = resolve(host, port)
    if not allow_private and not all(public(address) for address in addresses):
        raise UnsafeURL(REFUSED)
    return Target(url, host, addresses[0])


def _parse(url: str) -> tuple[str, str, int]:
    """``(url, host, port)``: the URL as requests sends it (an IDNA host), checked."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UnsafeURL(f"not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("only http:// and https:// URLs are called")
    if not parts.hostname:
        raise UnsafeURL("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("credentials in the URL are not allowed")
    prepared = PreparedRequest()
    try:
        prepared.prepare_url(url, None)
    except requests.RequestException as err:
        raise UnsafeURL(f"not a valid URL: {err}") from None
    sent = urlsplit(prepared.url or "")
    if not sent.hostname:
        raise UnsafeURL("the URL names no host")
    return str(prepared.url), sent.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[str]:
    """Every address *host* resolves to, in the resolver's order (an :class:`UnsafeURL`
    when none)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as err:  # ValueError: a NUL, a label too long
        raise UnsafeURL(f"the host does not resolve: {err}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeURL("the host does not resolve")
    return addresses


def public(address: str) -> bool:
    """Whether *address* is on the public internet. An IPv6 form that carries an IPv4
    address (IPv4-mapped, 6to4, NAT64) is judged by that address; Teredo and
    IPv4-compatible addresses never are public, nor shared space such as 100.64.0.0/10."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in TEREDO or ip in IPV4_COMPATIBLE or ip.is_site_local:
            return False
        if ip.ipv4_mapped is not None:
            return _plain_public(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return _plain_public(ip.sixtofour)
        if ip in NAT64:
            return _plain_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return _plain_public(ip)


def _plain_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
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


def post(url: str, body: bytes, *, event_type: str, secret: str, allow_private: bool,
         timeout: float = TIMEOUT, now: float | None = None,
         verify: bool | str = True) -> Answer:
    """POST *body* to *url*, signed with *secret*, at the address checked for it; the
    whole answer within *timeout* seconds; redirects are not followed. *verify* is a CA
    bundle to trust instead of the system's (tests)."""
    try:
        target = pin(url, allow_private=allow_private)
    except UnsafeURL as refused:
        return Answer(None, f"not called: {refused}")
    timestamp = int(time.time() if now is None else now)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "Postroom-Event": event_type,
               "Postroom-Signature": signature(secret, body, timestamp)}
    deadline = Deadline(timeout)
    try:
        with deadline, requests.Session() as session:
            session.trust_env = False  # the checked URL itself, never a proxy from the env
            adapter = PinnedAdapter(target.address)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            with session.post(target.url, data=body, headers=headers,
                              timeout=(deadline.left(), deadline.left()), verify=verify,
                              allow_redirects=False, stream=True) as response:
                return Answer(response.status_code)
    except requests.Timeout:
        return Answer(None, f"no answer within {timeout:g} s")
    except requests.RequestException as err:
        if deadline.expired:
            return Answer(None, f"no answer within {timeout:g} s")
        return Answer(None, f"{type(err).__name__}: {_short(err, target)}")


def _short(err: Exception, target: Target) -> str:
    """The error's text, naming the host rather than the address it was connected at."""
    return str(err).replace(target.address, target.host)[:300]
