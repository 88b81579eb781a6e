"""The Outbox as JSON, in Mailpit's shape: ``GET /outbox/api/messages`` (paged with
``start`` and ``limit``, searchable with ``query``) and ``GET /outbox/api/messages/<id>``.

Both sit behind the operator's sign-in, as every Outbox route does."""

from __future__ import annotations

from flask import jsonify, request
from flask.typing import ResponseReturnValue

from web.api.errors import APIError, handle_api_error
from web.captured_mail import attachment_parts, text_and_html
from web.outbox import MAX_QUERY, bp, mailbox
from web.outbox_view import message_json, summary_json

API_LIMIT = 500


def _whole(name: str, default: int, top: int) -> int:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 7:
        raise APIError(400, "invalid", f"{name} must be a whole number",
                       {name: "a whole number"})
    return min(int(raw), top)


@bp.errorhandler(APIError)
def api_error(err: APIError) -> ResponseReturnValue:
    return handle_api_error(err)


@bp.get("/api/messages")
def api_messages() -> ResponseReturnValue:
    start = _whole("start", 0, 10**7)
    limit = max(_whole("limit", 50, API_LIMIT), 1)
    query = request.args.get("query", "")[:MAX_QUERY]
    total = len(mailbox().names())
    count, found = mailbox().search(query, start, limit)
    return jsonify(total=total, messages_count=count, start=start, count=len(found),
                   messages=[summary_json(summary) for summary in found])


@bp.get("/api/messages/<name>")
def api_message(name: str) -> ResponseReturnValue:
    found = mailbox().message(name)
    if found is None:
        raise APIError(404, "not_found", f"no captured message {name[:64]!r}")
    message, raw = found
    text, html = text_and_html(message)
    attachments = [attachment for attachment, _ in attachment_parts(message)]
    return jsonify(message_json(name, message, len(raw), text, html, attachments))
