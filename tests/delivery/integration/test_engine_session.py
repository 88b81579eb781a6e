"""BatchConnection against real SMTP servers: sessions, timeouts, TLS, AUTH, replies."""

from __future__ import annotations

import math
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from flask import Flask
from flask_mail import Message

from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.errors import PermanentDeliveryError, TemporaryDeliveryError
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tests.support.smtp_server import DROP, SMTPTestServer
from web.testing import free_port

SENDER = "noreply@postroom.test"


def settings_for(server: SMTPTestServer, **options: Any) -> SMTPSettings:
    return SMTPSettings(**{"server": "127.0.0.1", "port": server.port, "timeout": 5.0, **options})


def message(n: int) -> bytes:
    return Composer(message_id_domain="postroom.test").compose(
        Draft(sender=SENDER, to=[f"r{n}@example.com"], subject=f"n{n}", text=f"number {n}")).data


@pytest.fixture(params=[False, True], ids=["stepwise", "pipelined"])
def smtp(request: pytest.FixtureRequest, smtp_server: SMTPTestServer) -> SMTPTestServer:
    """The test server, with and without PIPELINING advertised."""
    smtp_server.handler.pipelining = request.param
    return smtp_server


@pytest.mark.parametrize(("n", "max_emails"), [(21, 7), (20, 7), (5, None), (1, 1), (6, 2)])
def test_n_messages_use_ceil_n_over_max_sessions(smtp: SMTPTestServer, n: int,
                                                 max_emails: int | None) -> None:
    with BatchConnection(settings_for(smtp, max_emails=max_emails)) as connection:
        for i in range(n):
            outcomes = connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
            assert outcomes[f"r{i}@example.com"].status == "sent"
    expected = math.ceil(n / max_emails) if max_emails else 1
    assert smtp.session_count == connection.sessions_opened == expected
    assert len(smtp.received) == n
    assert [len([r for r in smtp.received if r.session == s]) for s in range(1, expected + 1)] \
        == [min(max_emails or n, n - k * (max_emails or n)) for k in range(expected)]


def test_refused_recipient_does_not_fail_the_others(smtp: SMTPTestServer) -> None:
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("x") else None
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = connection.send_data(SENDER, ["a@example.com", "x@example.com",
                                                 "b@example.com"], message(0))
        after = connection.send_data(SENDER, ["c@example.com"], message(1))
    assert {k: v.status for k, v in outcomes.items()} == {
        "a@example.com": "sent", "x@example.com": "failed", "b@example.com": "sent"}
    assert outcomes["x@example.com"].smtp_code == 550
    assert "no such user" in (outcomes["x@example.com"].error or "")
    assert after["c@example.com"].status == "sent"
    assert [r.recipients for r in smtp.received] == [["a@example.com", "b@example.com"],
                                                     ["c@example.com"]]
    assert smtp.session_count == 1


@pytest.mark.parametrize(("reply", "status"), [("451 4.3.0 later", "deferred"),
                                               ("554 5.7.1 rejected", "failed")])
def test_data_reply_classifies_every_recipient(smtp: SMTPTestServer, reply: str,
                                               status: str) -> None:
    smtp.handler.data_reply = lambda envelope: reply
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = connection.send_data(SENDER, ["a@example.com", "b@example.com"], message(0))
        smtp.handler.data_reply = lambda envelope: None
        again = connection.send_data(SENDER, ["c@example.com"], message(1))
    assert {o.status for o in outcomes.values()} == {status}
    assert {o.smtp_code for o in outcomes.values()} == {int(reply[:3])}
    assert again["c@example.com"].status == "sent"
    assert smtp.session_count == 1  # the session survives a refused transaction (RSET)


def test_all_recipients_refused_sends_no_data(smtp: SMTPTestServer) -> None:
    smtp.handler.rcpt_reply = lambda address: "450 4.2.0 mailbox busy"
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = connection.send_data(SENDER, ["a@example.com"], message(0))
        smtp.handler.rcpt_reply = lambda address: None
        again = connection.send_data(SENDER, ["b@example.com"], message(1))
    assert outcomes["a@example.com"].status == "deferred"
    assert again["b@example.com"].status == "sent"
    assert [r.recipients for r in smtp.received] == [["b@example.com"]]


def test_dropped_connection_defers_and_the_batch_goes_on(smtp: SMTPTestServer) -> None:
    drops = iter([None, DROP])
    smtp.handler.data_reply = lambda envelope: next(drops, None)
    with BatchConnection(settings_for(smtp)) as connection:
        statuses = [connection.send_data(SENDER, [f"r{i}@example.com"],
                                         message(i))[f"r{i}@example.com"].status
                    for i in range(4)]
    assert statuses == ["sent", "deferred", "sent", "sent"]
    assert smtp.session_count == 2
    assert [r.recipients[0] for r in smtp.received] == ["r0@example.com", "r2@example.com",
                                                        "r3@example.com"]


def test_dot_at_line_start_survives(smtp: SMTPTestServer) -> None:
    data = Composer().compose(Draft(sender=SENDER, to=["a@example.com"], subject="dots",
                                    text=".\n..two\n.three\nend.")).data
    with BatchConnection(settings_for(smtp)) as connection:
        connection.send_data(SENDER, ["a@example.com"], data)
    [received] = smtp.received
    assert received.message.get_content().replace("\r\n", "\n") == ".\n..two\n.three\nend.\n"


def test_suppressed_messages_open_no_session(smtp_server: SMTPTestServer) -> None:
    with BatchConnection(settings_for(smtp_server, suppress=True)) as connection:
        outcomes = connection.send_data(SENDER, ["a@example.com"], message(0))
    assert outcomes["a@example.com"].status == "suppressed"
    assert smtp_server.session_count == 0


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_silent_server_costs_one_timeout_then_defers_the_batch(
        silent_server: tuple[int, list[socket.socket]]) -> None:
    port, accepted = silent_server
    settings = SMTPSettings(server="127.0.0.1", port=port, timeout=0.5)
    started = time.monotonic()
    with BatchConnection(settings) as connection:
        outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                    for i in range(20)]
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5
    assert len(accepted) == 1
    assert {o.status for by in outcomes for o in by.values()} == {"deferred"}
    assert "failed" in (outcomes[0]["r0@example.com"].error or "")


def test_refused_connection_defers(smtp_server: SMTPTestServer) -> None:
    settings = SMTPSettings(server="127.0.0.1", port=free_port(), timeout=1)
    with BatchConnection(settings) as connection:
        outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
    assert outcome.status == "deferred"


# -- TLS and AUTH against a server with a certificate from our own CA

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Postroom Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
             cwd=d)
    (d / "other.ext").write_text((d / "server.ext").read_text().replace(
        "subjectAltName=IP:127.0.0.1,DNS:localhost", "subjectAltName=DNS:mail.example.test"))
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "other.pem", "-days", "2", "-extfile", "other.ext",
             cwd=d)
    _openssl("req", "-x509", *ec, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key",
            "other_cert": d / "other.pem", "self_cert": d / "self.pem", "self_key": d / "self.key"}


def _server_context(certificates: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    return context


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == b"postroom"
          and auth_data.password == b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(params=["starttls", "ssl"])
def tls_server(request: pytest.FixtureRequest,
               certificates: dict[str, Path]) -> Iterator[tuple[SMTPTestServer, str]]:
    context = _server_context(certificates)
    if request.param == "starttls":
        server = SMTPTestServer(tls_context=context, require_starttls=True,
                                authenticator=_authenticator, auth_require_tls=True)
    else:
        # implicit TLS: aiosmtpd only knows STARTTLS as "TLS", so let AUTH through here
        server = SMTPTestServer(ssl_context=context, authenticator=_authenticator,
                                auth_require_tls=False)
    server.start()
    yield server, request.param
    server.stop()


def _tls_settings(server: SMTPTestServer, mode: str, **options: Any) -> SMTPSettings:
    return settings_for(server, use_tls=mode == "starttls", use_ssl=mode == "ssl", **options)


def test_tls_refuses_an_unknown_certificate_by_default(
        tls_server: tuple[SMTPTestServer, str]) -> None:
    server, mode = tls_server
    with BatchConnection(_tls_settings(server, mode)) as connection:
        outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
    assert outcome.status == "deferred"
    assert "CERTIFICATE_VERIFY_FAILED" in (outcome.error or "")
    assert server.received == []


def test_tls_with_the_ca_file_and_auth_delivers(tls_server: tuple[SMTPTestServer, str],
                                                certificates: dict[str, Path]) -> None:
    server, mode = tls_server
    settings = _tls_settings(server, mode, tls_ca_file=str(certificates["ca"]),
                             username="postroom", password="s3cret")
    with BatchConnection(settings) as connection:
        outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
    assert outcome.status == "sent"
    assert [r.recipients for r in server.received] == [["a@example.com"]]


def test_tls_checks_the_host_name(certificates: dict[str, Path]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["other_cert"], certificates["key"])
    server = SMTPTestServer(tls_context=context, require_starttls=True).start()
    try:
        settings = settings_for(server, use_tls=True, tls_ca_file=str(certificates["ca"]))
        with BatchConnection(settings) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))
    finally:
        server.stop()
    assert outcome["a@example.com"].status == "deferred"
    assert "IP address mismatch" in (outcome["a@example.com"].error or "")
    assert server.received == []


def test_tls_verify_false_accepts_any_certificate(tls_server: tuple[SMTPTestServer, str]) -> None:
    server, mode = tls_server
    settings = _tls_settings(server, mode, tls_verify=False, username="postroom",
                             password="s3cret")
    with BatchConnection(settings) as connection:
        outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
    assert outcome.status == "sent"


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_auth_mechanisms_over_starttls(certificates: dict[str, Path], mechanism: str) -> None:
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    server = SMTPTestServer(tls_context=_server_context(certificates), require_starttls=True,
                            authenticator=_authenticator, auth_exclude_mechanism=[other]).start()
    try:
        base = _tls_settings(server, "starttls", tls_ca_file=str(certificates["ca"]),
                             username="postroom")
        with BatchConnection(base.__class__(**{**_fields(base), "password": "s3cret"})) as ok:
            good = ok.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
        with BatchConnection(base.__class__(**{**_fields(base), "password": "wrong"})) as bad:
            refused = bad.send_data(SENDER, ["b@example.com"], message(1))["b@example.com"]
    finally:
        server.stop()
    assert good.status == "sent"
    assert (refused.status, refused.smtp_code) == ("deferred", 535)
    assert "s3cret" not in (refused.error or "") and "wrong" not in (refused.error or "")
    assert [r.recipients for r in server.received] == [["a@example.com"]]


def _fields(settings: SMTPSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def test_421_defers_and_the_next_message_gets_a_new_session(smtp: SMTPTestServer) -> None:
    replies = iter([None, "421 4.3.2 shutting down"])
    smtp.handler.data_reply = lambda envelope: next(replies, None)
    with BatchConnection(settings_for(smtp)) as connection:
        outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                    for i in range(3)]
    assert [(o[f"r{i}@example.com"].status, o[f"r{i}@example.com"].smtp_code)
            for i, o in enumerate(outcomes)] == [("sent", 250), ("deferred", 421),
                                                 ("sent", 250)]
    assert smtp.session_count == 2


def test_flask_mail_send_raises_typed_errors(app: Flask, smtp_server: SMTPTestServer) -> None:
    """Flask-Mail's ``Connection.send(message)`` still works, and fails loudly."""
    smtp_server.handler.rcpt_reply = lambda address: {
        "gone@example.com": "550 5.1.1 gone", "later@example.com": "451 4.3.0 later"}.get(address)
    with app.app_context(), BatchConnection(settings_for(smtp_server)) as connection:
        connection.send(Message("hi", recipients=["ok@example.com"], body="x", sender=SENDER))
        with pytest.raises(PermanentDeliveryError) as permanent:
            connection.send(Message("hi", recipients=["gone@example.com"], body="x",
                                    sender=SENDER))
        with pytest.raises(TemporaryDeliveryError) as temporary:
            connection.send(Message("hi", recipients=["later@example.com"], body="x",
                                    sender=SENDER))
    assert permanent.value.smtp_code == 550
    assert temporary.value.smtp_code == 451
    assert [r.recipients for r in smtp_server.received] == [["ok@example.com"]]


def test_self_signed_certificate_refused_unless_it_is_the_ca_file(
        certificates: dict[str, Path]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["self_cert"], certificates["self_key"])
    server = SMTPTestServer(tls_context=context, require_starttls=True).start()
    try:
        with BatchConnection(settings_for(server, use_tls=True)) as connection:
            refused = connection.send_data(SENDER, ["a@example.com"], message(0))
        trusting = settings_for(server, use_tls=True, tls_ca_file=str(certificates["self_cert"]))
        with BatchConnection(trusting) as connection:
            accepted = connection.send_data(SENDER, ["b@example.com"], message(1))
    finally:
        server.stop()
    assert refused["a@example.com"].status == "deferred"
    assert "self-signed certificate" in (refused["a@example.com"].error or "")
    assert accepted["b@example.com"].status == "sent"
    assert [r.recipients for r in server.received] == [["b@example.com"]]


def test_server_silent_after_data_costs_one_timeout_not_one_per_message(
        smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_delay = 0.8  # answers DATA long after MAIL_TIMEOUT...
    smtp_server.handler.data_reply = lambda envelope: "451 4.3.0 too late"  # ...and records none
    started = time.monotonic()
    with BatchConnection(settings_for(smtp_server, timeout=0.2)) as connection:
        outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                    for i in range(10)]
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # let the server's late answer pass before the next test
    assert elapsed < 0.6
    assert {o.status for by in outcomes for o in by.values()} == {"deferred"}
    assert smtp_server.session_count == 1
    assert smtp_server.received == []
