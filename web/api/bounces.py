"""``POST /api/bounces``: a bounce (DSN, RFC 3464) or a complaint (ARF, RFC 5965) as the raw
message a mailbox forwarder or a provider's hook hands over (``message/rfc822``)."""

from __future__ import annotations

from flask import current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

from tasks.bounces.reports import MalformedReport
from tasks.bounces.service import bounce_desk
from web.api.blueprint import bp
from web.api.errors import APIError
from web.api.openapi import describe


class MatchedOut(BaseModel):
    email: str
    action: str
    message_id: str | None = None
    campaign_id: str | None = None


class BouncesOut(BaseModel):
    matched: list[MatchedOut]


@bp.post("/bounces")
def take_bounce() -> ResponseReturnValue:
    if request.mimetype != "message/rfc822":
        raise APIError(415, "unsupported_media_type",
                       "send the bounce or complaint as Content-Type: message/rfc822")
    limit = int(current_app.config.get("BOUNCE_MAX_BYTES") or 1024 * 1024)
    if (request.content_length or 0) > limit:
        raise APIError(413, "too_large", f"a bounce or complaint is at most {limit} bytes")
    request.max_content_length = limit  # a body without a length is cut off there too
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise APIError(413, "too_large", f"a bounce or complaint is at most {limit} bytes")
    if not raw.strip():
        raise APIError(400, "empty", "the body is empty: send the whole bounce message")
    desk = bounce_desk(current_app.extensions["redis"], current_app.config)
    try:
        matched = desk.take(raw, authenticated=True)
    except MalformedReport as err:
        raise APIError(400, "malformed_report", f"{err}: send the bounce or complaint "
                       "as the mail it came in (RFC 5322, MIME)") from None
    if not matched:
        raise APIError(422, "unmatched", "no recipient of a message Postroom sent matches this "
                       "report (it is kept for a week)")
    return jsonify({"matched": [m.public() for m in matched]}), 200  # applied, not queued


describe("post", "/api/bounces", "Apply a bounce (DSN) or a complaint (ARF): the recipient "
         "becomes bounced and the address is suppressed; a delay is only recorded",
         operation_id="takeBounce", tag="bounces", status=200, response=BouncesOut,
         errors=(400, 401, 413, 415, 422),
         raw_body="message/rfc822")
