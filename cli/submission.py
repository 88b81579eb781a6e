"""``postroom submission``: SMTP submission, so an unchanged Flask-Mail app sends through
Postroom by pointing ``MAIL_SERVER``/``MAIL_PORT`` here and ``MAIL_PASSWORD`` at an API token.

- ``AUTH PLAIN`` or ``AUTH LOGIN`` with any user name and an API token (one with the
  ``send`` scope, checked as the API checks a bearer token) as the password; nothing
  is taken before it (530). Wrong credentials answer ``535 5.7.8`` and count against the
  client's network (``SUBMISSION_AUTH_RATE_LIMIT``, counted in Redis as the API's
  throttles are); once they are used up, ``421`` and the connection is closed.
- ``STARTTLS`` with ``SUBMISSION_TLS_CERT``/``SUBMISSION_TLS_KEY``; outside development
  AUTH is refused before it (538) and the listener will not start without a certificate.
- ``SIZE`` from ``MAX_MESSAGE_BYTES`` (552 past it), and the bounce listener's bounds on
  connections and time (:mod:`cli.smtp_listener`, ``SUBMISSION_*``).
- Each message goes through what ``POST /api/messages`` does
  (:func:`tasks.messages.service.submit_message`: validation, suppression, retries, webhooks,
  idempotency), read from its MIME form (:mod:`cli.submitted_mail`) and sent to its
  envelope recipients. ``250 2.0.0 Ok: queued as <id>`` names the message for
  ``GET /api/messages/<id>``; a message the API would refuse gets a 5xx with the reason,
  and nothing of it is kept. Work is done on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from email.utils import parseaddr
from typing import Any

import click
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from flask import Flask
from pydantic import ValidationError
from redis.exceptions import RedisError

from cli.smtp_listener import (
    BoundedSMTP,
    GatedController,
    ListenerLimits,
    serve_until_signalled,
)
from cli.submitted_mail import read_submitted
from tasks.delivery.throttle import FailedLogins
from tasks.messages.fields import mailbox
from tasks.messages.service import scoped_idempotency_key, submit_message
from tasks.shared.attachments import content_type_for
from tasks.shared.errors import DomainError, Invalid, TooLarge
from web.api.errors import fields_of
from web.api.schemas import MAX_RECIPIENTS, MessageIn, file_name_checked
from web.clients import network_of
from web.config import relaxed
from web.outages import UNREACHABLE
from web.token_scopes import granted, grants

log = logging.getLogger(__name__)

MAX_REPLY_TEXT = 400  # an SMTP reply line is at most 512 octets (RFC 5321 4.5.3.1.5)
INVALID_LOGIN = "535 5.7.8 Authentication credentials invalid"
TOO_MANY_LOGINS = "421 4.7.0 too many failed logins from your network; try again later"


class SubmissionSMTP(BoundedSMTP):
    """The bounded server, with failed logins throttled per client network."""

    name = "submission listener"
    login_failed = False  # set by the authenticator for the AUTH being answered

    async def _handle_client(self) -> None:
        """A network cut off for failed logins is told so in the greeting (421)."""
        if self.client is not None:
            client = network_of(self.client)
            try:
                blocked = await asyncio.get_running_loop().run_in_executor(
                    None, self.event_handler.throttle.blocked, client)
            except RedisError:
                blocked = False  # AUTH answers 454 while Redis cannot count
            if blocked:
                await self.push(TOO_MANY_LOGINS)
                self.close_connection()
                return
        await super()._handle_client()

    async def check_auth_needed(self, caller_method: str) -> bool:
        """No HELP, VRFY, MAIL, RCPT or DATA before AUTH (aiosmtpd's ``auth_required``,
        which also warns when TLS is not required, as in development)."""
        if self.session is not None and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return True
        return False

    async def smtp_AUTH(self, arg: str) -> None:
        throttle: FailedLogins = self.event_handler.throttle
        client = network_of(self.peer_address)
        loop = asyncio.get_running_loop()
        try:
            if await loop.run_in_executor(None, throttle.blocked, client):
                await self.push(TOO_MANY_LOGINS)
                self.close_connection()
                return
            self.login_failed = False
            await super().smtp_AUTH(arg)
            if not self.login_failed:
                return
            log.warning("submission listener: a failed login from %s", client)
            over = await loop.run_in_executor(None, throttle.failed, client)
        except RedisError as err:
            log.warning("submission listener: cannot count logins now: %s", err)
            await self.push("454 4.7.0 cannot check credentials now; try again later")
            return
        await self.push(TOO_MANY_LOGINS if over else INVALID_LOGIN)
        if over:
            self.close_connection()


class SubmissionHandler:
    """aiosmtpd handler: checks tokens, and makes each message a Postroom message."""

    def __init__(self, app: Flask, limits: ListenerLimits) -> None:
        self.app = app
        self.limits = limits
        self.grants = grants(app.config["API_TOKENS"])
        self.throttle = FailedLogins(app.extensions["redis"],
                                     app.config["SUBMISSION_AUTH_RATE_LIMIT"],
                                     scope="submission-login")
        self.executor = ThreadPoolExecutor(max_workers=limits.workers,
                                           thread_name_prefix="submission")
        self.waiting = 0  # messages in or waiting for the executor (event loop only)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        """aiosmtpd's authenticator: the password is an API token that may send."""
        try:
            token = auth_data.password.decode() if isinstance(auth_data, LoginPassword) else ""
        except UnicodeDecodeError:
            token = ""
        scopes = granted(token, self.grants) if token else None
        if scopes is None:
            if isinstance(server, SubmissionSMTP):
                server.login_failed = True  # answered, and counted, by smtp_AUTH
            return AuthResult(success=False, handled=True)
        if "send" not in scopes:
            return AuthResult(success=False, handled=False, message=(
                "535 5.7.8 this token lacks the 'send' scope sending mail needs"))
        return AuthResult(success=True, auth_data=hashlib.sha256(token.encode()).hexdigest())

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 too many recipients (at most {MAX_RECIPIENTS} a message)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        if self.waiting >= self.limits.queue:
            log.warning("submission listener: %d messages waiting; asked the client to retry",
                        self.waiting)
            return "451 4.3.2 too many messages waiting; try again later"
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, self.submit, raw, list(envelope.rcpt_tos),
                str(session.auth_data))
        finally:
            self.waiting -= 1

    def submit(self, raw: bytes, rcpt_tos: list[str], token_digest: str) -> str:
        """On a worker thread: the message to Postroom; the reply to DATA."""
        with self.app.app_context():
            try:
                mail = read_submitted(raw, rcpt_tos)
                message = MessageIn.model_validate(mail.fields)
                for name, declared, _ in mail.uploads:
                    file_name_checked(name)
                    _attachable(name, declared)
                key = (None if mail.idempotency_key is None
                       else scoped_idempotency_key(token_digest, mail.idempotency_key))
                submitted = submit_message(message.stored_fields(), _envelope(rcpt_tos),
                                           mail.uploads, idempotency_key=key)
            except ValidationError as err:
                return refusal("550 5.6.0", "the message is not valid",
                               _named(fields_of(err), mail.fields["bcc"]))
            except DomainError as err:
                code = "552 5.3.4" if isinstance(err, TooLarge) else "550 5.6.0"
                return refusal(code, err.message, err.fields)
            except UNREACHABLE as err:
                log.warning("submission listener: cannot store or queue a message now: %s",
                            err)
                return "451 4.3.0 the message cannot be stored now; try again later"
        log.info("submission listener: message %s queued for %d recipient(s)", submitted.id,
                 len(rcpt_tos))
        return f"250 2.0.0 Ok: queued as {submitted.id}"

    async def handle_exception(self, error: Exception) -> str:
        """What aiosmtpd answers when a command fails: never a 500 with the error's text."""
        log.error("submission listener: a command failed: %s", type(error).__name__)
        return "451 4.3.0 local error; try again later"

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _attachable(name: str, declared: str | None) -> None:
    try:
        content_type_for(name, declared)
    except ValueError as err:
        raise Invalid.of("attachments", f"{name[:80]!r}: {err}",
                         "an attachment is not valid") from None


def _envelope(rcpt_tos: list[str]) -> list[str]:
    """The envelope's recipients as the API's validation writes them, each once."""
    found: dict[str, None] = {}
    for address in rcpt_tos:
        try:
            found.setdefault(parseaddr(mailbox(address))[1], None)
        except ValueError as err:
            raise Invalid.of("RCPT TO", f"{address[:100]}: {err}",
                             "a recipient is not valid") from None
    return list(found)


def _named(fields: dict[str, str], bcc: list[str]) -> dict[str, str]:
    """Validation errors, ``bcc.<n>`` named by the envelope recipient it came from."""
    named: dict[str, str] = {}
    for name, reason in fields.items():
        field, _, index = name.partition(".")
        if field == "bcc" and index.isdigit() and int(index) < len(bcc):
            name = f"RCPT TO <{bcc[int(index)][:100]}>"
        named[name] = reason
    return named


def refusal(code: str, message: str, fields: dict[str, str] | None = None) -> str:
    """One reply line: *code*, the reason and what is wrong with which field."""
    details = "; ".join(f"{name}: {reason}" for name, reason in (fields or {}).items())
    text = f"{message} ({details})" if details else message
    text = " ".join(text.split())  # no line breaks in a reply
    if len(text) > MAX_REPLY_TEXT:
        text = text[:MAX_REPLY_TEXT - 3] + "..."
    return f"{code} {text}"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server's context for STARTTLS (TLS 1.2 or later)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def submission_limits(config: Any) -> ListenerLimits:
    return ListenerLimits.from_config(config, "SUBMISSION",
                                      max_bytes=int(config["MAX_MESSAGE_BYTES"]))


class SubmissionListener:
    """The listener on *host*:*port*, serving from a thread (:meth:`start`, :meth:`stop`).

    AUTH needs TLS first when *require_tls* (default: outside development and testing).
    """

    def __init__(self, app: Flask, *, host: str, port: int, limits: ListenerLimits | None = None,
                 tls: ssl.SSLContext | None = None, require_tls: bool | None = None) -> None:
        limits = limits or submission_limits(app.config)
        require_tls = not relaxed(app.config) if require_tls is None else require_tls
        if require_tls and tls is None:
            raise ValueError("AUTH is refused before STARTTLS, and STARTTLS needs a "
                             "certificate: set SUBMISSION_TLS_CERT and SUBMISSION_TLS_KEY")
        self.handler = SubmissionHandler(app, limits)
        self.controller = GatedController(
            self.handler, limits, SubmissionSMTP, hostname=host, port=port,
            authenticator=self.handler.authenticate,
            auth_require_tls=require_tls, tls_context=tls)

    def start(self) -> SubmissionListener:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=2587, show_default=True,
              help="SMTP submission port.")
def submission(host: str, port: int) -> None:
    """Take mail from Flask-Mail apps over SMTP (AUTH with an API token as the password)."""
    from web import create_app
    from web.config import ConfigError

    try:
        app = create_app()
    except ConfigError as err:
        raise click.ClickException(f"configuration error: {err}") from None
    cert, key = app.config.get("SUBMISSION_TLS_CERT"), app.config.get("SUBMISSION_TLS_KEY")
    try:
        context = tls_context(cert, key) if cert and key else None
    except (OSError, ssl.SSLError) as err:
        raise click.ClickException(f"SUBMISSION_TLS_CERT/SUBMISSION_TLS_KEY: cannot load "
                                   f"the certificate: {err}") from None
    try:
        listener = SubmissionListener(app, host=host, port=port, tls=context).start()
    except ValueError as err:
        raise click.ClickException(f"outside development, {err}") from None
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port}: {err}") from None
    click.echo(f"postroom submission: taking mail on smtp://{host}:{port} "
               f"({'STARTTLS' if context else 'no TLS'}; AUTH with an API token)")
    serve_until_signalled(listener)
