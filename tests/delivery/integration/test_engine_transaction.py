"""One SMTP mail transaction on an open session, against a real aiosmtpd server.

Every test runs with the server advertising PIPELINING (RFC 2920) and without it, so
both the pipelined and the stepwise path give the same outcomes.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tasks.delivery.engine.transaction import (
    SessionClosing,
    Transacted,
    Upcoming,
    commands_ahead,
    transaction,
)
from tests.support.smtp_server import DROP, SMTPTestServer

SENDER = "noreply@postroom.test"


def message(subject: str, body: str = "Hello.") -> bytes:
    return (f"From: {SENDER}\r\nTo: ada@example.com\r\nSubject: {subject}\r\n\r\n"
            f"{body}\r\n").encode()


@pytest.fixture(params=[False, True], ids=["stepwise", "pipelined"])
def smtp(request: pytest.FixtureRequest, smtp_server: SMTPTestServer) -> SMTPTestServer:
    smtp_server.handler.pipelining = request.param
    return smtp_server


@pytest.fixture
def host(smtp: SMTPTestServer) -> Iterator[smtplib.SMTP]:
    """A session open on the test server, greeted and past EHLO."""
    client = smtplib.SMTP("127.0.0.1", smtp.port, timeout=5)
    client.ehlo("client.postroom.test")
    yield client
    client.close()


def statuses(result: Transacted | SessionClosing) -> dict[str, str]:
    return {address: outcome.status for address, outcome in result.outcomes.items()}


def too_many_after(smtp: SMTPTestServer, limit: int) -> None:
    """The server takes at most *limit* recipients per transaction (452 4.5.3 after)."""
    taken = [0]

    def on_mail(sender: str) -> None:
        taken[0] = 0
        return None

    def on_rcpt(address: str) -> str | None:
        taken[0] += 1
        return "452 4.5.3 too many recipients" if taken[0] > limit else None

    smtp.handler.mail_reply = on_mail
    smtp.handler.rcpt_reply = on_rcpt


def test_every_recipient_is_sent_in_one_transaction(smtp: SMTPTestServer,
                                                    host: smtplib.SMTP) -> None:
    data = message("one")
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"], data)
    assert statuses(result) == {"ada@example.com": "sent", "bob@example.com": "sent"}
    assert result.outcomes["ada@example.com"].smtp_code == 250
    assert (result.transactions, result.ahead, result.throttle) == (1, False, False)
    [received] = smtp.received
    assert received.sender == SENDER
    assert received.recipients == ["ada@example.com", "bob@example.com"]
    assert received.data.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


def test_leading_dots_are_stuffed_and_the_content_arrives_whole(smtp: SMTPTestServer,
                                                                host: smtplib.SMTP) -> None:
    data = b".starts with a dot\r\nSubject: dots\r\n\r\n.\r\n..two\r\nno final newline"
    result = transaction(host, SENDER, ["ada@example.com"], data)
    assert statuses(result) == {"ada@example.com": "sent"}
    [received] = smtp.received
    assert received.data.replace(b"\r\n", b"\n") == (
        b".starts with a dot\nSubject: dots\n\n.\n..two\nno final newline\n")


def test_a_refused_recipient_does_not_fail_the_others(smtp: SMTPTestServer,
                                                      host: smtplib.SMTP) -> None:
    replies = {"x@example.com": "550 5.1.1 no such user", "y@example.com": "450 4.2.0 busy"}
    smtp.handler.rcpt_reply = replies.get
    result = transaction(host, SENDER, ["ada@example.com", "x@example.com", "y@example.com"],
                         message("two"))
    assert statuses(result) == {"ada@example.com": "sent", "x@example.com": "failed",
                                "y@example.com": "deferred"}
    failed = result.outcomes["x@example.com"]
    assert (failed.smtp_code, failed.error, failed.counted) == (550, "5.1.1 no such user", True)
    assert [r.recipients for r in smtp.received] == [["ada@example.com"]]


def test_when_every_recipient_is_refused_no_message_goes_and_the_session_carries_on(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("x") else None
    refused = transaction(host, SENDER, ["x1@example.com", "x2@example.com"], message("none"))
    assert statuses(refused) == {"x1@example.com": "failed", "x2@example.com": "failed"}
    assert smtp.received == []
    after = transaction(host, SENDER, ["ada@example.com"], message("after"))
    assert statuses(after) == {"ada@example.com": "sent"}
    assert [r.recipients for r in smtp.received] == [["ada@example.com"]]
    assert smtp.session_count == 1


def test_a_5xx_to_mail_from_fails_the_message_and_the_session_carries_on(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.mail_reply = lambda sender: "553 5.7.1 sender not allowed"
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"], message("m"))
    assert statuses(result) == {"ada@example.com": "failed", "bob@example.com": "failed"}
    assert result.outcomes["bob@example.com"].error == "5.7.1 sender not allowed"
    smtp.handler.mail_reply = lambda sender: None
    after = transaction(host, SENDER, ["cy@example.com"], message("after"))
    assert statuses(after) == {"cy@example.com": "sent"}


@pytest.mark.parametrize(("reply", "relay_wide", "throttle"), [
    ("451 4.3.0 try again later", True, False),  # a 4xx to MAIL FROM refuses the relay
    ("421 4.3.2 shutting down", False, False),
    ("421 4.7.0 too much mail from your address", True, True),
])
def test_a_relay_wide_refusal_to_mail_from_closes_the_session_charging_nobody(
        smtp: SMTPTestServer, host: smtplib.SMTP, reply: str, relay_wide: bool,
        throttle: bool) -> None:
    smtp.handler.mail_reply = lambda sender: reply
    with pytest.raises(SessionClosing) as raised:
        transaction(host, SENDER, ["ada@example.com", "bob@example.com"], message("m"))
    closing = raised.value
    assert (closing.relay_wide, closing.throttle) == (relay_wide, throttle)
    assert closing.reason == reply
    assert statuses(closing) == {"ada@example.com": "deferred", "bob@example.com": "deferred"}
    assert not any(outcome.counted for outcome in closing.outcomes.values())
    assert smtp.received == []


def test_a_421_to_a_recipient_keeps_what_was_said_and_defers_the_rest_uncounted(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    replies = {"x@example.com": "550 5.1.1 no such user", "c@example.com": "421 4.3.2 bye"}
    smtp.handler.rcpt_reply = replies.get
    with pytest.raises(SessionClosing) as raised:
        transaction(host, SENDER, ["x@example.com", "b@example.com", "c@example.com",
                                   "d@example.com"], message("m"))
    closing = raised.value
    assert closing.reason == "421 4.3.2 bye"
    assert closing.outcomes["x@example.com"].status == "failed"
    assert closing.outcomes["x@example.com"].counted
    for address in ("b@example.com", "c@example.com", "d@example.com"):
        assert closing.outcomes[address].status == "deferred", address
        assert not closing.outcomes[address].counted, address
    assert smtp.received == []


@pytest.mark.parametrize(("reply", "status"), [("451 4.3.0 queue full", "deferred"),
                                               ("554 5.6.0 message refused", "failed")])
def test_the_reply_to_the_content_names_every_accepted_recipient(
        smtp: SMTPTestServer, host: smtplib.SMTP, reply: str, status: str) -> None:
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("x") else None
    smtp.handler.data_reply = lambda envelope: reply
    result = transaction(host, SENDER, ["ada@example.com", "x@example.com", "bob@example.com"],
                         message("m"))
    assert statuses(result) == {"ada@example.com": status, "x@example.com": "failed",
                                "bob@example.com": status}
    assert result.outcomes["ada@example.com"].error == reply[4:]
    assert not result.throttle
    smtp.handler.data_reply = lambda envelope: None
    after = transaction(host, SENDER, ["cy@example.com"], message("after"))
    assert statuses(after) == {"cy@example.com": "sent"}


def test_a_421_to_the_content_closes_the_session(smtp: SMTPTestServer,
                                                 host: smtplib.SMTP) -> None:
    smtp.handler.data_reply = lambda envelope: "421 4.7.0 rate limit exceeded, slow down"
    with pytest.raises(SessionClosing) as raised:
        transaction(host, SENDER, ["ada@example.com"], message("m"))
    assert raised.value.throttle and raised.value.relay_wide
    outcome = raised.value.outcomes["ada@example.com"]
    assert (outcome.status, outcome.smtp_code, outcome.counted) == ("deferred", 421, False)


def test_a_connection_dropped_mid_transaction_raises_disconnected(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.data_reply = lambda envelope: DROP
    with pytest.raises(smtplib.SMTPServerDisconnected):
        transaction(host, SENDER, ["ada@example.com"], message("m"))
    assert smtp.received == []


@pytest.mark.parametrize(("stage", "reply"), [
    ("rcpt", "451 4.7.1 rate limit exceeded"),
    ("data", "452 4.7.0 too much mail, slow down"),
])
def test_a_throttling_reply_says_so(smtp: SMTPTestServer, host: smtplib.SMTP, stage: str,
                                    reply: str) -> None:
    if stage == "rcpt":
        smtp.handler.rcpt_reply = lambda a: reply if a == "ada@example.com" else None
    else:
        smtp.handler.data_reply = lambda envelope: reply
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"], message("m"))
    assert result.throttle
    assert result.outcomes["ada@example.com"].status == "deferred"


def test_an_ordinary_4xx_is_not_a_throttle(smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.rcpt_reply = lambda a: "451 4.3.0 try later" if a == "ada@example.com" else None
    assert not transaction(host, SENDER, ["ada@example.com", "bob@example.com"],
                           message("m")).throttle


def test_too_many_recipients_go_in_further_transactions_paced(smtp: SMTPTestServer,
                                                              host: smtplib.SMTP) -> None:
    too_many_after(smtp, 2)
    paced: list[int] = []
    recipients = [f"r{n}@example.com" for n in range(5)]
    result = transaction(host, SENDER, recipients, message("m"),
                         pace=lambda: paced.append(len(smtp.handler.mail_times)))
    assert statuses(result) == dict.fromkeys(recipients, "sent")
    assert result.transactions == 3
    assert [r.recipients for r in smtp.received] == [recipients[:2], recipients[2:4],
                                                     recipients[4:]]
    assert paced == [1, 2]  # before each further MAIL FROM, never before the first
    assert {r.session for r in smtp.received} == {1}


def test_a_server_that_takes_no_recipient_at_all_defers_them_uncounted(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    too_many_after(smtp, 0)
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"], message("m"))
    assert result.transactions == 1  # another round would do the same
    for outcome in result.outcomes.values():
        assert (outcome.status, outcome.smtp_code, outcome.counted) == ("deferred", 452, False)
    assert smtp.received == []


def test_outcomes_are_keyed_as_given_and_each_address_goes_once(smtp: SMTPTestServer,
                                                               host: smtplib.SMTP) -> None:
    result = transaction(host, SENDER, ["ada@bücher.de", "ada@xn--bcher-kva.de",
                                        "bob@example.com", "bob@example.com"], message("m"))
    assert statuses(result) == {"ada@bücher.de": "sent", "ada@xn--bcher-kva.de": "sent",
                                "bob@example.com": "sent"}
    [received] = smtp.received
    assert received.recipients == ["ada@xn--bcher-kva.de", "bob@example.com"]


@pytest.fixture(scope="module")
def plain_server() -> Iterator[SMTPTestServer]:
    """A server that does not offer SMTPUTF8."""
    server = SMTPTestServer(enable_SMTPUTF8=False).start()
    yield server
    server.stop()


@pytest.fixture
def plain(plain_server: SMTPTestServer) -> Iterator[smtplib.SMTP]:
    plain_server.reset()
    client = smtplib.SMTP("127.0.0.1", plain_server.port, timeout=5)
    client.ehlo("client.postroom.test")
    yield client
    client.close()


def test_without_smtputf8_only_a_non_ascii_local_part_fails(plain_server: SMTPTestServer,
                                                            plain: smtplib.SMTP) -> None:
    assert not plain.has_extn("smtputf8")
    result = transaction(plain, SENDER, ["jürgen@example.com", "ada@example.com"],
                         message("m"))
    assert statuses(result) == {"jürgen@example.com": "failed", "ada@example.com": "sent"}
    refused = result.outcomes["jürgen@example.com"]
    assert refused.smtp_code == 553 and "SMTPUTF8" in (refused.error or "")
    assert [r.recipients for r in plain_server.received] == [["ada@example.com"]]


def test_with_smtputf8_a_non_ascii_local_part_goes(smtp: SMTPTestServer,
                                                   host: smtplib.SMTP) -> None:
    assert host.has_extn("smtputf8")
    result = transaction(host, SENDER, ["jürgen@example.com"], message("m"))
    assert statuses(result) == {"jürgen@example.com": "sent"}
    assert [r.recipients for r in smtp.received] == [["jürgen@example.com"]]


@pytest.mark.parametrize(("sender", "recipients"), [
    ("jürgen@example.com", ["ada@example.com"]),  # the sender needs SMTPUTF8
    (SENDER, ["jürgen@example.com", "eve@bü\u200dcher.de"]),  # nobody can be written
    ("noreply@bü\u200dcher.de", ["ada@example.com"]),  # the sender's domain has no A-label
])
def test_when_nothing_can_be_written_no_transaction_is_opened(
        plain_server: SMTPTestServer, plain: smtplib.SMTP, sender: str,
        recipients: list[str]) -> None:
    result = transaction(plain, sender, recipients, message("m"))
    assert result.transactions == 0
    assert set(statuses(result).values()) == {"failed"}
    assert set(result.outcomes) == set(recipients)
    assert {o.smtp_code for o in result.outcomes.values()} == {553}
    assert plain_server.handler.mail_times == []
    after = transaction(plain, SENDER, ["ada@example.com"], message("after"))
    assert statuses(after) == {"ada@example.com": "sent"}


def test_a_multi_line_reply_keeps_every_line(smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.rcpt_reply = lambda a: "550-5.1.1 no such user\r\n550 5.1.1 see the docs"
    result = transaction(host, SENDER, ["ada@example.com"], message("m"))
    assert result.outcomes["ada@example.com"].error == "5.1.1 no such user\n5.1.1 see the docs"


def test_an_overlong_reply_line_is_refused_and_closes_the_session(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.rcpt_reply = lambda a: "550 " + "x" * 9000
    with pytest.raises(smtplib.SMTPResponseException) as raised:
        transaction(host, SENDER, ["ada@example.com"], message("m"))
    assert raised.value.smtp_code == 500
    assert host.sock is None


def pipeline_of(host: smtplib.SMTP, recipients: list[str], data: bytes) -> bytes:
    return commands_ahead(host, Upcoming(SENDER, tuple(recipients), len(data)))


def test_the_next_messages_commands_go_out_with_this_content(smtp: SMTPTestServer,
                                                              host: smtplib.SMTP) -> None:
    first, second = message("first"), message("second")
    ahead = pipeline_of(host, ["bob@example.com"], second)
    assert bool(ahead) is smtp.handler.pipelining  # only where the server pipelines
    result = transaction(host, SENDER, ["ada@example.com"], first, then=ahead)
    assert result.ahead is smtp.handler.pipelining
    after = transaction(host, SENDER, ["bob@example.com"], second, sent_ahead=result.ahead)
    assert statuses(after) == {"bob@example.com": "sent"}
    assert [(r.recipients, r.message["Subject"]) for r in smtp.received] == [
        (["ada@example.com"], "first"), (["bob@example.com"], "second")]
    assert {r.session for r in smtp.received} == {1}


def test_then_may_be_a_function_asked_when_the_content_goes(smtp: SMTPTestServer,
                                                            host: smtplib.SMTP) -> None:
    second = message("second")
    asked: list[bytes] = []

    def then() -> bytes:
        asked.append(pipeline_of(host, ["bob@example.com"], second))
        return asked[-1]

    result = transaction(host, SENDER, ["ada@example.com"], message("first"), then=then)
    assert len(asked) == 1
    assert result.ahead is bool(asked[0])
    after = transaction(host, SENDER, ["bob@example.com"], second, sent_ahead=result.ahead)
    assert statuses(after) == {"bob@example.com": "sent"}
    assert len(smtp.received) == 2


def test_nothing_goes_ahead_when_the_function_gives_nothing(smtp: SMTPTestServer,
                                                            host: smtplib.SMTP) -> None:
    result = transaction(host, SENDER, ["ada@example.com"], message("m"), then=lambda: b"")
    assert not result.ahead
    assert statuses(transaction(host, SENDER, ["bob@example.com"], message("n"))) == {
        "bob@example.com": "sent"}


def test_the_next_message_waits_for_recipients_left_for_another_transaction(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    too_many_after(smtp, 1)
    second = message("second")
    ahead = pipeline_of(host, ["cy@example.com"], second)
    result = transaction(host, SENDER, ["ada@example.com", "bob@example.com"],
                         message("first"), then=ahead)
    assert result.transactions == 2
    assert result.ahead is smtp.handler.pipelining  # with the last transaction's content
    after = transaction(host, SENDER, ["cy@example.com"], second, sent_ahead=result.ahead)
    assert statuses(after) == {"cy@example.com": "sent"}
    assert [r.recipients for r in smtp.received] == [["ada@example.com"], ["bob@example.com"],
                                                     ["cy@example.com"]]


def test_the_next_message_goes_ahead_even_after_a_refused_transaction(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("x") else None
    second = message("second")
    ahead = pipeline_of(host, ["bob@example.com"], second)
    refused = transaction(host, SENDER, ["x@example.com"], message("first"), then=ahead)
    assert statuses(refused) == {"x@example.com": "failed"}
    after = transaction(host, SENDER, ["bob@example.com"], second, sent_ahead=refused.ahead)
    assert statuses(after) == {"bob@example.com": "sent"}
    assert [r.message["Subject"] for r in smtp.received] == ["second"]




def test_the_next_message_goes_ahead_even_after_a_5xx_to_mail_from(
        smtp: SMTPTestServer, host: smtplib.SMTP) -> None:
    smtp.handler.mail_reply = lambda s: "550 5.7.1 not you" if s.startswith("blocked") else None
    second = message("second")
    ahead = pipeline_of(host, ["bob@example.com"], second)
    refused = transaction(host, "blocked@postroom.test", ["ada@example.com"], message("first"),
                          then=ahead)
    assert statuses(refused) == {"ada@example.com": "failed"}
    assert refused.ahead is smtp.handler.pipelining  # with the RSET
    after = transaction(host, SENDER, ["bob@example.com"], second, sent_ahead=refused.ahead)
    assert statuses(after) == {"bob@example.com": "sent"}
    assert [r.message["Subject"] for r in smtp.received] == ["second"]
