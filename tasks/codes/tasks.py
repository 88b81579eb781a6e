"""The task that mails a one-time code: ``postroom.otp.send`` on the ``otp`` queue.

Its only argument is the request id. The code does not exist until this task
is about to send: :meth:`OTPStore.issue` draws it, keeps its HMAC, and the code
goes into the message and nowhere else. A retry after a temporary failure
draws a fresh code, so the newest mail always holds the working one.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import replace

from celery import Task, shared_task

from tasks.codes.store import OTPStore
from tasks.delivery import runtime
from tasks.delivery.engine.compose import Draft
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.ledger import RecipientRecord
from tasks.delivery.runner import Delivery
from tasks.delivery.service import Outgoing
from tasks.delivery.watch_list import Watchlist
from tasks.vocabulary import CodeStatus, Kind, Status

log = logging.getLogger(__name__)

SUBJECT = "Your verification code"
SUPPRESSED_SEND = "sending is suppressed (MAIL_SUPPRESS_SEND)"


def lifetime_text(seconds: int) -> str:
    """``600`` -> ``"10 minutes"``; ``90`` -> ``"90 seconds"``."""
    if seconds % 60 == 0:
        minutes = seconds // 60
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    return f"{seconds} seconds"


def code_draft(sender: str, to: str, code: str, ttl: int) -> Draft:
    """The verification mail: a text and an HTML part, both with the code and its lifetime."""
    lifetime = lifetime_text(ttl)
    text = (f"Your verification code is:\n\n    {code}\n\n"
            f"It expires in {lifetime} and works once.\n"
            "If you did not ask for this code, you can ignore this email.\n")
    markup = (
        "<!doctype html><html><body style=\"font-family: sans-serif\">"
        "<p>Your verification code is:</p>"
        f"<p style=\"font-size: 2em; letter-spacing: .2em; font-weight: bold\">"
        f"{html.escape(code)}</p>"
        f"<p>It expires in {html.escape(lifetime)} and works once.</p>"
        "<p>If you did not ask for this code, you can ignore this email.</p>"
        "</body></html>")
    return Draft(sender=sender, to=[to], subject=SUBJECT, text=text, html=markup,
                 headers={"Auto-Submitted": "auto-generated"})


def code_delivery(record: RecipientRecord,
                  barred: Callable[[str], str | None]) -> tuple[CodeStatus, str | None]:
    """The request's status and error, from its recipient's ledger *record*.

    A suppressed recipient reads as sent: if the address bounced or complained
    (*barred* gives the reason) no mail went, but the request tells nobody which
    addresses those are; otherwise (``MAIL_SUPPRESS_SEND``) the mail was built and
    handed to ``email_dispatched``, as sent.
    """
    if record.status == Status.SUPPRESSED:
        return CodeStatus.SENT, None if barred(record.email) else SUPPRESSED_SEND
    if record.status in (Status.SENT, Status.DEFERRED):
        return CodeStatus(record.status), record.error
    return CodeStatus.FAILED, record.error


@shared_task(name="postroom.otp.send", bind=True, max_retries=None, ignore_result=True)
def send_code(self: Task, request_id: str) -> None:
    """Mail a fresh code for OTP request *request_id*, unless it is closed or gone."""
    redis = runtime.redis_client()
    store = OTPStore.from_config(redis, runtime.app_config())
    request = store.get(request_id)
    if request is None:
        Watchlist(redis).done(Kind.OTP, request_id)
        log.warning("otp request %s no longer exists; nothing to send", request_id)
        return
    ledger = store.ledger(request_id)
    # MAIL_DEBUG makes smtplib print every line it sends to stderr, the code among
    # them; a secret never goes to an output stream, so one-time codes go quietly.
    settings = replace(runtime.smtp_settings(), debug=False)
    policy = replace(runtime.retry_policy(), max_age=float(store.policy.ttl))  # no use later

    def draft_to(claimed: list[RecipientRecord]) -> Draft:
        code = store.issue(request_id)
        if code is None:
            raise InvalidMessageError("the request was replaced, used or has expired")
        return code_draft(settings.default_sender or "", claimed[0].email, code,
                          store.policy.ttl)

    # an unsubscribe does not stop codes
    delivery = Delivery(self, Kind.OTP, request_id, ledger, created_at=request.created_at,
                        settings=settings, policy=policy)
    report = delivery.run([Outgoing([0], draft_to)], runtime.composer(settings),
                          f"otp request {request_id}")
    if report.counts:
        [record] = ledger.get([0])
        status, error = code_delivery(record, delivery.suppressed.why)
        store.record_delivery(request_id, status, record.smtp_code, error)
    delivery.settle(report)
