"""Email verification pages: ``/verify`` (ask for a code) and ``/validate`` (enter it)."""

from __future__ import annotations

from web.otp import views  # noqa: F401  (routes)
from web.otp.blueprint import bp as bp
