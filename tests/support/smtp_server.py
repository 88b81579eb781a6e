"""A real SMTP server for tests (aiosmtpd on a free port) that records everything.

It can misbehave on purpose: ``rcpt_reply`` and ``data_reply`` return a reply
line (``"451 4.3.0 try later"``) or ``None`` for the normal answer, and
``data_reply`` may return :data:`DROP` to cut the connection mid-transaction;
``mail_reply`` answers ``MAIL FROM`` the same way (a relay's rate limit). With
``dsn`` it offers the DSN extension (RFC 3461) and records each command's
parameters in ``mail_params``/``rcpt_params``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from web.testing import free_port

DROP = "<drop the connection>"


class ReceivedMessage(EmailMessage):
    """A message as received: a test asks it only for bodies it expects to be there."""

    def get_body(self, preferencelist: Sequence[str] = ("related", "html", "plain")
                 ) -> MIMEPart:
        body = super().get_body(preferencelist)
        assert body is not None, f"no {'/'.join(preferencelist)} body"
        return body


@dataclass
class Received:
    """One message the server accepted."""

    sender: str
    recipients: list[str]
    data: bytes
    session: int
    received_at: float = field(default_factory=time.monotonic)

    @property
    def message(self) -> ReceivedMessage:
        parsed = email.message_from_bytes(self.data, ReceivedMessage, policy=email.policy.default)
        assert isinstance(parsed, ReceivedMessage)
        return parsed


class RecordingHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.connections = 0
        self.rcpt_reply: Callable[[str], str | None] = lambda address: None
        self.data_reply: Callable[[Envelope], str | None] = lambda envelope: None
        self.refused: list[tuple[str, str]] = []
        self.open_sessions = 0  # connections open now, and the most open at once
        self.peak_sessions = 0
        self.data_delay = 0.0  # seconds to take over each DATA (a slow relay), loop not blocked
        self.pipelining = False  # advertise PIPELINING (RFC 2920) in the EHLO reply
        self.mail_reply: Callable[[str], str | None] = lambda sender: None
        self.mail_times: list[float] = []  # when each MAIL FROM came (monotonic)
        self.dsn = False  # advertise DSN (RFC 3461) and accept its parameters
        self.mail_params: list[str] = []
        self.rcpt_params: list[str] = []
        self.quits = 0  # QUIT commands received
        self.live: dict[int, Any] = {}  # connection number -> its open transport

    def new_connection(self) -> int:
        with self.lock:
            self.connections += 1
            self.open_sessions += 1
            self.peak_sessions = max(self.peak_sessions, self.open_sessions)
            return self.connections

    def connection_closed(self, number: int = 0) -> None:
        with self.lock:
            self.open_sessions -= 1
            self.live.pop(number, None)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        with self.lock:
            self.mail_times.append(time.monotonic())
        reply = self.mail_reply(address)
        if reply is not None:
            with self.lock:
                self.refused.append((address, reply))
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.rcpt_reply(address)
        if reply is not None:
            with self.lock:
                self.refused.append((address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        reply = self.data_reply(envelope)
        if reply == DROP:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "421 dropped"
        if reply is not None:
            return reply
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        with self.lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          content, getattr(server, "connection_number", 0)))
        return "250 Message accepted"


_DSN_PARAM = re.compile(r"\s+(?:RET|ENVID|NOTIFY|ORCPT)=\S+", re.IGNORECASE)


class CountingSMTP(SMTP):
    """aiosmtpd's server, numbering each connection (one SMTP session each)."""

    def _dsn_params(self, arg: str | None, kept: list[str]) -> str | None:
        handler = self.event_handler
        assert isinstance(handler, RecordingHandler)
        if not handler.dsn or arg is None:
            return arg
        with handler.lock:
            kept.append(" ".join(m.strip() for m in _DSN_PARAM.findall(arg)))
        return _DSN_PARAM.sub("", arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        handler = self.event_handler
        assert isinstance(handler, RecordingHandler)
        await super().smtp_MAIL(self._dsn_params(arg, handler.mail_params))

    async def smtp_RCPT(self, arg: str | None) -> None:
        handler = self.event_handler
        assert isinstance(handler, RecordingHandler)
        await super().smtp_RCPT(self._dsn_params(arg, handler.rcpt_params))

    def connection_made(self, transport: Any) -> None:
        handler = self.event_handler
        assert isinstance(handler, RecordingHandler)
        if not hasattr(self, "connection_number"):  # STARTTLS calls this again
            self.connection_number = handler.new_connection()
        super().connection_made(transport)
        with handler.lock:
            handler.live[self.connection_number] = transport

    def connection_lost(self, error: Exception | None) -> None:
        if hasattr(self, "connection_number") and not getattr(self, "session_closed", False):
            self.session_closed = True  # counted once, even after STARTTLS
            handler = self.event_handler
            assert isinstance(handler, RecordingHandler)
            handler.connection_closed(self.connection_number)
        super().connection_lost(error)


class CountingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


class SMTPTestServer:
    """Start with :meth:`start`, stop with :meth:`stop`; inspect ``received``."""

    def __init__(self, **controller_options: Any) -> None:
        self.handler = RecordingHandler()
        self.port = free_port()
        self.options = controller_options
        self.controller = self._controller()

    def _controller(self) -> CountingController:
        return CountingController(self.handler, hostname="127.0.0.1", port=self.port,
                                  **self.options)

    def start(self) -> SMTPTestServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def restart(self) -> None:
        """Listen again on the same port after :meth:`stop` (a relay back from an outage)."""
        self.controller = self._controller()
        self.controller.start()

    def reset(self) -> None:
        handler = self.handler
        with handler.lock:
            handler.received.clear()
            handler.connections = 0
            handler.refused.clear()
            handler.peak_sessions = handler.open_sessions
            handler.mail_times.clear()
            handler.mail_params.clear()
            handler.rcpt_params.clear()
            handler.quits = 0
        handler.data_delay = 0.0
        handler.dsn = False
        handler.mail_reply = lambda sender: None
        handler.pipelining = False
        handler.rcpt_reply = lambda address: None
        handler.data_reply = lambda envelope: None

    def drop_connections(self) -> int:
        """Close every open connection from the server's side, as a relay that ends idle
        sessions does; returns how many were open."""
        with self.handler.lock:
            transports = list(self.handler.live.values())
        for transport in transports:
            self.controller.loop.call_soon_threadsafe(transport.close)
        return len(transports)

    def close_leftover_sessions(self, timeout: float = 5.0) -> None:
        """Close the sessions an earlier test's pool kept open, and wait until they are
        gone, so the session counts a test reads are its own."""
        self.drop_connections()
        deadline = time.monotonic() + timeout
        while self.open_sessions and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def open_sessions(self) -> int:
        """Connections open now."""
        with self.handler.lock:
            return self.handler.open_sessions

    @property
    def quits(self) -> int:
        """``QUIT`` commands received since the last :meth:`reset`."""
        with self.handler.lock:
            return self.handler.quits

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    @property
    def session_count(self) -> int:
        with self.handler.lock:
            return self.handler.connections

    @property
    def peak_sessions(self) -> int:
        """The most sessions open at once since the last :meth:`reset`."""
        with self.handler.lock:
            return self.handler.peak_sessions

    def to(self, address: str) -> list[Received]:
        """Messages whose envelope includes *address*."""
        return [r for r in self.received if address in r.recipients]
