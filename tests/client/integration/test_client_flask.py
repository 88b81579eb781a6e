"""``postroom_client.flask.Mail``: Flask-Mail's interface over Postroom, used by a Flask app
of its own against Postroom served over real HTTP (Celery eager, real Redis and SMTP)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask_mail
import pytest
from flask import Flask
from flask_mail import Message

from postroom_client import InvalidRequest
from postroom_client.flask import BadHeaderError, Mail, UnsupportedMessage
from tests.conftest import API_TOKEN
from tests.support.client_support import Front, serving
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def front(app: Flask) -> Front:
    return Front(app.wsgi_app)


@pytest.fixture
def postroom_url(front: Front) -> Iterator[str]:
    with serving(front) as url:
        yield url


def client_app(**config: Any) -> Flask:
    """A Flask app of the client's, with Flask-Mail's settings."""
    app = Flask("client_app")
    app.config.update(MAIL_DEFAULT_SENDER=("Shop", "shop@example.com"), **config)
    return app


@pytest.fixture
def sending_app(postroom_url: str) -> Flask:
    return client_app(POSTROOM_URL=postroom_url, POSTROOM_TOKEN=API_TOKEN)


def test_send_takes_a_flask_mail_message_and_returns_its_id(
        sending_app: Flask, smtp_server: SMTPTestServer, postroom_url: str) -> None:
    mail = Mail(sending_app)
    with sending_app.app_context():
        message = Message("Order shipped", recipients=["ada@example.com"],
                          cc=[("Carol", "carol@example.com"), ("Zoë, Z.", "zoe@example.com")],
                          bcc=["bob@example.com"],
                          reply_to="help@example.com", body="On its way",
                          html="<p>On its <i>way</i></p>",
                          extra_headers={"X-Order": "77"})
        message.attach("label.pdf", "application/pdf", b"%PDF-1.4 \x00\xff")
        accepted = mail.send(message)
    assert accepted is not None and accepted.status == "queued"
    assert accepted.status_url == f"{postroom_url}/api/messages/{accepted.id}"
    assert message.date is not None  # set on send, as Flask-Mail does
    [received] = smtp_server.received
    sent = received.message
    assert sent["From"] == "Shop <shop@example.com>"  # MAIL_DEFAULT_SENDER, a tuple
    assert (sent["To"], sent["Cc"], sent["Reply-To"]) == (
        "ada@example.com", 'Carol <carol@example.com>, "Zoë, Z." <zoe@example.com>',
        "help@example.com")
    assert sent["X-Order"] == "77" and sent["Bcc"] is None
    assert sorted(received.recipients) == [
        "ada@example.com", "bob@example.com", "carol@example.com", "zoe@example.com"]
    [pdf] = sent.iter_attachments()
    assert (pdf.get_filename(), pdf.get_content()) == ("label.pdf", b"%PDF-1.4 \x00\xff")
    html = sent.get_body(("html",))
    assert html is not None and "<i>way</i>" in html.get_content()


def test_init_app_and_send_message_as_in_flask_mail(
        sending_app: Flask, smtp_server: SMTPTestServer) -> None:
    mail = Mail()
    mail.init_app(sending_app)
    with sending_app.app_context():
        accepted = mail.send_message("Hi", recipients=["ada@example.com"], body="x",
                                     sender="Other <other@example.com>")
    assert accepted is not None
    [received] = smtp_server.received
    assert received.message["From"] == "Other <other@example.com>"
    assert mail.default_sender is None and mail.state is None  # as Flask-Mail's init_app


def test_in_testing_nothing_is_sent_and_record_messages_captures_it(
        front: Front, smtp_server: SMTPTestServer) -> None:
    app = client_app(TESTING=True)  # no POSTROOM_URL needed: MAIL_SUPPRESS_SEND follows it
    mail = Mail(app)
    assert mail.suppress is True
    dispatched: list[Message] = []

    def on_dispatch(sender: Flask, message: Message) -> None:
        dispatched.append(message)

    with app.app_context(), mail.record_messages() as outbox, \
            flask_mail.email_dispatched.connected_to(on_dispatch):
        assert mail.send_message("Testing", recipients=["ada@example.com"], body="x") is None
    assert [m.subject for m in outbox] == ["Testing"]
    assert dispatched == outbox  # Flask-Mail's own signal, for existing test code
    assert front.seen == [] and smtp_server.received == []


def test_suppress_send_off_in_testing_sends(postroom_url: str,
                                            smtp_server: SMTPTestServer) -> None:
    app = client_app(TESTING=True, MAIL_SUPPRESS_SEND=False, POSTROOM_URL=postroom_url,
                     POSTROOM_TOKEN=API_TOKEN)
    mail = Mail(app)
    ours: list[Message] = []

    def on_dispatch(sender: Flask, message: Message) -> None:
        ours.append(message)

    # the in-process Postroom sends with Flask-Mail too, and record_messages hears every
    # app's email_dispatched, as Flask-Mail's does: the signal's sender is the app
    with app.app_context(), flask_mail.email_dispatched.connected_to(on_dispatch, sender=app):
        mail.send_message("Really", recipients=["ada@example.com"], body="x")
    assert [m.subject for m in ours] == ["Really"]
    assert len(smtp_server.received) == 1


def test_a_connection_sends_each_message_in_one_call_on_one_client(
        sending_app: Flask, front: Front, smtp_server: SMTPTestServer) -> None:
    """One API call per message, all from one pool of kept connections (werkzeug closes
    each connection; that the next call reuses it under gunicorn is in
    test_client_fresh_app)."""
    mail = Mail(sending_app)
    with sending_app.app_context(), mail.connect() as connection:
        client = connection.host
        ids = [connection.send(Message(f"Bulk {n}", recipients=[f"user{n}@example.com"],
                                       body="x"))
               for n in range(3)]
        assert connection.num_emails == 3
    with sending_app.app_context(), mail.connect() as again:
        assert client is not None and again.host is client  # kept for the next block
    posts = front.requests_to("POST", "/api/messages")
    assert len(posts) == 3
    assert len({accepted.id for accepted in ids if accepted is not None}) == 3
    assert len({seen.headers["Idempotency-Key"] for seen in posts}) == 3
    assert sorted(r.message["Subject"] for r in smtp_server.received) == [
        "Bulk 0", "Bulk 1", "Bulk 2"]


def test_the_apis_refusal_is_an_exception_and_nothing_is_signalled(
        sending_app: Flask) -> None:
    mail = Mail(sending_app)
    with sending_app.app_context(), mail.record_messages() as outbox:
        with pytest.raises(InvalidRequest) as raised:
            mail.send_message("Hi", recipients=["not an address"], body="x")
    assert set(raised.value.fields) == {"to.0"} and outbox == []


def test_what_flask_mail_refuses_and_what_postroom_cannot_carry(sending_app: Flask,
                                                                front: Front) -> None:
    mail = Mail(sending_app)
    with sending_app.app_context():
        with pytest.raises(BadHeaderError):
            mail.send_message("Two\nlines", recipients=["ada@example.com"], body="x")
        with pytest.raises(AssertionError, match="No recipients"):
            mail.send_message("Nobody", body="x")
        inline = Message("Logo", recipients=["ada@example.com"], body="x")
        inline.attach("logo.png", "image/png", b"\x89PNG", "inline", {"Content-ID": "<l>"})
        with pytest.raises(UnsupportedMessage, match="inline"):
            mail.send(inline)
    assert front.seen == []


def test_without_the_settings_init_app_says_which_are_missing() -> None:
    with pytest.raises(RuntimeError, match="POSTROOM_URL and POSTROOM_TOKEN"):
        Mail(client_app())
