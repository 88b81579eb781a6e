"""Flask-Mail's interface, delivered through Postroom's API instead of SMTP.

Switch an app from Flask-Mail by changing one import and adding two settings::

    from postroom_client.flask import Mail   # was: from flask_mail import Mail
    app.config["POSTROOM_URL"] = "https://postroom.example.com"
    app.config["POSTROOM_TOKEN"] = "..."

Messages stay ``flask_mail.Message`` objects, ``email_dispatched`` is Flask-Mail's own
signal (so ``record_messages()`` and existing test code work), and ``MAIL_SUPPRESS_SEND``
defaults to ``app.testing`` as in Flask-Mail: in tests nothing is sent and every message
is still recorded. ``send`` returns once Postroom accepted the message, with its id and
status URL (:class:`~postroom_client.models.Accepted`; ``None`` when sending is suppressed).

``with mail.connect() as conn: conn.send(msg)`` makes one API call per message, all on
one kept HTTP connection (keep-alive): the API takes one message per call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.headerregistry import Address
from email.utils import formataddr
from types import TracebackType
from typing import Any

from flask import Flask, current_app
from flask_mail import Attachment as MailAttachment
from flask_mail import BadHeaderError, Message, email_dispatched

from postroom_client.client import Postroom
from postroom_client.models import Accepted, Attachment

__all__ = ["BadHeaderError", "Connection", "Mail", "Message", "UnsupportedMessage",
           "email_dispatched"]


class UnsupportedMessage(ValueError):
    """The message uses a Flask-Mail feature Postroom's API cannot carry."""


def _address(value: str | tuple[str, str]) -> str:
    """``"Name <user@example.com>"`` for Flask-Mail's ``(name, address)``, the name quoted
    when it needs it and left in Unicode (Postroom encodes headers itself)."""
    if isinstance(value, str):
        return value
    name, address = value
    try:
        return str(Address(display_name=name, addr_spec=address))
    except (ValueError, IndexError):  # not an address: Postroom's 422 will name the field
        return formataddr(value)


def _attachment(attached: MailAttachment, charset: str) -> Attachment:
    if attached.disposition != "attachment" or attached.headers:
        raise UnsupportedMessage(f"attachment {attached.filename!r}: only plain attachments "
                                 "(no inline disposition, no per-attachment headers)")
    data = attached.data.encode(charset) if isinstance(attached.data, str) else attached.data
    return Attachment(attached.filename or "attachment", data, attached.content_type)


def message_fields(message: Message) -> dict[str, Any]:
    """The :meth:`Postroom.send_message` arguments for a Flask-Mail *message*."""
    extra_alts = set(message.alts) - {"html"}
    if extra_alts:
        raise UnsupportedMessage(f"alternative parts {sorted(extra_alts)}: only plain text "
                                 "and html")
    if message.mail_options or message.rcpt_options:
        raise UnsupportedMessage("mail_options and rcpt_options are SMTP's; Postroom sets "
                                 "the envelope itself")
    html = message.html if message.html is not None else message.alts.get("html")
    body = message.body if message.body is not None or html is not None else ""
    charset = message.charset or "utf-8"
    return {
        "to": [_address(a) for a in message.recipients],
        "cc": [_address(a) for a in message.cc],
        "bcc": [_address(a) for a in message.bcc],
        "reply_to": [_address(message.reply_to)] if message.reply_to else [],
        "sender": _address(message.sender) if message.sender else None,
        "subject": message.subject,
        "body": body,
        "html": html,
        "headers": dict(message.extra_headers or {}),
        "attachments": [_attachment(a, charset) for a in message.attachments],
    }


class _State:
    """What ``app.extensions["mail"]`` holds: Flask-Mail's settings and the API client."""

    def __init__(self, config: Any, testing: bool) -> None:
        self.default_sender: str | tuple[str, str] | None = config.get("MAIL_DEFAULT_SENDER")
        self.suppress = bool(config.get("MAIL_SUPPRESS_SEND", testing))
        self.ascii_attachments = bool(config.get("MAIL_ASCII_ATTACHMENTS", False))
        self.max_emails = config.get("MAIL_MAX_EMAILS")
        self.url = str(config.get("POSTROOM_URL") or "")
        self.token = str(config.get("POSTROOM_TOKEN") or "")
        self.timeout = float(config.get("POSTROOM_TIMEOUT", 10.0))
        if not self.suppress and not (self.url and self.token):
            raise RuntimeError("postroom_client.flask.Mail needs POSTROOM_URL and "
                               "POSTROOM_TOKEN (or MAIL_SUPPRESS_SEND)")
        self._lock = threading.Lock()
        self._client: Postroom | None = None
        self._pid = 0

    def __repr__(self) -> str:  # never the token
        return f"<postroom mail state {self.url!r} suppress={self.suppress}>"

    def client(self) -> Postroom:
        """One client (one pool of kept connections) per process, made when first used."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():  # never a pool across fork
                self._client = Postroom(self.url, self.token, timeout=self.timeout)
                self._pid = os.getpid()
            return self._client


class Connection:
    """Flask-Mail's ``Connection``: ``send`` makes one API call on the kept connection."""

    def __init__(self, state: _State) -> None:
        self.mail = state
        self.host: Postroom | None = None
        self.num_emails = 0

    def __enter__(self) -> Connection:
        self.host = None if self.mail.suppress else self.mail.client()
        self.num_emails = 0
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.host = None  # the client and its connections stay for the next send

    def send(self, message: Message, envelope_from: str | tuple[str, str] | None = None
             ) -> Accepted | None:
        """Check *message* as Flask-Mail does, queue it at Postroom, signal it.

        *envelope_from* is refused unless it is the sender: Postroom sets the envelope.
        """
        if not message.send_to:
            raise AssertionError("No recipients have been added")
        if not message.sender:
            raise AssertionError("The message does not specify a sender and a default "
                                 "sender has not been configured")
        if message.has_bad_headers():
            raise BadHeaderError
        if envelope_from is not None and _address(envelope_from) != _address(message.sender):
            raise UnsupportedMessage("envelope_from: Postroom sets the envelope sender")
        if message.date is None:
            message.date = time.time()
        accepted = None
        if self.host is not None:
            accepted = self.host.send_message(**message_fields(message))
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        email_dispatched.send(app, message=message)
        self.num_emails += 1
        return accepted

    def send_message(self, *args: Any, **kwargs: Any) -> Accepted | None:
        """``send(Message(*args, **kwargs))``."""
        return self.send(Message(*args, **kwargs))


class Mail:
    """Flask-Mail's ``Mail`` over Postroom: ``Mail(app)`` or ``mail.init_app(app)``."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        self.state: _State | None = self.init_app(app) if app is not None else None

    def init_app(self, app: Flask) -> _State:
        """Read the settings (``MAIL_*`` as Flask-Mail does, and ``POSTROOM_URL``,
        ``POSTROOM_TOKEN``, ``POSTROOM_TIMEOUT``) into ``app.extensions["mail"]``."""
        state = _State(app.config, app.testing)
        app.extensions["mail"] = state
        return state

    def connect(self) -> Connection:
        app = self.app or current_app
        try:
            return Connection(app.extensions["mail"])
        except KeyError as err:
            raise RuntimeError("The current application was not configured with "
                               "postroom_client.flask.Mail") from err

    def send(self, message: Message) -> Accepted | None:
        """Queue *message* at Postroom; with ``MAIL_SUPPRESS_SEND`` (tests) only signal it."""
        with self.connect() as connection:
            return connection.send(message)

    def send_message(self, *args: Any, **kwargs: Any) -> Accepted | None:
        """``send(Message(*args, **kwargs))``."""
        return self.send(Message(*args, **kwargs))

    @contextmanager
    def record_messages(self) -> Iterator[list[Message]]:
        """Every message sent (or suppressed) inside the block, as Flask-Mail records them."""
        outbox: list[Message] = []

        def record(app: Flask, message: Message) -> None:
            outbox.append(message)

        with email_dispatched.connected_to(record):
            yield outbox

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__.get("state"), name, None)
