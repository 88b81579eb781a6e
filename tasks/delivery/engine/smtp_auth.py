"""SMTP AUTH for a session: one attempt per session, clear errors, no secret in the log.

smtplib's ``login()`` tries every mechanism the server offers, so one wrong
password costs the relay two or three failed AUTHs per session (fail2ban bans
after five). :func:`authenticate` tries the best mechanism once; a refusal is an
:class:`smtplib.SMTPAuthenticationError` the session turns into the relay's
breaker. A server that offers AUTH only after STARTTLS (``MAIL_USE_TLS``
forgotten) gets an error that says so.

With ``MAIL_DEBUG`` smtplib prints the whole conversation, credentials included
(``AUTH PLAIN <base64>``, the LOGIN continuation lines). :func:`log_conversation`
sends it to the log instead, with the AUTH exchange redacted.
"""

from __future__ import annotations

import logging
import re
import smtplib

log = logging.getLogger(__name__)

PREFERRED = ("PLAIN", "LOGIN", "CRAM-MD5")  # PLAIN works with every password store
_AUTH_COMMAND = re.compile(r"^(b?['\"])AUTH\s+(\S+)", re.IGNORECASE)
_RETCODE = re.compile(r"^reply: retcode \((\d+)\)")


def authenticate(host: smtplib.SMTP, username: str, password: str, *,
                 tls: bool) -> None:
    """AUTH with the first of :data:`PREFERRED` the server offers, once.

    Raises :class:`smtplib.SMTPAuthenticationError` when refused and
    :class:`smtplib.SMTPNotSupportedError` when the server offers no AUTH (naming
    STARTTLS when the server wants it first and *tls* is off).
    """
    host.ehlo_or_helo_if_needed()
    if not host.has_extn("auth"):
        if host.has_extn("starttls") and not tls:
            raise smtplib.SMTPNotSupportedError(
                "the server requires STARTTLS before AUTH: set MAIL_USE_TLS=true "
                "(or MAIL_USE_SSL=true on a TLS port)")
        raise smtplib.SMTPNotSupportedError("the server does not offer SMTP AUTH "
                                            "(MAIL_USERNAME is set)")
    offered = host.esmtp_features["auth"].upper().split()
    mechanism = next((m for m in PREFERRED if m in offered), None)
    if mechanism is None:
        raise smtplib.SMTPNotSupportedError(
            f"no AUTH mechanism in common: the server offers {' '.join(offered)}")
    host.user, host.password = username, password
    method = getattr(host, "auth_" + mechanism.lower().replace("-", "_"))
    host.auth(mechanism, method, initial_response_ok=True)


class RedactedConversation:
    """smtplib's ``_print_debug``, to the log, with AUTH commands and continuations
    shown as ``****``."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.in_auth = False

    def __call__(self, *args: object) -> None:
        parts = [str(arg) for arg in args]
        if parts and parts[0] == "send:" and len(parts) > 1:
            command = _AUTH_COMMAND.match(parts[1])
            if command:
                self.in_auth = True
                parts[1] = f"{command.group(1)}AUTH {command.group(2)} ****{command.group(1)[-1]}"
            elif self.in_auth:
                parts[1] = "'****'"
        elif parts and self.in_auth:
            code = _RETCODE.match(parts[0])
            if code and code.group(1) != "334":
                self.in_auth = False
        log.info("SMTP %s %s", self.where, " ".join(parts))


def log_conversation(host: smtplib.SMTP, where: str) -> None:
    """Log what smtplib would print with ``set_debuglevel(1)``, credentials redacted."""
    host._print_debug = RedactedConversation(where)  # type: ignore[attr-defined]
    host.set_debuglevel(1)
