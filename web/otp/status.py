"""Delivery status of an OTP request in words people read (``/validate`` and its poll)."""

from __future__ import annotations

from typing import Any

from tasks.vocabulary import CODE_FINAL, CodeStatus

FINAL = CODE_FINAL  # the page stops polling

_LABELS: dict[str, str] = {
    CodeStatus.QUEUED: "Queued: the email will go out in a moment.",
    CodeStatus.SENDING: "Sending the email now.",
    CodeStatus.SENT: "Sent. Check your inbox for the code.",
    CodeStatus.DEFERRED: "We could not send the code yet; retrying.",
    CodeStatus.FAILED: "Not delivered.",
    CodeStatus.VERIFIED: "Verified. This address is confirmed.",
    CodeStatus.EXPIRED: "Expired. Request a new code.",
    CodeStatus.LOCKED: "Locked after too many wrong codes. Request a new code.",
}


MAX_REASON = 200  # characters of the recipient's server's answer shown

_CLOSED_NOTICES: dict[str, str] = {
    CodeStatus.LOCKED: "This request is locked: too many wrong codes were entered. "
              "Request a new code to try again.",
    CodeStatus.EXPIRED: "This code has expired. Request a new code.",
}


def closed_notice(status: str) -> str | None:
    """What the page says instead of the code form once no code can be entered."""
    return _CLOSED_NOTICES.get(status)


def reason(public: dict[str, Any]) -> str | None:
    """Why the address was refused, in the mail server's words: ``"550 5.1.1 no such user"``.

    Only a permanent (5xx) answer about the address is shown: anyone can open this
    page, so a delay, a relay out of reach or any other error (which may name a
    relay's host and port, or an exception) shows the plain status alone.
    """
    error = public.get("error")
    code = public.get("smtp_code")
    if not error or public["status"] != CodeStatus.FAILED or not isinstance(code, int) \
            or not 500 <= code < 600:
        return None
    shown = error if error.startswith(str(code)) else f"{code} {error}"
    return shown[:MAX_REASON]


def describe(public: dict[str, Any]) -> dict[str, Any]:
    """What the status poll returns: status, a sentence, the reason; never a code."""
    status = public["status"]
    return {"status": status, "label": _LABELS[status], "reason": reason(public),
            "final": status in FINAL, "expires_at": public["expires_at"],
            "attempts_left": public["attempts_left"], "updated_at": public["updated_at"]}
