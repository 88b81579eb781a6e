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
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from flask_mail import Connection

from tasks.delivery.engine.errors import (
    PermanentDeliveryError,
    SessionError,
    TemporaryDeliveryError,
)
from tasks.delivery.engine.outcome import CREDENTIALS_REFUSED, DeliveryOutcome
from tasks.delivery.engine.pool import KeptSession, SessionPool, SlotHolder
from tasks.delivery.engine.relays import Relay, no_relay, session_failure
from tasks.delivery.engine.settings import SMTPSettings as SMTPSettings
from tasks.delivery.engine.smtp_auth import authenticate, log_conversation
from tasks.delivery.engine.transaction import SessionClosing, Upcoming, commands_ahead, transaction
from tasks.vocabulary import Status

log = logging.getLogger(__name__)


class SessionGate(Protocol):
    """Bounds concurrent SMTP sessions (``MAIL_MAX_CONNECTIONS``) across processes."""

    def acquire(self) -> str:
        """Block until a session may open; return a handle for :meth:`release`."""

    def release(self, handle: str) -> None:
        """The session that *handle* stands for has closed."""

    def trusted(self, handle: str) -> bool:
        """Whether the slot *handle* is surely still held; if not, its session closes."""


TRANSPORT_ERRORS = (smtplib.SMTPServerDisconnected, socket.timeout, ConnectionError, OSError)


class BatchConnection(Connection):
    """One SMTP session at a time for a whole batch, honouring ``max_emails``.

    Use as a context manager; :meth:`send_data` returns one
    :class:`DeliveryOutcome` per recipient and never raises for a reply the
    server gives. When a session cannot be opened at all (refused, silent,
    TLS or AUTH failure), or a fresh session fails on its first message, the
    rest of the batch is deferred at once instead of waiting for the same
    failure once per message. A session lost after it has carried messages is
    replaced by a new one.

    With a *pool* (:class:`tasks.delivery.engine.pool.SessionPool`) the connection starts
    on a session a previous batch of this process left open, when one is kept,
    and leaves its session there at the end while it may carry more messages.
    Sessions are shared only between connections of the same *lane*.
    """

    def __init__(self, settings: SMTPSettings, gate: SessionGate | None = None,
                 pool: SessionPool | None = None, *, lane: str = "") -> None:
        super().__init__(settings)  # type: ignore[arg-type]  # same attribute names as Mail
        self.settings = settings
        self.gate = gate
        self.pool = pool
        self.lane = lane  # kept sessions are shared only within one lane (bulk, singles)
        self._gate_handle: str | None = None
        self._slot_gate: SlotHolder | None = None  # what the handle came from, if not gate
        self._unavailable: SessionError | None = None
        self._ahead: tuple[str, tuple[str, ...]] | None = None  # commands sent for this one
        self.sessions_opened = 0
        self.sessions_reused = 0  # kept sessions this connection carried messages on
        self._paced = False  # the next message's MAIL FROM slot is taken (wait_turn)
        self.relay: Relay | None = None  # where the current (or last) session was opened
        self._opened_at = 0.0  # monotonic time the current session was opened

    def __enter__(self) -> BatchConnection:
        self.host = None  # connect lazily, when the first message needs it
        self.num_emails = 0
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and self._keepable():
            self._keep()
        else:
            self.close()

    # -- sessions

    def configure_host(self, relay: Relay | None = None) -> smtplib.SMTP:
        """Open a session on *relay* (the first relay by default): connect, greet,
        STARTTLS, AUTH. Raises smtplib/ssl/OS errors."""
        s = self.settings
        relay = relay or s.relays[0]
        if self.gate is not None and self._gate_handle is None:
            self._gate_handle = self.gate.acquire()
        host: smtplib.SMTP
        try:
            if s.use_ssl:
                host = smtplib.SMTP_SSL(relay.host, relay.port, timeout=s.timeout,
                                        context=s.tls_context())
            else:
                host = smtplib.SMTP(relay.host, relay.port, timeout=s.timeout)
        except BaseException:
            self._release_gate()
            raise
        try:
            if s.debug:
                log_conversation(host, str(relay))
            if host.sock is not None:
                host.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if s.use_tls:
                host.starttls(context=s.tls_context())
            if s.username and s.password:
                authenticate(host, s.username, s.password, tls=s.use_tls or s.use_ssl)
            host.ehlo_or_helo_if_needed()
        except BaseException:
            host.close()
            self._release_gate()
            raise
        self.sessions_opened += 1
        return host

    def open_session(self) -> smtplib.SMTP:
        """The current session, opened if needed; :class:`SessionError` if it cannot be.

        The relays are tried in order (``MAIL_SERVER``, then ``MAIL_FALLBACK_SERVERS``),
        skipping those the relay state says are cooling down. A relay that cannot
        open a session (refused, silent, TLS, AUTH, a 4xx/5xx greeting) is reported
        to the relay state and the next one is tried. Nothing has been sent on a
        session that failed to open, so no message can reach two relays.
        """
        if self._unavailable is not None:
            raise self._unavailable
        if self.host is not None or self._take_kept():
            assert self.host is not None
            return self.host
        relays = self.settings.relays
        state = self.settings.relay_state
        skipped = state.cooling_down([str(r) for r in relays]) if state is not None else set()
        failures: list[SessionError] = []
        for relay in relays:
            if str(relay) in skipped:
                continue
            if self.gate is not None and self._gate_handle is None:
                try:  # a slot that does not come free is no fault of the relay
                    self._gate_handle = self.gate.acquire()
                except (TimeoutError, OSError) as err:
                    self._unavailable = SessionError(str(err))
                    raise self._unavailable from err
            try:
                self.host = self.configure_host(relay)
            except (smtplib.SMTPException, *TRANSPORT_ERRORS) as err:
                failure = session_failure(relay, err)
                failures.append(failure)
                if state is not None and isinstance(err, smtplib.SMTPAuthenticationError) \
                        and err.smtp_code in CREDENTIALS_REFUSED:
                    state.auth_refused(str(relay), str(failure))
                elif state is not None:
                    code = failure.smtp_code
                    state.failed(str(relay), f"{code} {failure}" if code else str(failure))
                if len(relays) > 1:
                    log.warning("SMTP relay %s failed: %s", relay, failure)
                continue
            self.relay, self._opened_at = relay, time.monotonic()
            if state is not None:
                state.opened(str(relay))
            return self.host
        self._unavailable = no_relay(failures, [r for r in relays if str(r) in skipped])
        log.warning("SMTP session not opened; deferring the rest of the batch: %s",
                    self._unavailable)
        raise self._unavailable

    def reserve(self) -> None:
        """Get ready for the next message before its recipients are claimed.

        Ends a session that has carried ``max_emails`` messages and waits for
        the session gate, so the time a claim is held covers SMTP work only.
        """
        if self.settings.suppress or self._unavailable is not None:
            return
        max_emails = self.settings.max_emails
        if self.host is not None and max_emails and self.num_emails >= max_emails:
            self.close()
        if self.host is None:
            self._take_kept()
        if self.host is None and self.gate is not None and self._gate_handle is None:
            try:
                self._gate_handle = self.gate.acquire()
            except (TimeoutError, OSError) as err:  # no session slot came free in time
                self._unavailable = SessionError(str(err))

    def between_sessions(self) -> bool:
        """Whether the next message starts a session anyway: none is open, or the open one
        has carried ``max_emails`` (always, without ``max_emails``), and the next message's
        commands were not sent ahead (stopping then would cut the session off). A batch
        that stops here leaves no session short of ``max_emails``."""
        if self._ahead is not None:
            return False
        max_emails = self.settings.max_emails
        return self.host is None or not max_emails or self.num_emails >= max_emails

    def ends_after_next(self) -> bool:
        """Whether the session may end after the next message: always without
        ``max_emails``, else when the next message is its ``max_emails``-th. A batch that
        stops after it leaves no session short of ``max_emails``."""
        max_emails = self.settings.max_emails
        if not max_emails:
            return True
        full = self.host is None or self.num_emails >= max_emails  # the next one opens one
        return (0 if full else self.num_emails) + 1 >= max_emails

    def _release_gate(self) -> None:
        handle, self._gate_handle = self._gate_handle, None
        gate, self._slot_gate = self._slot_gate or self.gate, None
        if gate is not None and handle is not None:
            gate.release(handle)

    # -- sessions kept between batches (pool)

    def _pool_key(self) -> tuple[object, ...]:
        """What makes two sessions interchangeable: where they go and how they were opened
        (debugging included: a code never goes out on a session whose dialogue is logged),
        and the lane: a bulk batch never carries on on a session whose slot was taken
        without the headroom kept for codes."""
        s = self.settings
        return (self.lane, s.relays, s.use_tls, s.use_ssl, s.username, s.password,
                s.tls_verify, s.tls_ca_file, s.timeout, s.debug)

    def _take_kept(self) -> bool:
        """Carry on on a session kept open by an earlier batch, if the pool has one."""
        if self.pool is None or self.settings.suppress or self._unavailable is not None:
            return False
        kept = self.pool.take(self._pool_key())
        if kept is None:
            return False
        if self._earlier_relay_back(kept.relay):  # a fallback's session: the relay before it
            kept.close()  # takes the mail again once its cooldown is over
            return False
        self._release_gate()  # a slot taken for a fresh session: the kept one has its own
        self.host, self.relay, self.num_emails = kept.host, kept.relay, kept.carried
        self._opened_at = kept.opened_at
        self._gate_handle = kept.handle
        self._slot_gate = kept.gate if kept.gate is not self.gate else None
        self.sessions_reused += 1
        return True

    def _earlier_relay_back(self, relay: Relay) -> bool:
        """Whether a relay tried before *relay* may be tried again (not cooling down)."""
        relays, state = self.settings.relays, self.settings.relay_state
        if relay == relays[0] or relay not in relays:
            return False
        earlier = [str(r) for r in relays[:relays.index(relay)]]
        skipped = state.cooling_down(earlier, take_turn=False) if state is not None else set()
        return any(name not in skipped for name in earlier)

    def _keepable(self) -> bool:
        """Whether the session may carry another message of another batch: open, no
        transaction under way, fewer than ``max_emails`` carried."""
        max_emails = self.settings.max_emails
        return (self.pool is not None and self.host is not None and self.relay is not None
                and self._ahead is None and self._unavailable is None
                and not (max_emails and self.num_emails >= max_emails))

    def _keep(self) -> None:
        assert self.pool is not None and self.host is not None and self.relay is not None
        gate: SlotHolder | None = self._slot_gate or self.gate
        kept = KeptSession(self.host, self.relay, self.num_emails,
                           gate if self._gate_handle is not None else None, self._gate_handle,
                           opened_at=self._opened_at)
        self.host, self._gate_handle, self._slot_gate, self.num_emails = None, None, None, 0
        self.pool.give(self._pool_key(), kept)

    def close(self) -> None:
        """End the current session politely if there is one."""
        if self._ahead is not None:  # a transaction is open on it: QUIT would be content
            self._drop()
            return
        host, self.host = self.host, None
        self.num_emails = 0
        try:
            if host is not None:
                host.quit()
        except (smtplib.SMTPException, OSError):
            host.close()  # type: ignore[union-attr]
        finally:
            self._release_gate()

    def _drop(self) -> None:
        self._ahead = None
        host, self.host = self.host, None
        self.num_emails = 0
        if host is not None:
            host.close()
        self._release_gate()

    # -- sending

    def send_data(self, sender: str, recipients: Sequence[str], data: bytes, *,
                  upcoming: Upcoming | None = None) -> dict[str, DeliveryOutcome]:
        """Send one message to *recipients*; classify each recipient's fate.

        *upcoming*: the message the caller will send next. Where the server
        pipelines and this session will carry it, its commands go out with this
        message's content, saving a round trip; a caller that then sends
        something else (or nothing) makes the session start afresh.
        """
        if self.settings.suppress:
            return {rcpt: DeliveryOutcome(Status.SUPPRESSED) for rcpt in recipients}
        envelope = (sender, tuple(recipients))
        if self._ahead is not None and self._ahead != envelope:
            self._drop()  # the commands sent ahead were for another message: start afresh
        slot_gate = self._slot_gate or self.gate
        if (self.host is not None and slot_gate is not None and self._gate_handle is not None
                and not slot_gate.trusted(self._gate_handle)):
            log.warning("SMTP session slot could not be renewed in time; closing the session")
            self._drop()  # before the slot can run out, so MAIL_MAX_CONNECTIONS holds
        self.reserve()
        try:
            host = self.open_session()
        except SessionError as err:
            return {rcpt: DeliveryOutcome.unreached(str(err), err.smtp_code)
                    for rcpt in recipients}
        sent_ahead, paced_already, self._paced = self._ahead is not None, self._paced, False
        if not (sent_ahead or paced_already):  # else its slot is taken already
            paced = self._pace(host)
            if paced is None:
                gone = self._unavailable or SessionError("no session after pacing")
                return {rcpt: DeliveryOutcome.unreached(str(gone), gone.smtp_code)
                        for rcpt in recipients}
            host = paced
        self.num_emails += 1
        max_emails = self.settings.max_emails
        relay = str(self.relay)
        pacer = self.settings.pacer
        ahead = upcoming if not (max_emails and self.num_emails >= max_emails) else None

        def then() -> bytes:  # called as this message's content goes out
            commands = commands_ahead(host, ahead) if ahead is not None else b""
            if commands and (pacer is None or pacer.reserve_now(relay)):
                return commands  # only when the next MAIL FROM's slot is free now
            return b""

        self._ahead = None
        try:
            done = transaction(host, sender, list(recipients), data, sent_ahead=sent_ahead,
                               then=then, pace=lambda: self._wait(relay))
        except SessionClosing as closing:
            self._session_refused(closing, first_on_session=self.num_emails == 1)
            return closing.outcomes
        except (ssl.SSLError, *TRANSPORT_ERRORS) as err:
            first_on_session = self.num_emails == 1
            self._drop()
            where = self.relay or f"{self.settings.server}:{self.settings.port}"
            reason = f"connection to {where} lost: {err!r}"
            log.warning("SMTP transport failure: %s", reason)
            if first_on_session:  # a fresh session failed at once: the next would too
                self._unavailable = SessionError(reason)
            return {rcpt: DeliveryOutcome.transport_failure(reason) for rcpt in recipients}
        if done.ahead and upcoming is not None:
            self._ahead = (upcoming.sender, upcoming.recipients)
        if pacer is not None:
            if done.throttle:
                pacer.throttled(relay)
            elif done.transactions:
                pacer.succeeded(relay, done.transactions)
        return done.outcomes

    # -- pacing and refusals

    def _wait(self, relay: str) -> None:
        """Wait for the next ``MAIL FROM`` slot on *relay* (no transaction is open)."""
        if self.settings.pacer is not None:
            wait = self.settings.pacer.reserve(relay)
            if wait > 0:
                time.sleep(wait)

    def wait_turn(self) -> None:
        """Wait for the next message's ``MAIL FROM`` slot now, before the caller checks
        that it may still send (``run_batch`` does, then calls :meth:`send_data`). A wait
        longer than ``idle_wait`` is spent with the session closed."""
        pacer = self.settings.pacer
        if pacer is None or self.settings.suppress or self._unavailable is not None \
                or self._ahead is not None or self._paced:
            return
        wait = pacer.reserve(str(self.relay or self.settings.relays[0]))
        self._paced = True
        if wait > self.settings.idle_wait and self.host is not None:
            self.close()
        if wait > 0:
            time.sleep(wait)

    def _pace(self, host: smtplib.SMTP) -> smtplib.SMTP | None:
        """Take this message's ``MAIL FROM`` slot; a long wait is spent with the session
        closed (a relay's idle timeout is short). The session to use, or ``None``."""
        pacer = self.settings.pacer
        if pacer is None:
            return host
        wait = pacer.reserve(str(self.relay))
        if wait <= 0:
            return host
        if wait > self.settings.idle_wait:
            self.close()
            time.sleep(wait)
            try:
                return self.open_session()
            except SessionError:
                return None
        time.sleep(wait)
        return host

    def _session_refused(self, closing: SessionClosing, first_on_session: bool) -> None:
        """A 421 or a relay-wide refusal ended the session: end it here too. After a
        relay-wide refusal (a 4xx to ``MAIL FROM``, a throttling 421), or a 421 on a fresh
        session, the rest of the batch is deferred at once, without using attempts."""
        relay = str(self.relay)
        if closing.relay_wide:
            self.close()
        else:
            self._drop()
        if closing.throttle and self.settings.pacer is not None:
            self.settings.pacer.throttled(relay)
        if closing.relay_wide or first_on_session:
            code = closing.reason[:3]
            self._unavailable = SessionError(f"{relay} refused mail: {closing.reason}",
                                             int(code) if code.isdigit() else None)
            log.warning("SMTP relay %s refused mail (%s); deferring the rest of the batch",
                        relay, closing.reason)

    def send(self, message: Any, envelope_from: str | tuple[str, str] | None = None) -> None:
        """Flask-Mail's ``Connection.send``: raise unless every recipient took it."""
        from flask_mail import sanitize_address, sanitize_addresses

        sender = sanitize_address(envelope_from or message.sender)
        recipients = list(sanitize_addresses(message.send_to))
        outcomes = self.send_data(sender, recipients, message.as_bytes())
        for rcpt, outcome in outcomes.items():
            if outcome.status == Status.DEFERRED:
                raise TemporaryDeliveryError(f"{rcpt}: {outcome.error}", outcome.smtp_code)
            if outcome.status == Status.FAILED:
                raise PermanentDeliveryError(f"{rcpt}: {outcome.error}", outcome.smtp_code)

