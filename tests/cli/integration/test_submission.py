"""The SMTP submission listener as a Flask-Mail app meets it: an unchanged ``flask_mail.Mail``
(or smtplib) over a real socket to ``postroom submission``, real Redis, and the mail read
back from the suite's SMTP server after Postroom delivered it (Celery eager)."""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import flask_mail
import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from cli import cli
from cli.submission import SubmissionListener, tls_context
from tests.conftest import API_TOKEN, AUTH, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.config import ConfigError, check, from_environ
from web.testing import free_port

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8  # binary, not text
SHOP = "Shop <orders@shop.example.com>"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"API_TOKENS": [API_TOKEN, "reader-token:read"],
            "SUBMISSION_AUTH_RATE_LIMIT": "3/minute"}


@pytest.fixture
def port(app: Flask) -> Iterator[int]:
    listener = SubmissionListener(app, host="127.0.0.1", port=free_port()).start()
    yield listener.controller.port
    listener.stop()


def shop(port: int, password: str = API_TOKEN, **config: Any) -> tuple[Flask, flask_mail.Mail]:
    """A Flask-Mail app configured as any app is: only MAIL_* settings point it here."""
    app = Flask("shop")
    app.config.update({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port, "MAIL_USERNAME": "shop",
                       "MAIL_PASSWORD": password, "MAIL_USE_TLS": False, "MAIL_USE_SSL": False,
                       "MAIL_DEFAULT_SENDER": SHOP, **config})
    return app, flask_mail.Mail(app)


def message_keys(redis_client: redis.Redis) -> list[bytes]:
    return list(redis_client.scan_iter("postroom:message:*"))


def plain(to: str, subject: str = "Hi", body: str = "Hello", **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = SHOP
    message["To"] = to
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def signed_in(port: int, token: str = API_TOKEN) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.login("anyone", token)
    return client


def test_a_flask_mail_app_sends_through_it_unchanged(
        port: int, smtp_server: SMTPTestServer) -> None:
    app, mail = shop(port)
    with app.app_context():
        message = flask_mail.Message("Your order — café", recipients=["ada@example.com"],
                                     cc=["bob@example.com"], bcc=["carol@example.com"],
                                     body="Thanks for your order.",
                                     html="<p>Thanks for your <b>order</b>.</p>",
                                     extra_headers={"X-Order": "1234"})
        message.attach("invoice.pdf", "application/pdf", PDF)
        message.attach("résumé.txt", "text/plain", "Ça va".encode())
        mail.send(message)
    [received] = smtp_server.received
    assert sorted(received.recipients) == ["ada@example.com", "bob@example.com",
                                           "carol@example.com"]
    sent = received.message
    assert (sent["To"], sent["Cc"], sent["Bcc"]) == ("ada@example.com", "bob@example.com", None)
    assert str(sent["From"]) == SHOP and sent["Subject"] == "Your order — café"
    assert sent["X-Order"] == "1234"
    assert sent.get_body(("plain",)).get_content().strip() == "Thanks for your order."
    assert "<b>order</b>" in sent.get_body(("html",)).get_content()
    attachment, text = sent.iter_attachments()
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF
    assert (text.get_filename(), text.get_payload(decode=True)) == ("résumé.txt",
                                                                     "Ça va".encode())


def test_bulk_sends_on_one_connection_with_max_emails(
        port: int, smtp_server: SMTPTestServer, client: FlaskClient,
        redis_client: redis.Redis) -> None:
    app, mail = shop(port, MAIL_MAX_EMAILS=3)
    with app.app_context(), mail.connect() as connection:
        for n in range(7):
            connection.send(flask_mail.Message(f"Newsletter {n}",
                                               recipients=[f"reader{n}@example.com"],
                                               body=f"Issue {n}"))
    received = sorted(smtp_server.received, key=lambda r: r.recipients)
    assert [r.recipients for r in received] == [[f"reader{n}@example.com"] for n in range(7)]
    assert [r.message["Subject"] for r in received] == [f"Newsletter {n}" for n in range(7)]
    assert len(message_keys(redis_client)) == 7  # one Postroom message each


def test_the_reply_names_the_message_and_auth_login_works(
        port: int, smtp_server: SMTPTestServer, client: FlaskClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as relay:
        relay.ehlo()
        assert "LOGIN" in relay.esmtp_features["auth"]
        relay.user, relay.password = "anyone", API_TOKEN
        assert relay.auth("LOGIN", relay.auth_login)[0] == 235
        relay.mail("whatever@client.example")
        assert relay.rcpt("ada@example.com")[0] == 250
        code, text = relay.data(plain("ada@example.com"))
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    message_id = text.decode().rsplit(" ", 1)[1]
    shown = client.get(f"/api/messages/{message_id}", headers=AUTH).get_json()
    assert shown["status"] == "sent"
    assert [r["email"] for r in shown["recipients"]] == ["ada@example.com"]
    assert smtp_server.to("ada@example.com")[0].message["Subject"] == "Hi"
    token_b64 = base64.b64encode(API_TOKEN.encode()).decode()
    assert API_TOKEN not in caplog.text and token_b64 not in caplog.text


def test_at_most_100_recipients_a_message(port: int) -> None:
    with signed_in(port) as relay:
        relay.mail("x@client.example")
        for n in range(100):
            assert relay.rcpt(f"reader{n}@example.com")[0] == 250
        code, text = relay.rcpt("one-too-many@example.com")
    assert code == 452 and b"at most 100" in text


def test_the_envelope_decides_who_gets_it(port: int, smtp_server: SMTPTestServer) -> None:
    raw = plain("Team <team@example.com>", Bcc="hidden@example.com")
    with signed_in(port) as relay:
        refused = relay.sendmail("x@client.example", ["ada@example.com", "bob@example.com"],
                                 raw)
    assert refused == {}
    [received] = smtp_server.received
    assert sorted(received.recipients) == ["ada@example.com", "bob@example.com"]
    assert str(received.message["To"]) == "Team <team@example.com>"
    assert received.message["Bcc"] is None


def test_an_attached_message_goes_as_a_file(port: int, smtp_server: SMTPTestServer) -> None:
    forwarded = EmailMessage()
    forwarded["From"], forwarded["To"], forwarded["Subject"] = SHOP, "ada@example.com", "Fwd"
    forwarded.set_content("See the original below")
    original = email.message_from_bytes(plain("bob@example.com", subject="Original"),
                                        policy=email.policy.default)
    forwarded.add_attachment(original)
    with signed_in(port) as relay:
        assert relay.sendmail("x@client.example", ["ada@example.com"],
                              forwarded.as_bytes(policy=email.policy.SMTP)) == {}
    [attached] = list(smtp_server.received[0].message.iter_attachments())
    assert attached.get_filename() == "attachment-1.eml"
    assert b"Subject: Original" in attached.get_payload(decode=True)


def test_nothing_is_taken_before_auth(port: int, smtp_server: SMTPTestServer) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as relay:
        relay.ehlo()
        assert relay.mail("x@client.example")[0] == 530
    assert smtp_server.received == []


def test_a_wrong_password_is_535_and_repeated_failures_are_cut_off(
        port: int, smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as relay:
        relay.ehlo()
        relay.user, relay.password = "anyone", "guess-one"
        for mechanism, answer in (("PLAIN", relay.auth_plain), ("LOGIN", relay.auth_login)):
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                relay.auth(mechanism, answer)
            assert failed.value.smtp_code == 535
            error = failed.value.smtp_error
            assert isinstance(error, bytes) and error.startswith(b"5.7.8")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:  # the third: 421
            relay.auth("PLAIN", relay.auth_plain)
        assert failed.value.smtp_code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            relay.noop()
    # the right token from the same network is refused too until the window passes
    app, mail = shop(port)
    with app.app_context(), pytest.raises(smtplib.SMTPConnectError) as refused:
        mail.send(flask_mail.Message("Hi", recipients=["ada@example.com"], body="Hello"))
    assert refused.value.smtp_code == 421 and b"failed logins" in refused.value.smtp_error
    assert smtp_server.received == []
    assert "guess-one" not in caplog.text and API_TOKEN not in caplog.text


def test_a_token_that_may_not_send_is_refused_with_the_reason(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as relay:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            relay.login("anyone", "reader-token")
    assert refused.value.smtp_code == 535
    assert b"'send' scope" in refused.value.smtp_error


@pytest.mark.parametrize("config_overrides", [{"MAX_MESSAGE_BYTES": 20_000}])
def test_an_oversize_message_is_552(port: int, smtp_server: SMTPTestServer,
                                    redis_client: redis.Redis) -> None:
    with signed_in(port) as relay:
        relay.ehlo()
        assert relay.esmtp_features["size"] == "20000"
        relay.mail("x@client.example")
        relay.rcpt("ada@example.com")
        code, _ = relay.data(plain("ada@example.com", body=("x" * 70 + "\n") * 400))
        assert code == 552
        # a message within the size still goes, on the same connection
        assert relay.sendmail("x@client.example", ["ada@example.com"],
                              plain("ada@example.com")) == {}
    assert len(smtp_server.received) == 1 and len(message_keys(redis_client)) == 1


@pytest.mark.parametrize("config_overrides", [{"MAX_ATTACHMENT_BYTES": 1000}])
def test_a_message_the_api_refuses_gets_a_5xx_with_the_reason_and_leaves_nothing(
        port: int, smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    too_large = EmailMessage()
    too_large["From"], too_large["To"], too_large["Subject"] = SHOP, "ada@example.com", "Big"
    too_large.set_content("See attached")
    too_large.add_attachment(PDF, maintype="application", subtype="pdf",
                             filename="invoice.pdf")
    cases = [
        (plain("ada@example.com").replace(b"Subject:", b"X-Bad: a\x01b\r\nSubject:"), 550,
         b"X-Bad"),
        (plain("ada@example.com").replace(b"From: Shop <orders@shop.example.com>",
                                          b"From: nobody"), 550, b"sender"),
        (too_large.as_bytes(policy=email.policy.SMTP), 552, b"invoice.pdf"),
    ]
    with signed_in(port) as relay:
        for raw, code, reason in cases:
            relay.mail("x@client.example")
            relay.rcpt("ada@example.com")
            answer = relay.data(raw)
            assert answer[0] == code, answer
            assert reason in answer[1], answer
        relay.mail("x@client.example")
        assert relay.rcpt("bob@mail.invalid")[0] == 250  # refused at DATA, with the reason
        answer = relay.data(plain("ada@example.com"))
        assert answer[0] == 550 and b"RCPT TO" in answer[1], answer
    assert smtp_server.received == []
    assert message_keys(redis_client) == []
    assert list(redis_client.scan_iter("postroom:attachment*")) == []


def test_an_idempotency_key_header_sends_a_repeat_once(
        port: int, smtp_server: SMTPTestServer) -> None:
    raw = plain("ada@example.com", Idempotency_Key="order-1234-confirmation")
    replies = []
    with signed_in(port) as relay:
        for _ in range(2):
            relay.mail("x@client.example")
            relay.rcpt("ada@example.com")
            replies.append(relay.data(raw))
    assert replies[0] == replies[1] and replies[0][0] == 250
    [received] = smtp_server.received
    assert received.message["Idempotency-Key"] is None


# --- outside development: STARTTLS, and no AUTH before it ------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture
def production_app(redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
                   certificate: tuple[str, str]) -> Flask:
    cert, key = certificate
    return create_app(app_config(
        redis_url, smtp_server.port, TESTING=False, POSTROOM_ENV="production",
        PUBLIC_URL="https://mail.example.com", METRICS_TOKEN="metrics-token",
        SUBMISSION_TLS_CERT=cert, SUBMISSION_TLS_KEY=key))


def test_outside_development_auth_waits_for_starttls(
        production_app: Flask, certificate: tuple[str, str],
        smtp_server: SMTPTestServer) -> None:
    cert, key = certificate
    with pytest.raises(ValueError, match="SUBMISSION_TLS_CERT"):
        SubmissionListener(production_app, host="127.0.0.1", port=free_port())
    listener = SubmissionListener(production_app, host="127.0.0.1", port=free_port(),
                                  tls=tls_context(cert, key)).start()
    port = listener.controller.port
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as relay:
            relay.ehlo()
            assert relay.has_extn("starttls") and not relay.has_extn("auth")
            plain_auth = base64.b64encode(f"\0anyone\0{API_TOKEN}".encode()).decode()
            assert relay.docmd("AUTH", f"PLAIN {plain_auth}")[0] == 538
            assert relay.mail("x@client.example")[0] == 530
            relay.starttls(context=ssl.create_default_context(cafile=cert))
            relay.ehlo()
            assert relay.has_extn("auth")
            relay.login("anyone", API_TOKEN)
            assert relay.sendmail("x@client.example", ["ada@example.com"],
                                  plain("ada@example.com", subject="Over TLS")) == {}
        app, mail = shop(port, MAIL_USE_TLS=True)  # Flask-Mail's own STARTTLS
        with app.app_context():
            mail.send(flask_mail.Message("Flask-Mail over TLS", recipients=["bob@example.com"],
                                         body="Hello"))
    finally:
        listener.stop()
    assert sorted(r.message["Subject"] for r in smtp_server.received) == [
        "Flask-Mail over TLS", "Over TLS"]


def test_a_certificate_needs_its_key(certificate: tuple[str, str]) -> None:
    config = from_environ({"SUBMISSION_TLS_CERT": certificate[0],
                           "POSTROOM_ENV": "development"})
    config["CELERY_BROKER_URL"] = config["REDIS_URL"]
    with pytest.raises(ConfigError, match="SUBMISSION_TLS_KEY"):
        check(config)
    with pytest.raises(ConfigError, match="SUBMISSION_TLS_CERT: no such file"):
        from_environ({"SUBMISSION_TLS_CERT": "/nonexistent/cert.pem"})


@pytest.mark.worker
def test_a_real_worker_delivers_what_the_listener_queued(
        worker_app: Flask, celery_worker: Any, smtp_server: SMTPTestServer) -> None:
    listener = SubmissionListener(worker_app, host="127.0.0.1", port=free_port()).start()
    try:
        app, mail = shop(listener.controller.port)
        with app.app_context():
            mail.send(flask_mail.Message("Through the broker", recipients=["ada@example.com"],
                                         body="Hello"))
    finally:
        listener.stop()
    deadline = time.monotonic() + 30
    while not smtp_server.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r.message["Subject"] for r in smtp_server.received] == ["Through the broker"]


@pytest.mark.parametrize(("extra", "said"), [
    ({}, "outside development, AUTH is refused before STARTTLS"),
    ({"SUBMISSION_TLS_CERT": "/nonexistent/cert.pem"},
     "configuration error: SUBMISSION_TLS_CERT: no such file"),
])
def test_the_command_says_why_it_will_not_start(redis_url: str, extra: dict[str, str],
                                                said: str) -> None:
    environ = {"POSTROOM_ENV": "production", "SECRET_KEY": "s", "REDIS_URL": redis_url,
               "PUBLIC_URL": "https://mail.example.com", "METRICS_TOKEN": "m",
               "API_TOKENS": API_TOKEN, **extra}
    result = CliRunner().invoke(cli, ["submission", "--port", str(free_port())], env=environ)
    assert result.exit_code == 1
    assert said in result.output and "Traceback" not in result.output
