"""SMTP sessions for batches, built on Flask-Mail's ``Connection``.

Flask-Mail's connection has no socket timeout, verifies no certificate and,
with ``MAIL_MAX_EMAILS = N``, reconnects *after* the N-th message, so a batch
of k*N messages opens one session that carries nothing. :class:`BatchConnection`
keeps Flask-Mail's shape and fixes all three: it connects lazily, before the
message that needs a session, so n messages use exactly ceil(n/N) sessions.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from flask_mail import Connection

from tasks.engine.outcome import DeliveryOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """Flask-Mail's settings plus ours, as plain values (no Flask app needed)."""

    server: str = "localhost"
    port: int = 25
    use_tls: bool = False
    use_ssl: bool = False
    debug: bool = False
    username: str | None = None
    password: str | None = None
    default_sender: str | None = None
    max_emails: int | None = None
    suppress: bool = False
    ascii_attachments: bool = False
    timeout: float = 30.0
    tls_verify: bool = True
    tls_ca_file: str | None = None
    message_id_domain: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> SMTPSettings:
        """Read the settings from a Flask-style config mapping."""
        return cls(
            server=config["MAIL_SERVER"],
            port=int(config["MAIL_PORT"]),
            use_tls=bool(config["MAIL_USE_TLS"]),
            use_ssl=bool(config["MAIL_USE_SSL"]),
            debug=bool(config["MAIL_DEBUG"]),
            username=config.get("MAIL_USERNAME"),
            password=config.get("MAIL_PASSWORD"),
            default_sender=config.get("MAIL_DEFAULT_SENDER"),
            max_emails=config.get("MAIL_MAX_EMAILS"),
            suppress=bool(config["MAIL_SUPPRESS_SEND"]),
            ascii_attachments=bool(config["MAIL_ASCII_ATTACHMENTS"]),
            timeout=float(config["MAIL_TIMEOUT"]),
            tls_verify=bool(config["MAIL_TLS_VERIFY"]),
            tls_ca_file=config.get("MAIL_TLS_CA_FILE"),
            message_id_domain=config.get("MAIL_MESSAGE_ID_DOMAIN"),
        )

    def tls_context(self) -> ssl.SSLContext:
        """A context that verifies the server unless verification is turned off."""
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class SessionGate(Protocol):
    """Bounds concurrent SMTP sessions (``MAIL_MAX_CONNECTIONS``) across processes."""

    def acquire(self) -> str:
        """Block until a session may open; return a handle for :meth:`release`."""

    def release(self, handle: str) -> None:
        """The session that *handle* stands for has closed."""


TRANSPORT_ERRORS = (smtplib.SMTPServerDisconnected, socket.timeout, ConnectionError, OSError)


class BatchConnection(Connection):
    """One SMTP session at a time for a whole batch, honouring ``max_emails``.

    Use as a context manager; :meth:`send_data` returns one
    :class:`DeliveryOutcome` per recipient and never raises for a reply the
    server gives.
    """

    def __init__(self, settings: SMTPSettings, gate: SessionGate | None = None) -> None:
        super().__init__(settings)  # type: ignore[arg-type]  # same attribute names as Mail
        self.settings = settings
        self.gate = gate
        self._gate_handle: str | None = None
        self.sessions_opened = 0

    def __enter__(self) -> BatchConnection:
        self.host = None  # connect lazily, when the first message needs it
        self.num_emails = 0
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def configure_host(self) -> smtplib.SMTP:
        s = self.settings
        if self.gate is not None and self._gate_handle is None:
            self._gate_handle = self.gate.acquire()
        host: smtplib.SMTP
        try:
            if s.use_ssl:
                host = smtplib.SMTP_SSL(s.server, s.port, timeout=s.timeout,
                                        context=s.tls_context())
            else:
                host = smtplib.SMTP(s.server, s.port, timeout=s.timeout)
        except BaseException:
            self._release_gate()
            raise
        try:
            host.set_debuglevel(int(s.debug))
            if s.use_tls:
                host.starttls(context=s.tls_context())
            if s.username and s.password:
                host.login(s.username, s.password)
        except BaseException:
            host.close()
            self._release_gate()
            raise
        self.sessions_opened += 1
        return host

    def _release_gate(self) -> None:
        handle, self._gate_handle = self._gate_handle, None
        if self.gate is not None and handle is not None:
            self.gate.release(handle)

    def close(self) -> None:
        """End the current session politely if there is one."""
        host, self.host = self.host, None
        self.num_emails = 0
        if host is None:
            return
        try:
            host.quit()
        except (smtplib.SMTPException, OSError):
            host.close()
        finally:
            self._release_gate()

    def _drop(self) -> None:
        host, self.host = self.host, None
        self.num_emails = 0
        if host is not None:
            host.close()
        self._release_gate()

    def send_data(self, sender: str, recipients: Sequence[str],
                  data: bytes) -> dict[str, DeliveryOutcome]:
        """Send one message to *recipients*; classify each recipient's fate."""
        if self.settings.suppress:
            return {rcpt: DeliveryOutcome("suppressed") for rcpt in recipients}
        max_emails = self.settings.max_emails
        if self.host is not None and max_emails and self.num_emails >= max_emails:
            self.close()
        try:
            if self.host is None:
                self.host = self.configure_host()
            self.num_emails += 1
            refused = self.host.sendmail(sender, list(recipients), data)
        except smtplib.SMTPRecipientsRefused as err:
            return {rcpt: DeliveryOutcome.from_reply(*err.recipients[rcpt]) for rcpt in recipients}
        except smtplib.SMTPResponseException as err:  # MAIL FROM or DATA refused, or 421
            if err.smtp_code == 421:
                self._drop()
            return {rcpt: DeliveryOutcome.from_reply(err.smtp_code, err.smtp_error)
                    for rcpt in recipients}
        except ssl.SSLError as err:
            self._drop()
            reason = f"TLS failed: {err.reason or err}"
            return {rcpt: DeliveryOutcome("failed", None, reason) for rcpt in recipients}
        except TRANSPORT_ERRORS as err:
            self._drop()
            reason = f"connection to {self.settings.server}:{self.settings.port} failed: {err!r}"
            log.warning("SMTP transport failure: %s", reason)
            return {rcpt: DeliveryOutcome.transport_failure(reason) for rcpt in recipients}
        return {rcpt: (DeliveryOutcome.from_reply(*refused[rcpt]) if rcpt in refused
                       else DeliveryOutcome("sent", 250)) for rcpt in recipients}
