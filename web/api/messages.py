"""``POST /api/messages`` (JSON, or multipart with files) and ``GET /api/messages/<id>``."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Any

from flask import current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from tasks.messages.fields import MAX_HEADER_LINE
from tasks.messages.service import (
    Upload,
    check_attachment_size,
    message_store,
    scoped_idempotency_key,
    submit_message,
)
from tasks.messages.store import message_status
from tasks.shared.identifiers import is_record_id
from tasks.vocabulary import Status
from web.api.blueprint import bp
from web.api.errors import APIError
from web.api.openapi import describe
from web.api.requests import json_body, parse
from web.api.schemas import (
    MAX_RECIPIENTS,
    Accepted,
    MessageIn,
    MessageOut,
    RecipientOut,
    file_name_checked,
)

ADDRESS_FIELDS = frozenset({"to", "cc", "bcc", "reply_to"})
# all the address text a form may send: every recipient on a header line of its own
MAX_ADDRESS_TEXT = MAX_RECIPIENTS * (MAX_HEADER_LINE + 2)


@bp.post("/messages")
def create_message() -> ResponseReturnValue:
    """Accept a message, queue its delivery, answer 202 without touching SMTP.

    With an ``Idempotency-Key`` header, a repeat of the same request within 24 h
    answers with the first message's id and sends nothing more; the same key with a
    different request is 409. The key is stored with the message and counts as
    used once the delivery task is queued: a repeat after a 503 queues it then.
    """
    limit = int(current_app.config["MAX_ATTACHMENT_BYTES"])
    if request.mimetype == "multipart/form-data":
        body, uploads = _multipart(limit)
        message = parse(MessageIn, body)
    else:
        message = parse(MessageIn, json_body())
        uploads = [(a.filename, a.content_type, a.data()) for a in message.attachments]
    submitted = submit_message(message.stored_fields(), message.recipients(), uploads,
                               idempotency_key=_idempotency_key())
    response = jsonify(Accepted(id=submitted.id, status=submitted.status).model_dump())
    response.headers["Location"] = url_for("api.show_message", message_id=submitted.id)
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def _idempotency_key() -> str | None:
    """The header's key, scoped to the caller's token (hashed), or ``None``."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return scoped_idempotency_key(hashlib.sha256(token.encode()).hexdigest(), key)


def _multipart(limit: int) -> tuple[dict[str, Any], list[Upload]]:
    """The form's fields as MessageIn's input, and every file sent with it."""
    body: dict[str, Any] = {}
    for name in ADDRESS_FIELDS & set(request.form):  # bounded before any address is parsed
        if sum(len(value) for value in request.form.getlist(name)) > MAX_ADDRESS_TEXT:
            raise APIError(422, "invalid", "the request is not valid",
                           {name: f"more than {MAX_ADDRESS_TEXT} characters of addresses"})
    for name in request.form:
        values = request.form.getlist(name)
        if name in ADDRESS_FIELDS:
            body[name] = _addresses(values)
        elif name == "headers":
            body[name] = _json_object(values[-1])
        else:
            body[name] = values[0] if len(values) == 1 else values
    uploads: list[Upload] = []
    for field_name, storage in request.files.items(multi=True):
        data = storage.stream.read(limit + 1)
        if not storage.filename and not data:
            continue  # an empty file input
        name = storage.filename or field_name
        check_attachment_size(name, len(data), limit)
        file_name_checked(name)
        uploads.append((name, storage.mimetype or None, data))
    return body, uploads


def _addresses(values: list[str]) -> list[str]:
    """Form values, each one address or several separated by commas."""
    found: list[str] = []
    for value in values:
        for name, address in getaddresses([value]):
            if not name and not address:
                continue
            try:
                found.append(str(Address(display_name=name, addr_spec=address)) if name
                             else address)
            except ValueError:
                found.append(value)  # the schema says what is wrong with it
    return found


def _json_object(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise APIError(422, "invalid", "the request is not valid",
                       {"headers": "must be a JSON object of header names to values"}) from None


describe("post", "/api/messages", "Queue a message (JSON with base64 attachments, or "
         "multipart/form-data with files; Idempotency-Key honoured)",
         operation_id="createMessage", tag="messages", status=202,
         request=MessageIn, response=Accepted, errors=(400, 401, 409, 413, 415, 422),
         headers={"Idempotency-Key": "the same key and body within 24 h return the first "
                                     "message; the same key with another body is a 409"},
         files={"attachments": "files to attach (any file field is attached)"})


@bp.get("/messages/<message_id>")
def show_message(message_id: str) -> ResponseReturnValue:
    store = message_store()
    message = store.get(message_id) if is_record_id(message_id) else None
    if message is None:
        raise APIError(404, "not_found", f"no message with id {message_id[:64]!r}")
    ledger = store.ledger(message_id)
    records, more = ledger.page(limit=10_000)
    # the status from the same read as the recipients, so the two never disagree
    counts: dict[str, int] = dict.fromkeys(Status, 0) | Counter(record.status for record in records)
    shown = MessageOut(
        id=message.id,
        status=message_status(ledger.counts() if more is not None else counts),
        created_at=message.created_at,
        recipients=[RecipientOut(**record.public()) for record in records],
    )
    return jsonify(shown.model_dump(exclude_none=True))


describe("get", "/api/messages/{message_id}", "A message's status per recipient",
         operation_id="getMessage", tag="messages", status=200,
         response=MessageOut, errors=(401, 404))
