"""One SMTP mail transaction (MAIL FROM, RCPT TO, DATA) on an open session.

Where the server advertises PIPELINING (RFC 2920) ``MAIL FROM``, every
``RCPT TO`` and ``DATA`` go out in one write, and the next message's commands
go out with this message's content (RFC 2920 allows message content as the
first "command" of a group), so on a busy session a message costs one round
trip instead of three plus one per recipient. Every recipient's outcome comes
from the reply that concerns it; a refused transaction is reset (RSET) so the
session can carry the next message.

Domains go out as A-labels (``RCPT TO:<ada@xn--bcher-kva.de>``); a local part
that is not ASCII needs SMTPUTF8, and without it the recipient fails with a
clear 553 rather than the message going out mangled.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.engine.compose import BARE_ADDRESS, a_label_address
from tasks.engine.outcome import DeliveryOutcome

Reply = tuple[int, bytes]
_MAX_REPLY_LINE = 8192  # as smtplib

NO_A_LABEL: Reply = (553, b"5.1.3 the domain has no A-label (IDNA) form")
NO_SMTPUTF8: Reply = (553, b"5.6.7 the address has a non-ASCII local part and the server "
                           b"does not offer SMTPUTF8")


class SessionClosing(Exception):
    """The server ended the session (421) after classifying the recipients."""

    def __init__(self, outcomes: dict[str, DeliveryOutcome]) -> None:
        super().__init__("421")
        self.outcomes = outcomes


@dataclass(frozen=True, slots=True)
class Transacted:
    """Each recipient's outcome, and whether the next message's commands went out."""

    outcomes: dict[str, DeliveryOutcome]
    ahead: bool


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

    @property
    def addresses(self) -> list[str]:
        return list(dict.fromkeys(self.by_recipient.values()))


def on_the_wire(host: smtplib.SMTP, sender: str,
                recipients: Sequence[str]) -> Wire | dict[str, DeliveryOutcome]:
    """The envelope to send, or every recipient's outcome if nothing can be sent."""
    try:
        wire_sender = a_label_address(sender)
    except ValueError:
        return _all(recipients, NO_A_LABEL)
    wire: dict[str, str] = {}
    refused: dict[str, DeliveryOutcome] = {}
    for recipient in recipients:
        try:
            wire[recipient] = a_label_address(recipient)
        except ValueError:
            refused[recipient] = _outcome(NO_A_LABEL)
    utf8 = not (wire_sender.isascii() and all(w.isascii() for w in wire.values()))
    if utf8 and not host.has_extn("smtputf8"):
        return {**_all(recipients, NO_SMTPUTF8), **refused}
    if not wire:
        return refused
    return Wire(wire_sender, wire, refused, utf8)


def envelope_commands(host: smtplib.SMTP, wire: Wire, size: int) -> list[bytes]:
    """``MAIL FROM``, each ``RCPT TO`` and ``DATA`` for *wire*."""
    options = f" SIZE={size}" if host.has_extn("size") else ""
    if wire.utf8:
        options += " SMTPUTF8"
    return [f"MAIL FROM:{_path(wire.sender)}{options}\r\n".encode(),
            *(f"RCPT TO:{_path(r)}\r\n".encode() for r in wire.addresses), b"DATA\r\n"]


def commands_ahead(host: smtplib.SMTP, upcoming: Upcoming) -> bytes:
    """The next message's commands, to send with this message's content; empty when the
    server does not pipeline or the next message cannot be sent as it is."""
    if not host.has_extn("pipelining") or host.debuglevel:
        return b""
    wire = on_the_wire(host, upcoming.sender, upcoming.recipients)
    if not isinstance(wire, Wire) or wire.refused:
        return b""
    return b"".join(envelope_commands(host, wire, upcoming.size))


def transaction(host: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, *,
                sent_ahead: bool = False, then: bytes = b"") -> Transacted:
    """One MAIL/RCPT/DATA transaction, pipelined where the server allows it.

    Outcomes are keyed by *recipients* as given; on the wire every domain is an
    A-label. *sent_ahead*: this message's commands went out with the previous
    message's content, so only their replies are read here. *then*: the next
    message's commands (:func:`commands_ahead`), written together with this
    message's content; the caller must send that message next on this session
    or drop the session. The result says whether *then* went out.
    """
    wire = on_the_wire(host, sender, recipients)
    if not isinstance(wire, Wire):
        return Transacted(wire, ahead=False)
    try:
        done = _transaction(host, wire, data, sent_ahead=sent_ahead, then=then)
    except SessionClosing as closing:
        raise SessionClosing({r: closing.outcomes[w]
                              for r, w in wire.by_recipient.items()}) from None
    outcomes = {r: done.outcomes[w] for r, w in wire.by_recipient.items()}
    return Transacted({**outcomes, **wire.refused}, done.ahead)


def _transaction(host: smtplib.SMTP, wire: Wire, data: bytes, *, sent_ahead: bool,
                 then: bytes) -> Transacted:
    recipients = wire.addresses
    commands = envelope_commands(host, wire, len(data))
    mail, *rcpts, data_command = commands
    if host.has_extn("pipelining"):
        if not sent_ahead:
            host.send(b"".join(commands))
        mail_reply = _reply(host)
        rcpt_replies = [_reply(host) for _ in rcpts]
        data_reply = _reply(host)
    else:
        host.send(mail)
        mail_reply = _reply(host)
        if not _ok(mail_reply):
            return Transacted(_abandon(host, _all(recipients, mail_reply)), ahead=False)
        rcpt_replies = []
        for command in rcpts:
            host.send(command)
            rcpt_replies.append(_reply(host))
        if not any(_ok(reply) for reply in rcpt_replies):
            return Transacted(_abandon(host, dict(zip(recipients, map(_outcome, rcpt_replies),
                                                      strict=True))), ahead=False)
        host.send(data_command)
        data_reply = _reply(host)
    if not _ok(mail_reply):
        return Transacted(_abandon(host, _all(recipients, mail_reply), then=then), bool(then))
    refused = {r: reply for r, reply in zip(recipients, rcpt_replies, strict=True)
               if not _ok(reply)}
    if data_reply[0] != 354:
        if _ok(data_reply):  # a server that says 2xx to DATA took no message
            data_reply = (451, b"unexpected reply to DATA: %d %s" % data_reply)
        outcomes = {r: _outcome(refused.get(r, data_reply)) for r in recipients}
        return Transacted(_abandon(host, outcomes, then=then), bool(then))
    if len(refused) == len(recipients):  # nobody to deliver to, but DATA was accepted
        host.send(b".\r\n" + then)
        _reply(host)
        return Transacted({r: _outcome(refused[r]) for r in recipients}, bool(then))
    host.send(_dot_stuffed(data) + then)
    final = _reply(host)
    outcomes = {r: _outcome(refused.get(r, final)) for r in recipients}
    if final[0] == 421:
        raise SessionClosing(outcomes)
    return Transacted(outcomes, bool(then))


def _path(address: str) -> str:
    """``<user@example.com>`` for MAIL FROM / RCPT TO."""
    if BARE_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _reply(host: smtplib.SMTP) -> Reply:
    """One reply, multi-line or not; smtplib's reader when debugging (it prints)."""
    if host.debuglevel or host.sock is None:
        code, text = host.getreply()
        return code, text
    if host.file is None:
        host.file = host.sock.makefile("rb")
    lines: list[bytes] = []
    while True:
        line = host.file.readline(_MAX_REPLY_LINE + 1)
        if not line:
            host.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if len(line) > _MAX_REPLY_LINE:
            host.close()
            raise smtplib.SMTPResponseException(500, b"Line too long.")
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            break
    try:
        code = int(line[:3])
    except ValueError:
        code = -1
    return code, b"\n".join(lines)


def _ok(reply: Reply) -> bool:
    return 200 <= reply[0] < 300


def _outcome(reply: Reply) -> DeliveryOutcome:
    return DeliveryOutcome.from_reply(*reply)


def _all(recipients: Sequence[str], reply: Reply) -> dict[str, DeliveryOutcome]:
    return {r: _outcome(reply) for r in recipients}


def _abandon(host: smtplib.SMTP, outcomes: dict[str, DeliveryOutcome], *,
             then: bytes = b"") -> dict[str, DeliveryOutcome]:
    """End a failed transaction so the session can carry the next message."""
    if any(o.smtp_code == 421 for o in outcomes.values()):
        raise SessionClosing(outcomes)
    host.send(b"RSET\r\n" + then)
    code, _ = _reply(host)
    if code == 421:
        raise SessionClosing(outcomes)
    return outcomes


def _dot_stuffed(data: bytes) -> bytes:
    """*data* with leading dots doubled (RFC 5321 4.5.2) and the end-of-data line."""
    if data.startswith(b"."):
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"
