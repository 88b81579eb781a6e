"""The engine's reply table (tasks.delivery.engine.outcome.meaning), a test per row against a real
aiosmtpd server, and what the envelope carries: SMTPUTF8 per recipient, DSN requests."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.outcome import DeliveryOutcome, is_throttle, meaning
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.engine.verp import BounceRef, envid_for, read_envid, verp_address, xtext
from tests.support.outage_support import DeadRelay
from tests.support.smtp_server import SMTPTestServer

SENDER = "noreply@postroom.test"


def settings_for(server: SMTPTestServer | DeadRelay, **options: Any) -> SMTPSettings:
    return SMTPSettings(**{"server": "127.0.0.1", "port": server.port, "timeout": 5.0, **options})


def message(n: int, to: list[str] | None = None) -> bytes:
    return Composer(message_id_domain="postroom.test").compose(
        Draft(sender=SENDER, to=to or [f"r{n}@example.com"], subject=f"n{n}",
              text=f"number {n}")).data


@pytest.fixture(params=[False, True], ids=["stepwise", "pipelined"])
def smtp(request: pytest.FixtureRequest, smtp_server: SMTPTestServer) -> SMTPTestServer:
    smtp_server.handler.pipelining = request.param
    return smtp_server


# -- the table itself


@pytest.mark.parametrize(("stage", "code", "text", "action", "throttle"), [
    ("mail", 421, "4.7.0 too many connections", "end_session", True),
    ("rcpt", 421, "4.3.2 shutting down", "end_session", False),
    ("dot", 421, "4.4.2 timeout", "end_session", False),
    ("greeting", 554, "5.3.2 no service", "stop_relay", False),
    ("greeting", 450, "4.3.2 busy", "stop_relay", False),
    ("auth", 535, "5.7.8 bad credentials", "credentials", False),
    ("auth", 534, "5.7.9 mechanism too weak", "credentials", False),
    ("auth", 454, "4.7.0 temporary authentication failure", "credentials", True),
    ("mail", 450, "4.7.1 too much mail from 127.0.0.1", "stop_relay", True),
    ("mail", 451, "4.3.0 local error", "stop_relay", False),
    ("mail", 454, "Throttling failure: Maximum sending rate exceeded", "stop_relay", True),
    ("mail", 550, "5.7.1 sender refused", "failed", False),
    ("rcpt", 452, "4.5.3 Error: too many recipients", "next_transaction", False),
    ("rcpt", 452, "Too many recipients", "next_transaction", False),
    ("rcpt", 452, "4.2.2 mailbox full", "deferred", False),
    ("rcpt", 451, "4.7.1 rate limited, slow down", "deferred", True),
    ("rcpt", 550, "5.1.1 no such user", "failed", False),
    ("rcpt", 250, "2.1.5 ok", "sent", False),
    ("data", 354, "go ahead", "sent", False),
    ("data", 554, "5.5.1 no valid recipients", "failed", False),
    ("dot", 451, "4.3.0 try again", "deferred", False),
    ("dot", 552, "5.3.4 too big", "failed", False),
])
def test_reply_table_rows(stage: Any, code: int, text: str, action: str,
                          throttle: bool) -> None:
    row = meaning(stage, code, text)
    assert (row.action, row.throttle) == (action, throttle)


def test_throttle_wording_needs_a_throttling_code() -> None:
    assert not is_throttle(550, "5.7.1 rate limit exceeded")  # permanent: not a pace
    assert not is_throttle(452, "4.5.3 too many recipients")  # a count, not a rate
    assert not is_throttle(451, "4.3.0 generated error")  # "rate" inside a word
    assert is_throttle(421, "4.7.28 ... our system has detected an unusual rate")


# -- each row on the wire


def _limit_recipients(server: SMTPTestServer, limit: int) -> None:
    """Postfix's smtpd_recipient_limit: 452 4.5.3 after *limit* RCPTs in a transaction."""
    count = {"n": 0}
    lock = threading.Lock()

    def mail(sender: str) -> None:
        with lock:
            count["n"] = 0

    def rcpt(address: str) -> str | None:
        with lock:
            count["n"] += 1
            return "452 4.5.3 Error: too many recipients" if count["n"] > limit else None

    server.handler.mail_reply = mail
    server.handler.rcpt_reply = rcpt


def test_too_many_recipients_go_in_the_next_transaction_at_once(smtp: SMTPTestServer) -> None:
    _limit_recipients(smtp, 3)
    everyone = [f"r{i}@example.com" for i in range(8)]
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = connection.send_data(SENDER, everyone, message(0, everyone))
        after = connection.send_data(SENDER, ["next@example.com"], message(1))
    assert {o.status for o in outcomes.values()} == {"sent"}, outcomes
    assert [r.recipients for r in smtp.received] == [everyone[:3], everyone[3:6], everyone[6:],
                                                     ["next@example.com"]]
    assert after["next@example.com"].status == "sent"
    assert smtp.session_count == 1


def test_mail_from_4xx_ends_the_session_and_defers_the_rest_without_attempts(
        smtp: SMTPTestServer) -> None:
    replies = iter([None, "451 4.3.0 queue full"])
    smtp.handler.mail_reply = lambda sender: next(replies, None)
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                    for i in range(4)]
    got = [o[f"r{i}@example.com"] for i, o in enumerate(outcomes)]
    assert got[0].status == "sent"
    assert [(o.status, o.smtp_code, o.counted) for o in got[1:]] == [("deferred", 451, False)] * 3
    assert "queue full" in (got[1].error or "") and "queue full" in (got[3].error or "")
    assert len(smtp.handler.mail_times) == 2, "Postroom must stop at the first refusal"
    assert smtp.session_count == 1


@pytest.mark.parametrize("greeting", ["421 4.3.2 Service not available", "450 4.7.1 busy"])
def test_greeting_4xx_defers_the_batch_without_attempts(greeting: str) -> None:
    dead = DeadRelay(greeting)
    try:
        with BatchConnection(settings_for(dead)) as connection:
            outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                        for i in range(3)]
        assert [(o[f"r{i}@example.com"].status, o[f"r{i}@example.com"].counted)
                for i, o in enumerate(outcomes)] == [("deferred", False)] * 3
        assert dead.accepted == 1
    finally:
        dead.close()


def test_421_at_rcpt_defers_everyone_untried(smtp: SMTPTestServer) -> None:
    smtp.handler.rcpt_reply = lambda a: "421 4.3.2 shutting down" if a.startswith("b") else None
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = connection.send_data(SENDER, ["a@example.com", "b@example.com"],
                                        message(0, ["a@example.com", "b@example.com"]))
        later = connection.send_data(SENDER, ["c@example.com"], message(1))
    assert {(o.status, o.smtp_code, o.counted) for o in outcomes.values()} == {
        ("deferred", 421, False)}
    assert later["c@example.com"] == DeliveryOutcome.unreached(
        later["c@example.com"].error or "", 421)  # a fresh session's 421: the batch stops
    assert smtp.received == [] and smtp.session_count == 1


def test_421_after_data_is_uncounted_and_a_new_session_carries_on(smtp: SMTPTestServer) -> None:
    replies = iter([None, "421 4.4.2 timeout"])
    smtp.handler.data_reply = lambda envelope: next(replies, None)
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                    for i in range(3)]
    assert [(o[f"r{i}@example.com"].status, o[f"r{i}@example.com"].counted)
            for i, o in enumerate(outcomes)] == [("sent", True), ("deferred", False),
                                                 ("sent", True)]
    assert smtp.session_count == 2


def test_mail_from_5xx_fails_the_message_with_the_text_and_the_session_goes_on(
        smtp: SMTPTestServer) -> None:
    replies = iter(["550 5.7.1 sender address rejected: not owned by user"])
    smtp.handler.mail_reply = lambda sender: next(replies, None)
    to = ["a@example.com", "b@example.com"]
    with BatchConnection(settings_for(smtp)) as connection:
        refused = connection.send_data(SENDER, to, message(0, to))
        sent = connection.send_data(SENDER, ["c@example.com"], message(1))
    assert {(o.status, o.smtp_code, o.counted) for o in refused.values()} == {
        ("failed", 550, True)}
    assert "not owned by user" in (refused["a@example.com"].error or "")
    assert sent["c@example.com"].status == "sent" and smtp.session_count == 1


def test_rcpt_4xx_uses_that_recipients_attempt_only(smtp: SMTPTestServer) -> None:
    smtp.handler.rcpt_reply = lambda a: "450 4.2.1 mailbox busy" if a.startswith("b") else None
    to = ["a@example.com", "b@example.com"]
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = connection.send_data(SENDER, to, message(0, to))
    assert (outcomes["a@example.com"].status, outcomes["b@example.com"].status,
            outcomes["b@example.com"].counted) == ("sent", "deferred", True)


# -- SMTPUTF8 per recipient


@pytest.mark.parametrize("pipelining", [False, True], ids=["stepwise", "pipelined"])
def test_without_smtputf8_only_the_recipients_that_need_it_fail(pipelining: bool) -> None:
    server = SMTPTestServer(enable_SMTPUTF8=False).start()
    server.handler.pipelining = pipelining
    to = ["ada@example.com", "jösé@example.com", "zoë@bücher.de", "bob@bücher.de"]
    try:
        with BatchConnection(settings_for(server)) as connection:
            outcomes = connection.send_data(SENDER, to, message(0, ["ada@example.com"]))
        assert [outcomes[a].status for a in to] == ["sent", "failed", "failed", "sent"]
        assert outcomes["jösé@example.com"].smtp_code == 553
        assert "<jösé@example.com>" in (outcomes["jösé@example.com"].error or "")
        assert "<zoë@xn--bcher-kva.de>" in (outcomes["zoë@bücher.de"].error or "")
        assert [r.recipients for r in server.received] == [["ada@example.com",
                                                            "bob@xn--bcher-kva.de"]]
    finally:
        server.stop()


def test_with_smtputf8_everyone_is_sent() -> None:
    server = SMTPTestServer(enable_SMTPUTF8=True).start()
    try:
        to = ["ada@example.com", "jösé@example.com"]
        with BatchConnection(settings_for(server)) as connection:
            outcomes = connection.send_data(SENDER, to, message(0, ["ada@example.com"]))
        assert {o.status for o in outcomes.values()} == {"sent"}
    finally:
        server.stop()


def test_one_envelope_sent_to_a_relay_with_smtputf8_then_to_one_without() -> None:
    """The envelope worked out for one session is not reused for a relay that differs."""
    with_utf8 = SMTPTestServer(enable_SMTPUTF8=True).start()
    without = SMTPTestServer(enable_SMTPUTF8=False).start()
    to = ["ada@example.com", "jösé@example.com"]
    try:
        for server, expected in ((with_utf8, ["sent", "sent"]), (without, ["sent", "failed"]),
                                 (with_utf8, ["sent", "sent"])):
            with BatchConnection(settings_for(server)) as connection:
                outcomes = connection.send_data(SENDER, to, message(0, ["ada@example.com"]))
                again = connection.send_data(SENDER, to, message(1, ["ada@example.com"]))
            assert [outcomes[a].status for a in to] == expected
            assert [again[a].status for a in to] == expected
        assert len(without.received) == 2 and len(with_utf8.received) == 4
    finally:
        with_utf8.stop()
        without.stop()


# -- DSN requests (RFC 3461)


def test_dsn_parameters_only_where_the_relay_offers_dsn(smtp: SMTPTestServer) -> None:
    ref = BounceRef("campaign", "0123456789abcdef0123456789abcdef", 7)
    sender = verp_address("bounces@postroom.test", "k3y", ref)
    for dsn in (False, True):
        smtp.handler.dsn = dsn
        with BatchConnection(settings_for(smtp)) as connection:
            assert connection.send_data(sender, ["a@example.com"],
                                        message(0))["a@example.com"].status == "sent"
    envid = envid_for(ref, "k3y")
    assert smtp.handler.mail_params == [f"RET=HDRS ENVID={envid}"]
    assert smtp.handler.rcpt_params == ["NOTIFY=FAILURE,DELAY"]
    assert sender == f"bounces+{envid}@postroom.test"  # the VERP token is the ENVID
    assert read_envid(envid, "k3y") == ref
    assert read_envid(envid, "another key") is None
    assert read_envid(envid.replace(".7.", ".8."), "k3y") is None


def test_a_sender_without_a_verp_token_asks_for_dsns_without_envid(
        smtp: SMTPTestServer) -> None:
    smtp.handler.dsn = True
    with BatchConnection(settings_for(smtp)) as connection:
        connection.send_data(SENDER, ["a@example.com"], message(0))
    assert smtp.handler.mail_params == ["RET=HDRS"]


def test_xtext_encodes_plus_equals_and_controls() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert read_envid(xtext(envid_for(BounceRef("message", "f" * 32, None), "k")), "k") == \
        BounceRef("message", "f" * 32, None)


@pytest.mark.parametrize("value", ["c" + "0" * 32 + ".17.abcdefghij", "!*,-<>~", "a\x7fb",
                                   "tab\there", "zoë", "".join(map(chr, range(256)))])
def test_xtext_leaves_plain_values_as_they_are_and_encodes_the_rest_per_byte(
        value: str) -> None:
    from tasks.delivery.engine.verp import _XTEXT_SAFE
    assert xtext(value) == "".join(chr(b) if b in _XTEXT_SAFE else f"+{b:02X}"
                                   for b in value.encode())


# -- STARTTLS forgotten


def test_auth_on_a_starttls_port_without_mail_use_tls_names_starttls(tmp_path: Path) -> None:
    from tests.delivery.integration.test_relays import _authenticator, self_signed

    cert, key = self_signed(tmp_path, "relay")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = SMTPTestServer(tls_context=context, require_starttls=True,
                            authenticator=_authenticator(True), auth_require_tls=True).start()
    try:
        with BatchConnection(settings_for(server, username="postroom",
                                          password="s3cret")) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))
        error = outcome["a@example.com"].error or ""
        assert "STARTTLS" in error and "MAIL_USE_TLS=true" in error, error
        assert "SMTP AUTH extension not supported" not in error
    finally:
        server.stop()
