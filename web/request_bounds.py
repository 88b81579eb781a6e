"""How large a request body may be, decided before anything reads it.

The bound depends on the route and on who asks:

- the API: ``MAX_MESSAGE_BYTES`` (a message with its attachments); a campaign
  created with a CSV upload (``multipart/form-data`` on ``POST /api/campaigns``):
  ``CAMPAIGN_MAX_UPLOAD_BYTES``;
- pages, for a signed-in operator: ``MAX_MESSAGE_BYTES``, and
  ``CAMPAIGN_MAX_UPLOAD_BYTES`` for the new-campaign upload;
- pages, for everyone else (``/verify``, ``/validate``, unsubscribe, the sign-in
  form): ``MAX_FORM_BYTES`` (64 KiB by default; no public form needs more).

A declared ``Content-Length`` over the bound is a 413 at once, before the CSRF
check, the throttles or the form parser look at the body; a chunked body with no
length is cut off by werkzeug's limited stream at the same bound, so at most that
many bytes are read or spooled. The 413 is JSON under ``/api``, a short page
elsewhere.
"""

from __future__ import annotations

import logging
from typing import IO, cast

from flask import Flask, Response, current_app, render_template, request, session
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

from web.api.errors import error_response, is_api_path

log = logging.getLogger(__name__)

UPLOAD_ENDPOINTS = frozenset({"api.create", "campaigns.new"})  # campaign CSV uploads


def _operator_signed_in() -> bool:
    from web.campaigns.blueprint import SESSION_KEY
    from web.campaigns.signin import sessions

    held = session.get(SESSION_KEY)
    return held is not None and sessions().is_open(held)


def body_limit() -> int:
    """The most bytes this request's body may have."""
    config = current_app.config
    message = int(config["MAX_MESSAGE_BYTES"])
    upload = max(message, int(config["CAMPAIGN_MAX_UPLOAD_BYTES"]))
    endpoint = request.endpoint or ""
    if endpoint.startswith("api."):
        multipart = request.mimetype == "multipart/form-data"
        return upload if endpoint == "api.create" and multipart else message
    if endpoint.startswith(("campaigns.", "outbox.")) and endpoint != "campaigns.login" \
            and _operator_signed_in():
        return upload if endpoint in UPLOAD_ENDPOINTS else message
    return min(message, int(config["MAX_FORM_BYTES"]))


class BoundedStream(LimitedStream):
    """A body sent without a length, cut off at the bound with a 413.

    werkzeug's own stream raises the 413 when a form parser reads past the bound,
    but reading it whole (``get_data``, hence JSON) stops quietly at the bound, so
    a cut-off body would be parsed as if it were all there.
    """

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted and self._stream.read(1):
            raise RequestEntityTooLarge()
        return data


def bound_the_body() -> None:
    """Refuse a declared length over the bound; cap what a chunked body may send."""
    declared = request.content_length
    streamed = declared is None and bool(request.environ.get("wsgi.input_terminated"))
    if declared is None and not streamed:
        return  # no body at all
    limit = body_limit()
    request.max_content_length = limit
    if declared is not None and declared > limit:
        log.info("request body refused: %s bytes declared, %s allowed on %s",
                 declared, limit, request.endpoint)
        raise RequestEntityTooLarge(f"the body is larger than {limit} bytes")
    if streamed:
        request.stream = cast(IO[bytes], BoundedStream(request.environ["wsgi.input"], limit,
                                                       is_max=True))


def too_large(err: RequestEntityTooLarge) -> tuple[Response, int] | tuple[str, int]:
    limit = request.max_content_length
    message = f"the body is larger than {limit} bytes" if limit else "the body is too large"
    if is_api_path(request.path):
        return error_response(413, "request_entity_too_large", message)
    return render_template("too_large.html", limit=limit), 413


def init_app(app: Flask) -> None:
    """Register the bound first, so it runs before the CSRF check and the throttles."""
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_MESSAGE_BYTES"])
    app.before_request(bound_the_body)
    app.register_error_handler(RequestEntityTooLarge, too_large)
