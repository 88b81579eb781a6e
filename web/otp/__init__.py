"""Email verification pages: ``/verify`` (ask for a code) and ``/validate`` (enter it)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("otp", __name__)

from web.otp import views  # noqa: E402,F401  (routes)
