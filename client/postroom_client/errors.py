"""Exceptions: every API error carries Postroom's ``{"error": {code, message, fields}}``."""

from __future__ import annotations

from typing import Any


class PostroomError(Exception):
    """Anything this client raises."""


class TransportError(PostroomError):
    """No answer came from Postroom (connection refused, reset, timed out), after retries."""


class APIError(PostroomError):
    """Postroom answered with an error.

    :ivar status: the HTTP status (``422``)
    :ivar code: the API's error code (``"invalid"``, ``"not_found"``, ...)
    :ivar message: the API's text for people
    :ivar fields: which request fields were wrong and why (``{"to.0": "..."}``), or ``{}``
    :ivar retry_after: seconds the server asked the caller to wait, when it said
    """

    def __init__(self, status: int, code: str, message: str,
                 fields: dict[str, str] | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})
        self.retry_after = retry_after


class Unauthorized(APIError):
    """401: no token, or a wrong one."""


class Forbidden(APIError):
    """403: the token lacks the scope the operation needs."""


class NotFound(APIError):
    """404: no such id (or address)."""


class Conflict(APIError):
    """409: the state forbids it, or an Idempotency-Key was reused for another request."""


class InvalidRequest(APIError):
    """400, 413, 415 or 422: the request itself is wrong; ``fields`` says where."""


class RateLimited(APIError):
    """429: too many requests; ``retry_after`` says for how long."""


class Unavailable(APIError):
    """5xx: Postroom (or its Redis or broker) cannot take the request now."""


BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest, 429: RateLimited,
}


def error_from(status: int, body: Any, retry_after: float | None = None) -> APIError:
    """The exception for an error answer; *body* is its parsed JSON (or anything else)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = str(error.get("message") or "")
        raw_fields = error.get("fields")
        fields = ({str(k): str(v) for k, v in raw_fields.items()}
                  if isinstance(raw_fields, dict) else None)
    else:
        code, message, fields = "error", f"HTTP {status} without Postroom's error body", None
    kind = BY_STATUS.get(status, Unavailable if status >= 500 else APIError)
    return kind(status, code, message, fields, retry_after)
