"""The baseline every delivery benchmark is compared with: Flask-Mail as the seed
tutorial uses it, and the personalised ~2 KB message both sides send.

It needs nothing of Postroom, so the whole-stack benchmark does not depend on the
engine's internals.
"""

from __future__ import annotations

import time

from flask import Flask
from flask_mail import Mail, Message

SENDER = "Postroom <noreply@postroom.test>"
PARAGRAPH = ("Thank you for being with us this year. Your statement for the period is "
             "ready, and the figures below are yours alone. ")


def body_for(name: str) -> str:
    """About 2 KB of text addressed to *name*."""
    text = f"Dear {name},\n\n"
    while len(text) < 2000:
        text += PARAGRAPH + "\n"
    return text + f"\nKind regards,\nPostroom for {name}\n"


def flask_mail_app(port: int) -> tuple[Flask, Mail]:
    app = Flask(__name__)
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_DEFAULT_SENDER=SENDER)
    return app, Mail(app)


def flask_message(i: int, attachment: bytes | None = None) -> Message:
    name = f"Customer {i}"
    message = Message(subject=f"Your statement, {name}", recipients=[f"c{i}@example.com"],
                      body=body_for(name), sender=SENDER)
    if attachment is not None:
        message.attach("statement.pdf", "application/pdf", attachment)
    return message


def send_each(port: int, n: int) -> float:
    app, mail = flask_mail_app(port)
    with app.app_context():
        started = time.perf_counter()
        for i in range(n):
            mail.send(flask_message(i))
        return time.perf_counter() - started


def connection_loop(port: int, n: int, attachment: bytes | None = None) -> float:
    app, mail = flask_mail_app(port)
    with app.app_context():
        started = time.perf_counter()
        with mail.connect() as conn:
            for i in range(n):
                conn.send(flask_message(i, attachment))
        return time.perf_counter() - started
