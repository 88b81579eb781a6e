"""The special-use names this deployment sends to (``ALLOW_SPECIAL_USE_DOMAINS``)."""

from __future__ import annotations

from flask import current_app, has_app_context


def special_use_allowed() -> tuple[str, ...]:
    """``("local", "internal")`` when allowed; empty (refused) by default."""
    if not has_app_context():
        return ()
    return tuple(current_app.config.get("ALLOW_SPECIAL_USE_DOMAINS") or ())
