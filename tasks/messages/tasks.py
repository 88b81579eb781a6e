"""Tasks for messages accepted by ``POST /api/messages``.

- ``postroom.deliver_message``: one message to all its recipients (one SMTP
  transaction; a retry touches only the recipients still unsettled).
- ``postroom.deliver_each``: every recipient in a range gets a copy of its own
  (``To:`` that recipient), all on one connection: the generic bulk batch.

Every build of a message keeps one Message-ID (``<message id[.recipient]@domain>``),
so a copy sent twice, were it ever, can be recognised by the receiver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from celery import Task, shared_task

from tasks.delivery import runtime
from tasks.delivery.engine.compose import Attachment, Composer, Draft
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.verp import BounceRef, verp_address
from tasks.delivery.ledger import DeliveryLedger, RecipientRecord
from tasks.delivery.runner import Delivery
from tasks.delivery.service import Outgoing
from tasks.messages.store import MessageStore, StoredMessage
from tasks.shared.attachments import AttachmentRef, AttachmentStore
from tasks.vocabulary import UNSETTLED, Kind

log = logging.getLogger(__name__)



def draft_for(message: StoredMessage, default_sender: str | None,
              attachments: list[Attachment] | None = None) -> Draft:
    """The message as the engine builds it (the envelope is set by the claim)."""
    fields: dict[str, Any] = message.fields
    return Draft(
        sender=fields.get("sender") or default_sender or "",
        to=fields.get("to") or [],
        cc=fields.get("cc") or [],
        bcc=fields.get("bcc") or [],
        reply_to=fields.get("reply_to") or [],
        subject=fields.get("subject") or "",
        text=fields.get("body"),
        html=fields.get("html"),
        headers=fields.get("headers") or {},
        attachments=attachments or (),
    )


def _attachments(message: StoredMessage) -> list[Attachment] | InvalidMessageError:
    """The message's attachments, loaded once for the batch; an error if one expired."""
    refs = [AttachmentRef.from_fields(a) for a in message.fields.get("attachments") or []]
    try:
        return AttachmentStore(runtime.redis_client()).load(refs)
    except InvalidMessageError as err:
        return err


def _deliver(task: Task, message: StoredMessage, ledger: DeliveryLedger,
             outgoing: list[Outgoing], composer: Composer, what: str) -> dict[str, int]:
    # bounced, complained, manual: the suppression list for messages
    delivery = Delivery(task, Kind.MESSAGE, message.id, ledger, created_at=message.created_at)
    report = delivery.run(outgoing, composer, what)
    delivery.settle(report)
    return report.summary()


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A stored message made ready for one batch: its ledger, composer and draft."""

    message: StoredMessage
    ledger: DeliveryLedger
    composer: Composer
    template: Draft
    problem: InvalidMessageError | None  # an attachment that expired: every copy fails
    return_path: str | None  # MAIL_RETURN_PATH
    secret_key: str
    records: list[RecipientRecord]  # every recipient's, when loaded with the message

    def checked(self, draft: Draft) -> Draft:
        if self.problem is not None:
            raise self.problem
        return draft

    def bounce_address(self, index: int | None) -> str | None:
        """The VERP envelope sender (``MAIL_RETURN_PATH``), or ``None`` to use the sender."""
        if not self.return_path:
            return None
        return verp_address(self.return_path, self.secret_key,
                            BounceRef(Kind.MESSAGE, self.message.id, index))


def _load(message_id: str, *, with_recipients: bool = False) -> _Loaded | None:
    """The message with its attachments loaded once for the batch, or None if gone; with
    every recipient's record, read in the same round trip, when *with_recipients*."""
    store = MessageStore(runtime.redis_client())
    ledger = store.ledger(message_id)
    records: list[RecipientRecord] = []
    if with_recipients:
        message, records = store.get_with_recipients(message_id, ledger)
    else:
        message = store.get(message_id)
    if message is None:
        log.warning("message %s no longer exists; nothing to send", message_id)
        return None
    settings = runtime.smtp_settings()
    attachments = _attachments(message)
    loaded = attachments if isinstance(attachments, list) else None
    problem = attachments if isinstance(attachments, InvalidMessageError) else None
    return _Loaded(message, ledger, runtime.composer(settings),
                   draft_for(message, settings.default_sender, loaded), problem,
                   settings.return_path, str(runtime.app_config()["SECRET_KEY"]), records)


@shared_task(name="postroom.deliver_message", bind=True, max_retries=None, ignore_result=False)
def deliver_message(self: Task, message_id: str) -> dict[str, int] | None:
    """Send one stored message to its recipients that are not yet settled.

    Returns the run's recipient counts by outcome (stored for ``CELERY_RESULT_EXPIRES``).
    """
    batch = _load(message_id, with_recipients=True)
    if batch is None:
        return None
    draft = replace(_with_message_id(batch.template, batch.composer, message_id),
                    return_path=batch.bounce_address(None))

    def draft_to(claimed: list[RecipientRecord]) -> Draft:
        return batch.checked(draft)  # the claim decides the envelope; headers stay as written

    ledger = batch.ledger
    recipients = _unsettled_of(batch.records)
    return _deliver(self, batch.message, ledger,
                    [Outgoing(recipients, draft_to)] if recipients else [], batch.composer,
                    f"message {message_id}")


@shared_task(name="postroom.deliver_each", bind=True, max_retries=None, ignore_result=False)
def deliver_each(self: Task, message_id: str, first: int, stop: int) -> dict[str, int] | None:
    """Send each unsettled recipient numbered *first* to *stop* - 1 a copy of its own;
    returns the run's recipient counts by outcome."""
    batch = _load(message_id)
    if batch is None:
        return None
    template, composer = batch.template, batch.composer

    def copy_for(claimed: list[RecipientRecord]) -> Draft:
        [recipient] = claimed
        return batch.checked(replace(
            template, to=[recipient.email], cc=(), bcc=(),
            message_id=composer.message_id_for(f"{message_id}.{recipient.index}",
                                               template.envelope_sender),
            return_path=batch.bounce_address(recipient.index)))

    indices = _unsettled(batch.ledger, range(first, stop))
    return _deliver(self, batch.message, batch.ledger,
                    [Outgoing([i], copy_for) for i in indices], composer,
                    f"message {message_id} copies {first}-{stop - 1}")


def _unsettled(ledger: DeliveryLedger, indices: range) -> list[int]:
    """Only the recipients a retry still has to touch."""
    return _unsettled_of(ledger.get(list(indices)))


def _unsettled_of(records: list[RecipientRecord]) -> list[int]:
    return [r.index for r in records if r.status in UNSETTLED]


def _with_message_id(draft: Draft, composer: Composer, message_id: str) -> Draft:
    return replace(draft, message_id=composer.message_id_for(message_id, draft.envelope_sender))
