"""Submitting a message: what every way in (``POST /api/messages``, the SMTP submission
listener) does with a valid message: store it with its attachments, queue its delivery.

What the client must change is a :mod:`~tasks.shared.errors` error: no sender
(:class:`Invalid`), an attachment too large (:class:`TooLarge`), an idempotency key
reused for another message (:class:`Conflict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from tasks.delivery.relay_probe import park_at_submission
from tasks.messages.store import IdempotencyConflict, MessageStore, message_status
from tasks.messages.tasks import deliver_message
from tasks.shared.attachments import AttachmentStore
from tasks.shared.errors import Conflict, Invalid, TooLarge
from tasks.vocabulary import Kind, Status

NO_SENDER = "give a sender, or set MAIL_DEFAULT_SENDER"
Upload = tuple[str, str | None, bytes]  # file name, declared type, bytes


@dataclass(frozen=True, slots=True)
class Submitted:
    """A message accepted (or, for a replayed Idempotency-Key, the one it stands for)."""

    id: str
    status: str
    created: bool


def message_store() -> MessageStore:
    config = current_app.config  # kept for RETENTION_DAYS, plus the time it may take to send
    ttl = int((float(config["RETENTION_DAYS"]) * 86400) + float(config["DELIVERY_MAX_AGE"]))
    return MessageStore(current_app.extensions["redis"], ttl=ttl)


def require_sender(sender: str | None, default_sender: str | None) -> None:
    """:class:`Invalid` naming ``sender`` when a message would have no ``From`` at all."""
    if not sender and not default_sender:
        raise Invalid.of("sender", NO_SENDER, "the message has no sender")


def check_attachment_size(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise TooLarge(f"attachment {name!r} is over {limit} bytes (MAX_ATTACHMENT_BYTES)",
                       code="attachment_too_large",
                       fields={"attachments": f"{name}: more than {limit} bytes"})


def scoped_idempotency_key(token_digest: str, key: str) -> str:
    """*key* as the store keeps it, scoped to the caller's token (its SHA-256, in hex);
    :class:`Invalid` when it is not 1 to 255 printable ASCII characters."""
    if not (0 < len(key) <= 255 and key.isascii() and key.isprintable()):
        raise Invalid("the Idempotency-Key header is not valid",
                      fields={"Idempotency-Key": "1 to 255 printable ASCII characters"})
    return f"{token_digest}:{key}"


def submit_message(fields: dict[str, Any], recipients: list[str], uploads: list[Upload], *,
                   idempotency_key: str | None = None) -> Submitted:
    """Store the message (*fields*, validated, without attachments) with *uploads* as its
    attachments and queue its delivery to *recipients* (its envelope).

    *idempotency_key* is already scoped to the caller (:func:`scoped_idempotency_key`).
    """
    limit = int(current_app.config["MAX_ATTACHMENT_BYTES"])
    require_sender(fields.get("sender"), current_app.config.get("MAIL_DEFAULT_SENDER"))
    for name, _, data in uploads:
        check_attachment_size(name, len(data), limit)
    attachments = AttachmentStore(current_app.extensions["redis"])
    refs = [attachments.put(data, name, declared) for name, declared, data in uploads]
    fields = dict(fields)
    if refs:
        fields["attachments"] = [ref.as_fields() for ref in refs]
    store = message_store()
    if idempotency_key is None:
        admission = store.accept(fields, recipients)
    else:
        try:
            admission = store.create_once(idempotency_key, fields, recipients)
        except IdempotencyConflict:
            raise Conflict("this Idempotency-Key was used for a different request; "
                           "send a new key for a new message",
                           code="idempotency_conflict") from None
    stored = admission.message
    if not admission.queued:  # new, or a replay of a request whose task was never queued
        with store.enqueueing(admission):
            # every relay known to be down: parked here, as its task would park itself
            if not park_at_submission(deliver_message, [stored.id], stored.created_at,
                                      f"{Kind.MESSAGE}:{stored.id}"):
                deliver_message.delay(stored.id)
    status = (Status.QUEUED if admission.created
              else message_status(store.ledger(stored.id).counts()))
    return Submitted(stored.id, status, admission.created)
