"""Redis or the broker out of reach: a 503 the client can act on, never a 500.

One handler for the whole app maps the errors that mean "a dependency cannot be
reached" to 503 with ``Retry-After``: ``/api/*`` (and callers that ask for JSON)
get ``{"error": {"code": "unavailable", ...}}``, the pages a short HTML page.
Views stay free of try/except; what they stored before the failure is undone by
the stores they wrote to (see ``MessageStore.enqueueing`` and campaign creation).
"""

from __future__ import annotations

import logging

import kombu.exceptions
import redis.exceptions
from flask import Flask, Response, render_template, request

from web.api.errors import error_response

log = logging.getLogger(__name__)

# Redis refused, reset or timed out (BusyLoadingError, Redis loading its AOF, is a
# ConnectionError), or cannot take writes for now (a replica during a failover, or
# maxmemory reached); kombu raises OperationalError when a task cannot be published.
UNREACHABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    kombu.exceptions.OperationalError,
)
RETRY_AFTER = 5  # seconds: long enough for a Redis restart, short enough for a form
MESSAGE = ("the service cannot store or queue work right now; nothing was accepted, "
           f"try again in {RETRY_AFTER} seconds")


def wants_json() -> bool:
    if request.path.startswith("/api/") or request.blueprint == "api":
        return True
    accept = request.accept_mimetypes  # a page unless JSON is preferred (e.g. a poll)
    return accept.best_match(["text/html", "application/json"]) == "application/json"


def unavailable(err: Exception) -> tuple[Response | str, int, dict[str, str]]:
    """503 for a request that met an unreachable Redis or broker."""
    what = "broker" if isinstance(err, kombu.exceptions.OperationalError) else "Redis"
    log.warning("%s unreachable during %s %s: %s", what, request.method, request.path,
                err)
    headers = {"Retry-After": str(RETRY_AFTER)}
    if wants_json():
        body, status = error_response(503, "unavailable", MESSAGE)
        return body, status, headers
    return render_template("unavailable.html", retry_after=RETRY_AFTER), 503, headers


def init_app(app: Flask) -> None:
    for error in UNREACHABLE:
        app.register_error_handler(error, unavailable)
