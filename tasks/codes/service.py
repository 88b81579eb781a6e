"""Asking for a one-time code and checking one: what ``POST /api/otp`` (and its verify)
and the ``/verify`` page do, whichever way the address came in.

The rules of a code (its budget, expiry, one use, guesses) are the store's
(:class:`~tasks.codes.store.OTPStore`); the mail is the task's
(:func:`~tasks.codes.tasks.send_code`).
"""

from __future__ import annotations

from tasks.codes.store import OTPRequest, OTPStore, Verdict
from tasks.codes.tasks import send_code
from tasks.delivery.relay_probe import park_at_submission
from tasks.shared.errors import Invalid, NotFound
from tasks.vocabulary import Kind

GENERIC_FAILURE = "the code is wrong, used or expired; request a new code if in doubt"


def request_code(store: OTPStore, email: str) -> OTPRequest:
    """Store a code request for *email* and queue the mail that carries its code."""
    otp_request = store.create(email)
    # every relay known to be down: parked here, as its task would park itself
    if not park_at_submission(send_code, [otp_request.id], otp_request.created_at,
                              f"{Kind.OTP}:{otp_request.id}", max_age=float(store.policy.ttl)):
        send_code.delay(otp_request.id)
    return otp_request


def verify_code(store: OTPStore, request_id: str, code: str) -> None:
    """Accept *code* for the request once; :class:`NotFound` for an unknown request,
    :class:`Invalid` (the same answer whatever the reason) for a code that does not work."""
    verdict = store.verify(request_id, code)  # an unknown request spends no guess
    if verdict == Verdict.UNKNOWN:
        raise NotFound(f"no OTP request with id {request_id[:64]!r}")
    if verdict != Verdict.VERIFIED:
        raise Invalid(GENERIC_FAILURE, code="invalid_code")
