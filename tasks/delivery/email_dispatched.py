"""Flask-Mail's ``email_dispatched`` signal, for every message Postroom sends or suppresses.

Postroom builds its messages itself (:mod:`tasks.delivery.engine.compose`), so Flask-Mail's
``Connection.send`` never runs; this module keeps Flask-Mail's promise instead:
once a message's fate is known and at least one recipient got it (``sent``) or
would have (``suppressed``, ``MAIL_SUPPRESS_SEND``), the signal fires in the
task's app context with a :class:`flask_mail.Message` that says what went out.
``with mail.record_messages() as outbox:`` therefore captures API messages,
one-time-code mail and campaign mail, as it would for ``mail.send``.

The message is only built when something listens to the signal.
"""

from __future__ import annotations

import time

from flask import Flask
from flask_mail import Attachment as MailAttachment
from flask_mail import Message, email_dispatched

from tasks.delivery.engine.compose import ComposedMessage, Draft
from tasks.delivery.engine.plaintext import text_from_html
from tasks.delivery.service import MessageFate
from tasks.vocabulary import Status

DISPATCHED = frozenset({Status.SENT, Status.SUPPRESSED})  # the outcomes Flask-Mail signals


def flask_mail_message(draft: Draft, composed: ComposedMessage | None = None) -> Message:
    """*draft* as Flask-Mail's own :class:`~flask_mail.Message` (its Message-ID kept)."""
    text = draft.text
    if text is None and draft.html is not None:
        text = text_from_html(draft.html)  # the text part the composer derives
    message = Message(
        subject=draft.subject,
        recipients=list(draft.to),
        body=text,
        html=draft.html,
        sender=draft.sender,
        cc=list(draft.cc),
        bcc=list(draft.bcc),
        reply_to=", ".join(draft.reply_to) or None,
        extra_headers=dict(draft.headers) or None,
        attachments=[MailAttachment(a.filename, a.content_type, a.data, a.disposition)
                     for a in draft.attachments],
        date=time.time(),
    )
    if composed is not None:
        message.msgId = composed.message_id
    elif draft.message_id:
        message.msgId = draft.message_id
    return message


class DispatchSignal:
    """A :class:`~tasks.delivery.service.BatchOptions` observer that fires ``email_dispatched``."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __call__(self, fate: MessageFate) -> None:
        if fate.draft is None or not email_dispatched.receivers:
            return
        if not any(outcome.status in DISPATCHED for outcome in fate.outcomes):
            return
        message = flask_mail_message(fate.draft, fate.message)
        email_dispatched.send(self.app, message=message)
