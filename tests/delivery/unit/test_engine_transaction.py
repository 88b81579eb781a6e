"""One SMTP mail transaction against a session whose server's replies are written in advance.

:class:`ScriptedSession` is an :class:`smtplib.SMTP` that connects nowhere: what the
transaction writes is kept, write by write, and the server's replies are read from
memory by the transaction's own reply reader. That lets these tests give replies a
real server (``tests/delivery/integration/test_engine_transaction.py``) will not: a
2xx to ``DATA``, a 354 after every recipient was refused, a 421 to ``RSET``, a reply
that is not a reply, and check the per-recipient result assembled from them.
"""

from __future__ import annotations

import io
import smtplib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tasks.delivery.engine.outcome import DeliveryOutcome
from tasks.delivery.engine.transaction import SessionClosing, Transacted, transaction
from tasks.delivery.engine.transaction import _dot_stuffed as dot_stuffed
from tasks.vocabulary import Status

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

SENDER = "noreply@postroom.test"
DATA = b"From: noreply@postroom.test\r\nSubject: hello\r\n\r\nHello.\r\n"
NEXT = b"MAIL FROM:<noreply@postroom.test>\r\nRCPT TO:<cy@example.com>\r\nDATA\r\n"


class ScriptedSession(smtplib.SMTP):
    """A session past EHLO offering *extensions*, whose server answers with *replies*
    (one string each, lines joined by CRLF) in order; each write is kept in *writes*."""

    def __init__(self, replies: list[str], *extensions: str) -> None:
        super().__init__(local_hostname="client.postroom.test")  # no host: no connection
        self.esmtp_features = dict.fromkeys(extensions, "")
        self.file = io.BytesIO("".join(f"{reply}\r\n" for reply in replies).encode())
        self.sock = socket.socket()  # never connected; present so replies are read from file
        self.writes: list[bytes] = []

    def send(self, s: ReadableBuffer | str) -> None:
        self.writes.append(s.encode() if isinstance(s, str) else bytes(s))

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    @property
    def unread(self) -> bytes:
        """The replies the transaction has not read (none, when it read exactly its own)."""
        return self.file.read() if self.file is not None else b""


@pytest.fixture
def sessions() -> Iterator[list[ScriptedSession]]:
    made: list[ScriptedSession] = []
    yield made
    for session in made:
        session.close()


@pytest.fixture
def pipelined(sessions: list[ScriptedSession]) -> type[ScriptedSession]:
    """Sessions that offer PIPELINING."""

    class Pipelined(ScriptedSession):
        def __init__(self, replies: list[str], *extensions: str) -> None:
            super().__init__(replies, "pipelining", *extensions)
            sessions.append(self)

    return Pipelined


@pytest.fixture
def stepwise(sessions: list[ScriptedSession]) -> type[ScriptedSession]:
    """Sessions that do not offer PIPELINING: one command, one reply."""

    class Stepwise(ScriptedSession):
        def __init__(self, replies: list[str], *extensions: str) -> None:
            super().__init__(replies, *extensions)
            sessions.append(self)

    return Stepwise


def statuses(result: Transacted | SessionClosing) -> dict[str, tuple[str, int | None, bool]]:
    return {address: (outcome.status, outcome.smtp_code, outcome.counted)
            for address, outcome in result.outcomes.items()}


# -- what goes on the wire, and in how many writes


def test_pipelined_the_envelope_is_one_write_and_the_content_another(
        pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "250 ok", "250 ok", "354 go on", "250 queued as 1"])
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"], DATA)
    assert host.writes == [b"MAIL FROM:<noreply@postroom.test>\r\n"
                           b"RCPT TO:<ada@example.com>\r\nRCPT TO:<bob@example.com>\r\n"
                           b"DATA\r\n",
                           DATA + b".\r\n"]
    assert statuses(result) == {"ada@example.com": ("sent", 250, True),
                                "bob@example.com": ("sent", 250, True)}
    assert host.unread == b""


def test_stepwise_each_command_waits_for_its_reply(stepwise: type[ScriptedSession]) -> None:
    host = stepwise(["250 ok", "250 ok", "250 ok", "354 go on", "250 queued as 1"])
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"], DATA)
    assert host.writes == [b"MAIL FROM:<noreply@postroom.test>\r\n",
                           b"RCPT TO:<ada@example.com>\r\n", b"RCPT TO:<bob@example.com>\r\n",
                           b"DATA\r\n", DATA + b".\r\n"]
    assert (result.transactions, result.ahead, result.throttle) == (1, False, False)
    assert host.unread == b""


def test_commands_sent_ahead_are_not_written_again(pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "250 ok", "354 go on", "250 queued"])
    result = transaction(host, SENDER, ["ada@example.com"], DATA, sent_ahead=True, then=NEXT)
    assert host.writes == [DATA + b".\r\n" + NEXT]  # only the content, and the next commands
    assert result.ahead
    assert statuses(result) == {"ada@example.com": ("sent", 250, True)}


def test_stepwise_no_further_recipient_goes_after_too_many_recipients(
        stepwise: type[ScriptedSession]) -> None:
    host = stepwise(["250 ok", "250 ok", "452 4.5.3 too many recipients", "354 go on",
                     "250 queued as 1",
                     "250 ok", "250 ok", "250 ok", "354 go on", "250 queued as 2"])
    paced: list[int] = []
    result = transaction(host, SENDER, ["a@example.com", "b@example.com", "c@example.com"],
                         DATA, pace=lambda: paced.append(len(host.writes)))
    first_data = host.writes.index(b"DATA\r\n")
    assert b"RCPT TO:<c@example.com>\r\n" not in host.writes[:first_data]
    assert host.writes[first_data + 2:first_data + 5] == [
        b"MAIL FROM:<noreply@postroom.test>\r\n", b"RCPT TO:<b@example.com>\r\n",
        b"RCPT TO:<c@example.com>\r\n"]
    assert paced == [first_data + 2]  # before the second MAIL FROM only
    assert result.transactions == 2
    assert {s for s, _, _ in statuses(result).values()} == {"sent"}
    assert host.unread == b""


# -- replies a real server seldom gives


@pytest.mark.parametrize("kind", ["pipelined", "stepwise"])
def test_a_2xx_to_data_took_no_message_and_defers_the_recipient(
        request: pytest.FixtureRequest, kind: str) -> None:
    session: type[ScriptedSession] = request.getfixturevalue(kind)
    host = session(["250 ok", "250 ok", "250 2.0.0 fine", "250 reset"])
    result = transaction(host, SENDER, ["ada@example.com"], DATA)
    outcome = result.outcomes["ada@example.com"]
    assert (outcome.status, outcome.smtp_code, outcome.counted) == ("deferred", 451, True)
    assert outcome.error == "unexpected reply to DATA: 250 2.0.0 fine"
    assert host.writes[-1] == b"RSET\r\n"
    assert b"Hello." not in host.written  # the content never went
    assert host.unread == b""


def test_a_354_after_every_recipient_was_refused_sends_an_empty_message(
        pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "550 5.1.1 no such user", "354 go on",
                      "554 5.5.1 no valid recipients"])
    result = transaction(host, SENDER, ["x@example.com"], DATA, then=NEXT)
    assert host.writes[-1] == b".\r\n" + NEXT  # an empty message ends the transaction
    assert b"Hello." not in host.written
    assert result.ahead
    assert statuses(result) == {"x@example.com": ("failed", 550, True)}
    assert result.outcomes["x@example.com"].error == "5.1.1 no such user"
    assert host.unread == b""


def test_a_421_to_rset_closes_the_session_keeping_what_was_said(
        stepwise: type[ScriptedSession]) -> None:
    host = stepwise(["250 ok", "550 5.1.1 no such user", "421 4.3.2 closing"])
    with pytest.raises(SessionClosing) as raised:
        transaction(host, SENDER, ["x@example.com"], DATA)
    closing = raised.value
    assert host.writes[-1] == b"RSET\r\n"
    assert closing.reason == "421 4.3.2 closing"
    assert (closing.relay_wide, closing.throttle) == (False, False)
    assert statuses(closing) == {"x@example.com": ("failed", 550, True)}


def test_a_reply_without_a_code_defers_the_recipient(stepwise: type[ScriptedSession]) -> None:
    host = stepwise(["250 ok", "what is this", "250 reset"])
    result = transaction(host, SENDER, ["ada@example.com"], DATA)
    assert statuses(result) == {"ada@example.com": ("deferred", -1, True)}
    assert b"DATA\r\n" not in host.writes  # nobody accepted: no content asked for
    assert host.writes[-1] == b"RSET\r\n"


def test_a_multi_line_reply_is_one_reply(pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "550-5.1.1 no such user\r\n550-5.1.1 really\r\n550 5.1.1 see",
                      "250 ok", "354 go on", "250 queued"])
    result = transaction(host, SENDER, ["x@example.com", "bob@example.com"], DATA)
    assert result.outcomes["x@example.com"].error == ("5.1.1 no such user\n5.1.1 really\n"
                                                      "5.1.1 see")
    assert result.outcomes["bob@example.com"].status == "sent"
    assert host.unread == b""


def test_a_server_that_goes_silent_is_disconnected_and_the_session_closed(
        pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "250 ok"])  # no reply to DATA
    with pytest.raises(smtplib.SMTPServerDisconnected):
        transaction(host, SENDER, ["ada@example.com"], DATA)
    assert host.sock is None and host.file is None


# -- each recipient's result, keyed as given


def test_a_closing_names_every_recipient_as_given_with_the_refused_ones(
        pipelined: type[ScriptedSession]) -> None:
    """No SMTPUTF8: jürgen cannot be written; the IDN goes as its A-label; bob's 421 ends it."""
    host = pipelined(["250 ok", "550 5.1.1 no such user", "421 4.3.2 shutting down"])
    with pytest.raises(SessionClosing) as raised:
        transaction(host, SENDER, ["ada@bücher.de", "jürgen@example.com", "bob@example.com",
                                   "cy@example.com"], DATA)
    assert b"RCPT TO:<ada@xn--bcher-kva.de>" in host.written
    assert b"j\xc3\xbcrgen" not in host.written
    closing = raised.value
    assert statuses(closing) == {"ada@bücher.de": ("failed", 550, True),
                                 "jürgen@example.com": ("failed", 553, True),
                                 "bob@example.com": ("deferred", 421, False),
                                 "cy@example.com": ("deferred", 421, False)}
    assert closing.reason == "421 4.3.2 shutting down"


def test_a_closing_in_a_further_transaction_keeps_the_earlier_outcomes(
        pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "250 ok", "452 4.5.3 too many recipients",
                      "452 4.5.3 too many recipients", "354 go on", "250 queued as 1",
                      "421 4.7.0 too much mail, slow down"])
    with pytest.raises(SessionClosing) as raised:
        transaction(host, SENDER, ["a@example.com", "b@example.com", "c@example.com"], DATA)
    closing = raised.value
    assert (closing.relay_wide, closing.throttle) == (True, True)
    assert statuses(closing) == {"a@example.com": ("sent", 250, True),
                                 "b@example.com": ("deferred", 421, False),
                                 "c@example.com": ("deferred", 421, False)}
    assert host.unread == b""  # after a 421 nothing more is read


def test_a_refusal_to_data_fails_only_the_accepted_recipients(
        pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "250 ok", "450 4.2.0 busy", "250 ok",
                      "554 5.3.4 message too big", "250 reset"])
    result = transaction(host, SENDER, ["ada@example.com", "x@example.com", "bob@example.com"],
                         DATA)
    assert statuses(result) == {"ada@example.com": ("failed", 554, True),
                                "x@example.com": ("deferred", 450, True),
                                "bob@example.com": ("failed", 554, True)}
    assert result.outcomes["x@example.com"].error == "4.2.0 busy"
    assert not result.throttle


def test_a_throttling_refusal_to_data_says_so(pipelined: type[ScriptedSession]) -> None:
    host = pipelined(["250 ok", "250 ok", "451 4.7.1 rate limit exceeded", "250 reset"])
    result = transaction(host, SENDER, ["ada@example.com"], DATA)
    assert result.throttle
    assert result.outcomes["ada@example.com"] == DeliveryOutcome(
        Status.DEFERRED, 451, "4.7.1 rate limit exceeded")


# -- the content on the wire


@pytest.mark.parametrize(("data", "wire"), [
    (b"Subject: a\r\n\r\nbody\r\n", b"Subject: a\r\n\r\nbody\r\n.\r\n"),
    (b"Subject: a\r\n\r\nno final newline", b"Subject: a\r\n\r\nno final newline\r\n.\r\n"),
    (b".first line", b"..first line\r\n.\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),  # a lone dot is not the end
    (b"a\r\n..two\r\n.x\r\n", b"a\r\n...two\r\n..x\r\n.\r\n"),
    (b"no dot. inside.\r\n", b"no dot. inside.\r\n.\r\n"),
])
def test_the_content_is_dot_stuffed_and_ends_with_the_end_of_data_line(data: bytes,
                                                                       wire: bytes) -> None:
    assert dot_stuffed(data) == wire
