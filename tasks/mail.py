"""Tasks for single messages accepted by ``POST /api/messages``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task

from tasks import runtime
from tasks.delivery import Envelope, retry_countdown, run_batch
from tasks.engine.compose import Draft
from tasks.engine.session import BatchConnection
from tasks.stores.ledger import RecipientRecord
from tasks.stores.messages import MessageStore, StoredMessage

log = logging.getLogger(__name__)


def draft_for(message: StoredMessage, default_sender: str | None) -> Draft:
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
    )


@shared_task(name="postroom.deliver_message", bind=True, max_retries=None, ignore_result=True)
def deliver_message(self: Task, message_id: str) -> None:
    """Send one stored message to its recipients that are not yet settled."""
    store = MessageStore(runtime.redis_client())
    message = store.get(message_id)
    if message is None:
        log.warning("message %s no longer exists; nothing to send", message_id)
        return
    ledger = store.ledger(message_id)
    settings = runtime.smtp_settings()
    policy = runtime.retry_policy()
    draft = draft_for(message, settings.default_sender)
    recipients = list(range(sum(ledger.counts().values())))

    def draft_to(claimed: list[RecipientRecord]) -> Draft:
        return draft  # the claim decides the envelope; headers stay as written

    token = f"{self.request.id or 'local'}:{uuid.uuid4().hex}"
    with BatchConnection(settings, gate=runtime.session_gate()) as connection:
        report = run_batch(ledger, [Envelope(recipients, draft_to)], connection,
                           runtime.composer(settings), token=token,
                           max_attempts=policy.max_attempts, pace=runtime.pacer())
    log.info("message %s: %s", message_id, report.counts)
    countdown = retry_countdown(report, policy, self.request.retries + 1)
    if countdown is not None:
        raise self.retry(countdown=countdown)
