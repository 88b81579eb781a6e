"""The dev-only Outbox page: messages the embedded SMTP server captured.

Captured mail holds one-time codes and unsubscribe links, so the Outbox is
offered only with the embedded capture server in development (:func:`offered`:
``postroom dev`` sets ``OUTBOX_DIR`` when it runs its own capture server on
127.0.0.1, never in production), and every route needs the operator's sign-in
(the campaign pages' ``ADMIN_USERNAME``/``ADMIN_PASSWORD``, which ``postroom dev``
prints). The list is paged and searchable by recipient or
subject and refreshes itself; a message shows its text, its HTML (in a sandboxed
frame served with a restrictive Content-Security-Policy), every header, the raw
source and its attachments.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from email.message import EmailMessage
from io import BytesIO
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue

from web.campaigns.blueprint import admin_required
from web.captured_mail import CapturedMailbox, attachment_parts, text_and_html
from web.outbox_view import register_filters, remote_images

logger = logging.getLogger(__name__)

bp = Blueprint("outbox", __name__, url_prefix="/outbox")
register_filters(bp)

PAGE_SIZE = 50
MAX_QUERY = 200
RAW_SHOWN = 200_000  # bytes of source shown on the page; the raw route serves all of it
# The captured HTML may load nothing from anywhere and run nothing; inline styles
# and data: images only. ``sandbox`` also gives the frame an opaque origin.
HTML_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
               "font-src data:; sandbox; base-uri 'none'; form-action 'none'")
# the frame on the message's own page is the one place the app frames itself
HTML_FRAMING = "frame-ancestors 'self'"
CAPTURE_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def offered(config: Mapping[str, Any]) -> bool:
    """Whether to serve the Outbox: ``OUTBOX_DIR`` set, development (or tests), and
    mail going to a capture server on this machine, as ``postroom dev`` runs it."""
    development = bool(config.get("TESTING")) or config.get("POSTROOM_ENV") == "development"
    local = str(config.get("MAIL_SERVER") or "") in CAPTURE_HOSTS
    return bool(config.get("OUTBOX_DIR")) and development and local


@bp.before_request
@admin_required
def signed_in() -> None:
    """Every Outbox route needs the operator's sign-in (a redirect to it otherwise)."""


def mailbox() -> CapturedMailbox:
    """The app's captured mailbox (one per app, so each file's headers are read once)."""
    found = current_app.extensions.get("outbox")
    if found is None:
        found = CapturedMailbox(Path(current_app.config["OUTBOX_DIR"]))
        current_app.extensions["outbox"] = found
    return found


def _page_number() -> int:
    raw = request.args.get("page", "1")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) < 1:
        abort(400, description="page must be a positive number")
    return int(raw)


@bp.get("/")
def index() -> ResponseReturnValue:
    query = request.args.get("q", "")[:MAX_QUERY]
    page = _page_number()
    count, messages = mailbox().search(query, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, math.ceil(count / PAGE_SIZE))
    if page > pages:
        abort(404)
    newest = messages[0].name if messages and page == 1 else ""
    return render_template("outbox/index.html", messages=messages, count=count, page=page,
                           pages=pages, query=query, newest=newest)


@bp.get("/latest.json")
def latest() -> ResponseReturnValue:
    """What the list polls: how many messages there are and the newest one's name."""
    names = mailbox().names()
    return jsonify(count=len(names), newest=names[0] if names else "")


@bp.post("/clear")
def clear() -> ResponseReturnValue:
    removed = mailbox().clear()
    logger.info("outbox cleared: %s messages deleted", removed)
    flash(f"Deleted {removed} captured message{'s' if removed != 1 else ''}.")
    return redirect(url_for("outbox.index"), code=303)


@bp.post("/<name>/delete")
def delete(name: str) -> ResponseReturnValue:
    """Delete one captured message (the form carries the CSRF token)."""
    if not mailbox().delete(name):
        abort(404)
    logger.info("outbox message %s deleted", name)
    flash("Deleted the message.")
    return redirect(url_for("outbox.index"), code=303)


def _message(name: str) -> tuple[EmailMessage, bytes]:
    found = mailbox().message(name)
    if found is None:
        abort(404)
    return found


@bp.get("/<name>")
def show(name: str) -> ResponseReturnValue:
    message, raw = _message(name)
    text, html = text_and_html(message)
    attachments = [attachment for attachment, _ in attachment_parts(message)]
    headers = [(key, str(value)) for key, value in message.raw_items()]
    return render_template("outbox/show.html", message=message, name=name, text=text,
                           has_html=bool(html), attachments=attachments, headers=headers,
                           blocked_images=remote_images(html), size=len(raw),
                           raw=raw[:RAW_SHOWN].decode("utf-8", "replace"),
                           raw_cut=len(raw) > RAW_SHOWN)


@bp.get("/<name>/html")
def html(name: str) -> ResponseReturnValue:
    """The message's HTML body, for the sandboxed frame only."""
    message, _ = _message(name)
    _, body = text_and_html(message)
    response = Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = f"{HTML_POLICY}; {HTML_FRAMING}"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/<name>/raw")
def raw(name: str) -> ResponseReturnValue:
    """The message exactly as captured, as plain text."""
    _, source = _message(name)
    response = Response(source, mimetype="text/plain")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def _safe_filename(filename: str) -> str:
    """The name without path separators or control characters (werkzeug quotes the rest)."""
    cleaned = "".join("_" if char in "/\\" or ord(char) < 32 or ord(char) == 127 else char
                      for char in filename).strip(". ")
    return cleaned or "attachment"


@bp.get("/<name>/attachments/<int:index>")
def attachment(name: str, index: int) -> ResponseReturnValue:
    """One attachment, downloaded with its own type and its name safely quoted."""
    message, _ = _message(name)
    parts = attachment_parts(message)
    if index >= len(parts):
        abort(404)
    found, part = parts[index]
    payload = part.get_payload(decode=True)
    content = payload if isinstance(payload, bytes) else b""
    media_type = found.content_type if MEDIA_TYPE.match(found.content_type) \
        else "application/octet-stream"
    response = send_file(BytesIO(content), mimetype=media_type, as_attachment=True,
                         download_name=_safe_filename(found.filename))
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response

