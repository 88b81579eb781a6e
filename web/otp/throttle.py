"""Resend throttling for OTP requests: per address and per client IP, shared by the
``/verify`` form and ``POST /api/otp`` (one budget across both), counted in Redis."""

from __future__ import annotations

from flask import current_app, request
from flask_limiter.util import get_remote_address

from tasks.stores.otp import address_digest
from web.extensions import limiter


def _submitted_address() -> str:
    if request.is_json:
        body = request.get_json(silent=True)
        value = body.get("email") if isinstance(body, dict) else None
    else:
        value = request.form.get("email")
    return value.strip().lower() if isinstance(value, str) else ""


def address_key() -> str:
    return "address:" + address_digest(_submitted_address())


def _no_address() -> bool:
    return "@" not in _submitted_address()


per_address = limiter.shared_limit(
    lambda: current_app.config["OTP_RATE_LIMIT_PER_ADDRESS"], scope="otp-address",
    key_func=address_key, exempt_when=_no_address, methods=["POST"])
per_ip = limiter.shared_limit(
    lambda: current_app.config["OTP_RATE_LIMIT_PER_IP"], scope="otp-ip",
    key_func=get_remote_address, methods=["POST"])
