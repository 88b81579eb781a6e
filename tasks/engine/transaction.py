"""One SMTP mail transaction (MAIL FROM, RCPT TO, DATA) on an open session.

Where the server advertises PIPELINING (RFC 2920) ``MAIL FROM``, every
``RCPT TO`` and ``DATA`` go out in one write, so a message costs two round
trips instead of three plus one per recipient. Every recipient's outcome comes
from the reply that concerns it; a refused transaction is reset (RSET) so the
session can carry the next message.

Domains go out as A-labels (``RCPT TO:<ada@xn--bcher-kva.de>``); a local part
that is not ASCII needs SMTPUTF8, and without it the recipient fails with a
clear 553 rather than the message going out mangled.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence

from tasks.engine.compose import BARE_ADDRESS, a_label_address
from tasks.engine.outcome import DeliveryOutcome

Reply = tuple[int, bytes]
_MAX_REPLY_LINE = 8192  # as smtplib


class SessionClosing(Exception):
    """The server ended the session (421) after classifying the recipients."""

    def __init__(self, outcomes: dict[str, DeliveryOutcome]) -> None:
        super().__init__("421")
        self.outcomes = outcomes


NO_A_LABEL: Reply = (553, b"5.1.3 the domain has no A-label (IDNA) form")
NO_SMTPUTF8: Reply = (553, b"5.6.7 the address has a non-ASCII local part and the server "
                           b"does not offer SMTPUTF8")


def transaction(host: smtplib.SMTP, sender: str, recipients: list[str],
                data: bytes) -> dict[str, DeliveryOutcome]:
    """One MAIL/RCPT/DATA transaction, pipelined where the server allows it.

    Outcomes are keyed by *recipients* as given; on the wire every domain is an A-label.
    """
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
    addresses = list(dict.fromkeys(wire.values()))
    try:
        outcomes = _transaction(host, wire_sender, addresses, data, utf8)
    except SessionClosing as closing:
        raise SessionClosing({r: closing.outcomes[w] for r, w in wire.items()}) from None
    return {**{r: outcomes[w] for r, w in wire.items()}, **refused}


def _transaction(host: smtplib.SMTP, sender: str, recipients: list[str], data: bytes,
                 utf8: bool) -> dict[str, DeliveryOutcome]:
    options = f" SIZE={len(data)}" if host.has_extn("size") else ""
    if utf8:
        options += " SMTPUTF8"
    mail = f"MAIL FROM:{_path(sender)}{options}\r\n".encode()
    rcpts = [f"RCPT TO:{_path(r)}\r\n".encode() for r in recipients]
    if host.has_extn("pipelining"):
        host.send(b"".join((mail, *rcpts, b"DATA\r\n")))
        mail_reply = _reply(host)
        rcpt_replies = [_reply(host) for _ in rcpts]
        data_reply = _reply(host)
    else:
        host.send(mail)
        mail_reply = _reply(host)
        if not _ok(mail_reply):
            return _abandon(host, _all(recipients, mail_reply))
        rcpt_replies = []
        for command in rcpts:
            host.send(command)
            rcpt_replies.append(_reply(host))
        if not any(_ok(reply) for reply in rcpt_replies):
            return _abandon(host, dict(zip(recipients, map(_outcome, rcpt_replies),
                                           strict=True)))
        host.send(b"DATA\r\n")
        data_reply = _reply(host)
    if not _ok(mail_reply):
        return _abandon(host, _all(recipients, mail_reply))
    refused = {r: reply for r, reply in zip(recipients, rcpt_replies, strict=True)
               if not _ok(reply)}
    if data_reply[0] != 354:
        if _ok(data_reply):  # a server that says 2xx to DATA took no message
            data_reply = (451, b"unexpected reply to DATA: %d %s" % data_reply)
        outcomes = {r: _outcome(refused.get(r, data_reply)) for r in recipients}
        return _abandon(host, outcomes)
    if len(refused) == len(recipients):  # nobody to deliver to, but DATA was accepted
        host.send(b".\r\n")
        _reply(host)
        return {r: _outcome(refused[r]) for r in recipients}
    host.send(_dot_stuffed(data))
    final = _reply(host)
    outcomes = {r: _outcome(refused.get(r, final)) for r in recipients}
    if final[0] == 421:
        raise SessionClosing(outcomes)
    return outcomes


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


def _abandon(host: smtplib.SMTP, outcomes: dict[str, DeliveryOutcome]) -> dict[str,
                                                                               DeliveryOutcome]:
    """End a failed transaction so the session can carry the next message."""
    if any(o.smtp_code == 421 for o in outcomes.values()):
        raise SessionClosing(outcomes)
    host.send(b"RSET\r\n")
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
