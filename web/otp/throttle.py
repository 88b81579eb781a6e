"""Throttles for one-time codes, counted in Redis and shared by every web process.

- code requests per mailbox (``OTP_RATE_LIMIT_PER_ADDRESS``), keyed on the address
  normalised as :func:`tasks.shared.mailbox.canonical_mailbox` does, one budget
  across the ``/verify`` form and ``POST /api/otp``;
- code requests per client network (``OTP_RATE_LIMIT_PER_IP``; IPv6 per /64) on
  the form, and per bearer token (``OTP_RATE_LIMIT_PER_TOKEN``) on the API, whose
  callers are backends serving many end users from one address;
- code submissions per client network on ``/validate``
  (``OTP_VERIFY_RATE_LIMIT_PER_IP``) and per token on the API's verify.

Guessing itself is bounded per mailbox by the store (:meth:`OTPStore.verify`).
"""

from __future__ import annotations

from flask import current_app, request

from tasks.shared.mailbox import mailbox_digest
from web.clients import client_network, token_key
from web.extensions import limiter

NOT_TEXT = "must be an email address as a string"


def submitted_email() -> object:
    """The ``email`` value as sent (JSON or form), whatever its type; ``None`` if absent."""
    if request.is_json:
        body = request.get_json(silent=True)
        return body.get("email") if isinstance(body, dict) else None
    return request.form.get("email")


def email_problem() -> str | None:
    """Why the submitted ``email`` cannot be an address at all (a list, a number...)."""
    if request.is_json and not isinstance(request.get_json(silent=True), dict):
        return None  # the body itself is refused by the view
    value = submitted_email()
    return None if value is None or isinstance(value, str) else NOT_TEXT


def address_key() -> str:
    value = submitted_email()
    return "mailbox:" + mailbox_digest(value if isinstance(value, str) else "")


def _no_address() -> bool:
    value = submitted_email()
    return not isinstance(value, str) or "@" not in value


per_address = limiter.shared_limit(
    lambda: current_app.config["OTP_RATE_LIMIT_PER_ADDRESS"], scope="otp-address",
    key_func=address_key, exempt_when=_no_address, methods=["POST"])
per_ip = limiter.shared_limit(
    lambda: current_app.config["OTP_RATE_LIMIT_PER_IP"], scope="otp-ip",
    key_func=client_network, methods=["POST"])
per_token = limiter.shared_limit(
    lambda: current_app.config["OTP_RATE_LIMIT_PER_TOKEN"], scope="otp-token",
    key_func=token_key, methods=["POST"])
verify_per_ip = limiter.shared_limit(
    lambda: current_app.config["OTP_VERIFY_RATE_LIMIT_PER_IP"], scope="otp-verify-ip",
    key_func=client_network, methods=["POST"])
verify_per_token = limiter.shared_limit(
    lambda: current_app.config["OTP_RATE_LIMIT_PER_TOKEN"], scope="otp-verify-token",
    key_func=token_key, methods=["POST"])
