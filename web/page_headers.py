"""Framing headers on every response: no other site may frame a Postroom page.

Each response gets ``X-Frame-Options: DENY`` and ``frame-ancestors 'none'`` in its
``Content-Security-Policy`` (added to a policy the view already set). A view that
is framed by the app itself on purpose (the Outbox's sandboxed HTML frame) sets
its own ``frame-ancestors`` and ``X-Frame-Options``; those are kept.
"""

from __future__ import annotations

from flask import Flask, Response

NO_FRAMING = "frame-ancestors 'none'"


def forbid_framing(response: Response) -> Response:
    policy = response.headers.get("Content-Security-Policy", "").strip().rstrip(";")
    if "frame-ancestors" not in policy:
        response.headers["Content-Security-Policy"] = \
            f"{policy}; {NO_FRAMING}" if policy else NO_FRAMING
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def init_app(app: Flask) -> None:
    app.after_request(forbid_framing)
