"""A message's envelope as it goes on the wire: A-label domains, SMTPUTF8, DSN requests.

Domains go out as A-labels (``RCPT TO:<ada@xn--bcher-kva.de>``); a local part
that is not ASCII needs SMTPUTF8, and without it only the recipients that need
it fail, with a clear 553 naming each, rather than the message going out mangled.
Where the server offers DSN (RFC 3461), ``MAIL FROM`` asks for headers only in
reports (``RET=HDRS``) with the sender's VERP token as ``ENVID``, and each
``RCPT TO`` for failure and delay reports.
"""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.delivery.engine.compose import BARE_ADDRESS, a_label_address
from tasks.delivery.engine.outcome import DeliveryOutcome
from tasks.delivery.engine.verp import envid_in, xtext

Reply = tuple[int, bytes]

NO_A_LABEL: Reply = (553, b"5.1.3 the domain has no A-label (IDNA) form")


@dataclass(frozen=True, slots=True)
class Upcoming:
    """The next message on this session, whose commands may go out ahead (RFC 2920)."""

    sender: str
    recipients: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class Wire:
    """A message's envelope as it goes on the wire: A-label domains, each address once."""

    sender: str
    by_recipient: dict[str, str]  # as given -> on the wire
    refused: dict[str, DeliveryOutcome]  # recipients that cannot be written at all
    utf8: bool
    envid: str | None = None  # RFC 3461 ENVID: the VERP token of the sender, if any

    @property
    def addresses(self) -> list[str]:
        return list(dict.fromkeys(self.by_recipient.values()))


_last = threading.local()  # each thread's last envelope: (sender, recipients, smtputf8), Wire


def on_the_wire(host: smtplib.SMTP, sender: str,
                recipients: Sequence[str]) -> Wire | dict[str, DeliveryOutcome]:
    """The envelope to send, or every recipient's outcome if nothing can be sent.

    Without SMTPUTF8 at the server only the recipients with a non-ASCII local part
    fail (a 553 naming each); a sender that needs it fails them all. The same
    envelope asked for twice in a row in one thread (its commands sent ahead with
    the previous message, then its own transaction) is worked out once.
    """
    key = (sender, tuple(recipients), bool(host.has_extn("smtputf8")))
    last = getattr(_last, "wire", None)
    if last is not None and last[0] == key:
        wire: Wire = last[1]
        return wire
    found = _on_the_wire(host, sender, recipients)
    if isinstance(found, Wire):
        _last.wire = (key, found)
    return found


def _on_the_wire(host: smtplib.SMTP, sender: str,
                 recipients: Sequence[str]) -> Wire | dict[str, DeliveryOutcome]:
    try:
        wire_sender = a_label_address(sender)
    except ValueError:
        return _all(recipients, NO_A_LABEL)
    smtputf8 = host.has_extn("smtputf8")
    if not wire_sender.isascii() and not smtputf8:
        return _all(recipients, _no_smtputf8(wire_sender, "sender"))
    wire: dict[str, str] = {}
    refused: dict[str, DeliveryOutcome] = {}
    for recipient in recipients:
        try:
            address = a_label_address(recipient)
        except ValueError:
            refused[recipient] = _outcome(NO_A_LABEL)
            continue
        if not address.isascii() and not smtputf8:
            refused[recipient] = _outcome(_no_smtputf8(address, "recipient"))
        else:
            wire[recipient] = address
    if not wire:
        return refused
    utf8 = not (wire_sender.isascii() and all(w.isascii() for w in wire.values()))
    return Wire(wire_sender, wire, refused, utf8, envid_in(wire_sender))


def _no_smtputf8(address: str, role: str) -> Reply:
    return (553, f"5.6.7 <{address}>: the {role} address has a non-ASCII local part and the "
                 f"server does not offer SMTPUTF8".encode())


def envelope_commands(host: smtplib.SMTP, wire: Wire, size: int,
                      addresses: Sequence[str] | None = None) -> list[bytes]:
    """``MAIL FROM``, each ``RCPT TO`` and ``DATA`` for *wire* (or its *addresses*); with
    DSN requests (RFC 3461) where the server offers the extension."""
    options = f" SIZE={size}" if host.has_extn("size") else ""
    if wire.utf8:
        options += " SMTPUTF8"
    notify = ""
    if host.has_extn("dsn"):
        options += " RET=HDRS" + (f" ENVID={xtext(wire.envid)}" if wire.envid else "")
        notify = " NOTIFY=FAILURE,DELAY"
    return [f"MAIL FROM:{_path(wire.sender)}{options}\r\n".encode(),
            *(f"RCPT TO:{_path(r)}{notify}\r\n".encode()
              for r in (wire.addresses if addresses is None else addresses)),
            b"DATA\r\n"]


def commands_ahead(host: smtplib.SMTP, upcoming: Upcoming) -> bytes:
    """The next message's commands, to send with this message's content; empty when the
    server does not pipeline or the next message cannot be sent as it is."""
    if not host.has_extn("pipelining") or host.debuglevel:
        return b""
    wire = on_the_wire(host, upcoming.sender, upcoming.recipients)
    if not isinstance(wire, Wire) or wire.refused:
        return b""
    return b"".join(envelope_commands(host, wire, upcoming.size))


def _path(address: str) -> str:
    """``<user@example.com>`` for MAIL FROM / RCPT TO."""
    if BARE_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _outcome(reply: Reply) -> DeliveryOutcome:
    return DeliveryOutcome.from_reply(*reply)


def _all(recipients: Sequence[str], reply: Reply) -> dict[str, DeliveryOutcome]:
    return {r: _outcome(reply) for r in recipients}
