"""Delivery status of an OTP request in words people read (``/validate`` and its poll)."""

from __future__ import annotations

from typing import Any

FINAL = frozenset({"sent", "failed", "verified", "expired", "locked"})

_LABELS = {
    "queued": "Queued: the email will go out in a moment.",
    "sending": "Sending the email now.",
    "sent": "Sent. Check your inbox for the code.",
    "deferred": "Delayed: the mail server asked us to try again later. Retrying.",
    "failed": "Not delivered.",
    "verified": "Verified. This address is confirmed.",
    "expired": "Expired. Request a new code.",
    "locked": "Locked after too many wrong codes. Request a new code.",
}


_SERVERS_WORD = frozenset({"deferred", "failed"})  # the error is what the mail server said

_CLOSED_NOTICES = {
    "locked": "This request is locked: too many wrong codes were entered. "
              "Request a new code to try again.",
    "expired": "This code has expired. Request a new code.",
}


def closed_notice(status: str) -> str | None:
    """What the page says instead of the code form once no code can be entered."""
    return _CLOSED_NOTICES.get(status)


def reason(public: dict[str, Any]) -> str | None:
    """The server's answer behind a delay or failure: ``"550 5.1.1 no such user"``."""
    error = public.get("error")
    if not error or public["status"] not in _SERVERS_WORD:
        return None
    code = public.get("smtp_code")
    return f"{code} {error}" if code is not None and not error.startswith(str(code)) else error


def describe(public: dict[str, Any]) -> dict[str, Any]:
    """What the status poll returns: status, a sentence, the reason; never a code."""
    status = public["status"]
    return {"status": status, "label": _LABELS[status], "reason": reason(public),
            "final": status in FINAL, "expires_at": public["expires_at"],
            "attempts_left": public["attempts_left"], "updated_at": public["updated_at"]}
