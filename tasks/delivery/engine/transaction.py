"""One SMTP mail transaction (MAIL FROM, RCPT TO, DATA) on an open session.

Where the server advertises PIPELINING (RFC 2920) ``MAIL FROM``, every
``RCPT TO`` and ``DATA`` go out in one write, and the next message's commands
go out with this message's content (RFC 2920 allows message content as the
first "command" of a group), so on a busy session a message costs one round
trip instead of three plus one per recipient. Every recipient's outcome comes
from the reply that concerns it; a refused transaction is reset (RSET) so the
session can carry the next message.

What each reply does comes from the one reply table (:func:`tasks.delivery.engine.outcome.meaning`);
the envelope on the wire from :mod:`tasks.delivery.engine.envelope`.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tasks.delivery.engine.envelope import (
    Reply,
    Upcoming,
    Wire,
    commands_ahead,
    envelope_commands,
    on_the_wire,
)
from tasks.delivery.engine.outcome import DeliveryOutcome, is_throttle, meaning
from tasks.vocabulary import Status

Ahead = bytes | Callable[[], bytes]  # the next message's commands, or what gives them
_MAX_REPLY_LINE = 8192  # as smtplib


class SessionClosing(Exception):
    """The session must end (a 421, or a relay-wide refusal such as a 4xx to ``MAIL FROM``)
    after the recipients were classified. *relay_wide*: the rest of the batch must not be
    tried on this relay now; *throttle*: the reply asked for mail more slowly."""

    def __init__(self, outcomes: dict[str, DeliveryOutcome], *, relay_wide: bool = False,
                 throttle: bool = False, reason: str = "421") -> None:
        super().__init__(reason)
        self.outcomes = outcomes
        self.relay_wide = relay_wide
        self.throttle = throttle
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Transacted:
    """Each recipient's outcome, whether the next message's commands went out, and
    whether a reply asked for mail more slowly; *transactions*: how many ``MAIL FROM`` were sent."""

    outcomes: dict[str, DeliveryOutcome]
    ahead: bool
    throttle: bool = False
    transactions: int = 1


def transaction(host: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, *,
                sent_ahead: bool = False, then: Ahead = b"",
                pace: Callable[[], None] | None = None) -> Transacted:
    """One message: a MAIL/RCPT/DATA transaction, pipelined where the server allows it,
    and more at once on the same session for recipients refused with "too many
    recipients" (RFC 5321 .4.5.3.1.10).

    Outcomes are keyed by *recipients* as given; on the wire every domain is an
    A-label. *sent_ahead*: this message's commands went out with the previous
    message's content, so only their replies are read here. *then*: the next
    message's commands (:func:`commands_ahead`), or a function that gives them (or
    ``b""``) when they are about to go out, written together with this
    message's content unless recipients are left for another transaction; the
    caller must send that message next on this session or drop the session. The
    result says whether *then* went out. *pace* is called before each further
    ``MAIL FROM`` (between transactions: none is open while it waits).
    """
    wire = on_the_wire(host, sender, recipients)
    if not isinstance(wire, Wire):
        return Transacted(wire, ahead=False, transactions=0)
    outcomes: dict[str, DeliveryOutcome] = {}
    pending, count, throttle, ahead = wire.addresses, 0, False, False
    try:
        while pending:
            if count and pace is not None:
                pace()
            done = _transaction(host, wire, pending, data, sent_ahead=sent_ahead and not count,
                                then=then)
            count += 1
            outcomes.update(done.outcomes)
            throttle = throttle or done.throttle
            ahead = done.ahead
            left = [r for r in pending if r not in done.outcomes]
            if len(left) == len(pending):  # nobody taken: another round would do the same
                outcomes.update({r: DeliveryOutcome.untried(452, b"4.5.3 too many recipients")
                                 for r in left})
                break
            pending = left
    except SessionClosing as closing:
        mine = {**outcomes, **closing.outcomes}
        unsaid = DeliveryOutcome.untried(421, closing.reason)
        raise SessionClosing({**{r: mine.get(w, unsaid) for r, w in wire.by_recipient.items()},
                              **wire.refused},
                             relay_wide=closing.relay_wide, throttle=closing.throttle,
                             reason=closing.reason) from None
    by_given = {r: outcomes[w] for r, w in wire.by_recipient.items()}
    return Transacted({**by_given, **wire.refused}, ahead, throttle, count)


def _transaction(host: smtplib.SMTP, wire: Wire, recipients: list[str], data: bytes, *,
                 sent_ahead: bool, then: Ahead) -> Transacted:
    """One transaction for *recipients*; those refused as "too many recipients" are left
    out of the outcomes (and nothing is sent ahead), for the next transaction."""
    commands = envelope_commands(host, wire, len(data), recipients)
    mail, *rcpts, data_command = commands
    pipelined = host.has_extn("pipelining")
    data_reply: Reply | None = None
    if pipelined:
        if not sent_ahead:
            host.send(b"".join(commands))
        mail_reply, *rcpt_replies = _replies(host, len(commands))
        if len(rcpt_replies) > len(rcpts):
            data_reply = rcpt_replies.pop()
    else:
        host.send(mail)
        mail_reply, rcpt_replies = _reply(host), []
        if _ok(mail_reply):
            for command in rcpts:
                host.send(command)
                rcpt_replies.append(_reply(host))
                if meaning("rcpt", *rcpt_replies[-1]).action in ("next_transaction",
                                                                 "end_session"):
                    break
            if any(_ok(reply) for reply in rcpt_replies) and rcpt_replies[-1][0] != 421:
                host.send(data_command)
                data_reply = _reply(host)
    _mail_refused(mail_reply, recipients)
    if not _ok(mail_reply):  # 5xx: the message's recipients fail with the server's text
        return _reset(host, _all(recipients, mail_reply), _now(then) if pipelined else b"")
    outcomes: dict[str, DeliveryOutcome] = {}
    accepted: list[str] = []
    throttle = False
    for recipient, reply in zip(recipients, rcpt_replies, strict=False):
        row = meaning("rcpt", *reply)
        throttle = throttle or row.throttle
        if row.action == "end_session":
            raise _closing(recipients, {**outcomes}, reply)
        if row.action == Status.SENT:
            accepted.append(recipient)
        elif row.action != "next_transaction":
            outcomes[recipient] = _outcome(reply)
    left = len(recipients) - len(outcomes) - len(accepted)
    if left:
        then = b""  # the rest go in the next transaction, before the next message
    if data_reply is None:  # stepwise, and nobody was accepted: no DATA was sent
        return _reset(host, outcomes, b"", throttle)
    if data_reply[0] == 421:
        raise _closing(recipients, outcomes, data_reply, throttle)
    if data_reply[0] != 354:
        if _ok(data_reply):  # a server that says 2xx to DATA took no message
            data_reply = (451, b"unexpected reply to DATA: %d %s" % data_reply)
        outcomes.update({r: _outcome(data_reply) for r in accepted})
        return _reset(host, outcomes, _now(then), throttle or is_throttle(*data_reply))
    if not accepted:  # nobody to deliver to, but DATA was accepted
        ahead = _now(then)
        host.send(b".\r\n" + ahead)
        _reply(host)
        return Transacted(outcomes, bool(ahead), throttle)
    ahead = _now(then)
    host.send(_dot_stuffed(data) + ahead)
    final = _reply(host)
    if final[0] == 421:
        raise _closing(recipients, outcomes, final, throttle)
    outcomes.update({r: _outcome(final) for r in accepted})
    return Transacted(outcomes, bool(ahead), throttle or is_throttle(*final))


def _mail_refused(reply: Reply, recipients: list[str]) -> None:
    """A 421 or a 4xx to ``MAIL FROM`` refuses the relay, not these recipients."""
    row = meaning("mail", *reply)
    if row.action in ("end_session", "stop_relay"):
        raise SessionClosing(_untried(recipients, reply), relay_wide=row.action == "stop_relay"
                             or row.throttle, throttle=row.throttle,
                             reason=f"{reply[0]} {_text(reply[1])}")


def _closing(recipients: list[str], outcomes: dict[str, DeliveryOutcome], reply: Reply,
             throttle: bool = False) -> SessionClosing:
    """A 421: what a reply named stands; every other recipient is deferred uncounted."""
    untried = _untried([r for r in recipients if r not in outcomes], reply)
    row_throttle = throttle or is_throttle(*reply)
    return SessionClosing({**outcomes, **untried}, relay_wide=row_throttle,
                          throttle=row_throttle, reason=f"{reply[0]} {_text(reply[1])}")


def _untried(recipients: Sequence[str], reply: Reply) -> dict[str, DeliveryOutcome]:
    return {r: DeliveryOutcome.untried(*reply) for r in recipients}


def _now(then: Ahead) -> bytes:
    return then() if callable(then) else then


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _replies(host: smtplib.SMTP, n: int) -> list[Reply]:
    """Up to *n* pipelined replies; fewer after a 421 (the server closes after it)."""
    replies: list[Reply] = []
    while len(replies) < n:
        replies.append(_reply(host))
        if replies[-1][0] == 421:
            break
    return replies


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


def _reset(host: smtplib.SMTP, outcomes: dict[str, DeliveryOutcome], then: bytes,
           throttle: bool = False) -> Transacted:
    """End a failed transaction (RSET) so the session can carry the next message."""
    host.send(b"RSET\r\n" + then)
    reply = _reply(host)
    if reply[0] == 421:
        raise SessionClosing(outcomes, throttle=throttle or is_throttle(*reply),
                             reason=f"421 {_text(reply[1])}")
    return Transacted(outcomes, bool(then), throttle)


def _dot_stuffed(data: bytes) -> bytes:
    """*data* with leading dots doubled (RFC 5321 4.5.2) and the end-of-data line."""
    if data.startswith(b"."):
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


__all__ = ["SessionClosing", "Transacted", "Upcoming", "commands_ahead", "transaction"]
