"""``POST /api/messages`` and ``GET /api/messages/<id>``."""

from __future__ import annotations

from flask import current_app, jsonify
from flask.typing import ResponseReturnValue

from tasks.mail import deliver_message
from tasks.stores.messages import MessageStore, message_status
from web.api import bp
from web.api.errors import APIError
from web.api.openapi import describe
from web.api.requests import json_body, parse
from web.api.schemas import Accepted, MessageIn, MessageOut, RecipientOut


def _store() -> MessageStore:
    return MessageStore(current_app.extensions["redis"])


@bp.post("/messages")
def create_message() -> ResponseReturnValue:
    """Accept a message, queue its delivery, answer 202 without touching SMTP."""
    message = parse(MessageIn, json_body())
    fields = message.model_dump(exclude_none=True)
    stored = _store().create(fields, message.recipients())
    deliver_message.delay(stored.id)
    return jsonify(Accepted(id=stored.id, status="queued").model_dump()), 202


describe("post", "/api/messages", "Queue a message", status=202, request=MessageIn,
         response=Accepted, errors=(400, 401, 413, 415, 422))


@bp.get("/messages/<message_id>")
def show_message(message_id: str) -> ResponseReturnValue:
    store = _store()
    message = store.get(message_id)
    if message is None:
        raise APIError(404, "not_found", f"no message with id {message_id!r}")
    ledger = store.ledger(message_id)
    records, _ = ledger.page(limit=10_000)
    shown = MessageOut(
        id=message.id,
        status=message_status(ledger.counts()),
        created_at=message.created_at,
        recipients=[RecipientOut(**record.public()) for record in records],
    )
    return jsonify(shown.model_dump(exclude_none=True))


describe("get", "/api/messages/{message_id}", "A message's status per recipient", status=200,
         response=MessageOut, errors=(401, 404))
