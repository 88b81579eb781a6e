"""Who may read the operator's view of the deployment (``/metrics``, ``/healthz`` details).

A request may when it sends ``METRICS_TOKEN`` as ``Authorization: Bearer <token>``
(what Prometheus and probes send), or comes from a signed-in operator (the
campaign pages' sign-in). With no ``METRICS_TOKEN`` configured, which outside
development needs ``METRICS_PUBLIC=true`` said explicitly (:func:`web.config.check`),
anyone may.
"""

from __future__ import annotations

import hmac

from flask import current_app, request, session
from redis.exceptions import RedisError


def metrics_token_sent() -> bool:
    """The request carries ``METRICS_TOKEN`` as a bearer token (constant-time comparison)."""
    expected = current_app.config.get("METRICS_TOKEN")
    if not expected:
        return False
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), str(expected).encode())


def open_to_anyone() -> bool:
    """No token is configured: the operator's view is public (development, METRICS_PUBLIC)."""
    return not current_app.config.get("METRICS_TOKEN")


def operator_signed_in() -> bool:
    """The request's session cookie holds an open operator session."""
    from web.campaigns.blueprint import SESSION_KEY  # the pages import much: imported late
    from web.campaigns.signin import sessions

    try:
        return sessions().is_open(session.get(SESSION_KEY))
    except RedisError:  # sessions live in Redis: unknown, so not signed in
        return False


def may_see_details() -> bool:
    """``/healthz`` details: the metrics token, the operator's sign-in, or no token set."""
    return open_to_anyone() or metrics_token_sent() or operator_signed_in()
