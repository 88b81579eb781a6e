"""What Postroom's inbound SMTP listeners share: bounds on what a client may hold.

Both listeners (``postroom bounces`` and ``postroom submission``) run aiosmtpd behind the
same bounds (:class:`ListenerLimits`, from ``BOUNCE_*`` or ``SUBMISSION_*`` settings):
connections per client address and in all (:class:`ConnectionGate`; 421 past them), a
message's size (advertised with the SIZE extension; 552 past it), the whole DATA phase
(aiosmtpd's own ``timeout`` is an idle timer it resets on each command, never during
DATA), the idle time between commands, and the number of each command per session.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)

# Commands per session (aiosmtpd's command_call_limit; 421 and closed past one): a client
# cannot hold a slot for ever with NOOPs, each of which resets the idle timer.
COMMANDS_PER_SESSION = {"NOOP": 20, "HELO": 5, "EHLO": 5, "VRFY": 5, "EXPN": 5, "HELP": 5,
                        "AUTH": 10, "STARTTLS": 2, "*": 1000}


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What a listener lets clients hold (the ``BOUNCE_*`` or ``SUBMISSION_*`` settings)."""

    max_bytes: int = 1024 * 1024
    max_connections: int = 100
    max_connections_per_client: int = 10
    data_timeout: float = 60.0
    idle_timeout: float = 60.0
    workers: int = 2
    queue: int = 32  # messages waiting for or in a worker; past it, 451

    @classmethod
    def from_config(cls, config: Mapping[str, Any], prefix: str = "BOUNCE",
                    **given: Any) -> ListenerLimits:
        """The limits named ``<prefix>_<FIELD>`` in *config*; *given* ones win."""
        defaults = cls()
        return cls(**{f.name: given.get(f.name, config.get(f"{prefix}_{f.name.upper()}",
                                                           getattr(defaults, f.name)))
                      for f in fields(cls)})


class ConnectionGate:
    """Counts open connections, in all and per client address (used on the event loop)."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self.by_client: Counter[str] = Counter()
        self.total = 0

    def admit(self, client: str) -> bool:
        if (self.total >= self.limits.max_connections
                or self.by_client[client] >= self.limits.max_connections_per_client):
            return False
        self.total += 1
        self.by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


class BoundedSMTP(SMTP):
    """aiosmtpd's server with a listener's bounds on connections and on DATA."""

    name = "SMTP listener"  # how its log lines start

    def __init__(self, handler: Any, gate: ConnectionGate, limits: ListenerLimits,
                 **kwargs: Any) -> None:
        super().__init__(handler, data_size_limit=limits.max_bytes,
                         timeout=limits.idle_timeout,
                         command_call_limit=dict(COMMANDS_PER_SESSION), **kwargs)
        self.gate = gate
        self.limits = limits
        self.client: str | None = None  # the address counted against the gate

    @property
    def peer_address(self) -> str:
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)  # schedules _handle_client: it runs after this
        if first:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if peer else "unknown"
            if self.gate.admit(client):
                self.client = client

    async def _handle_client(self) -> None:
        if self.client is None:
            log.warning("%s: refused a connection from %s (too many)", self.name,
                        self.peer_address)
            await self.push("421 4.7.0 too many connections; try again later")
            self.close_connection()
            return
        await super()._handle_client()

    def close_connection(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self.client is not None:
            self.gate.release(self.client)
            self.client = None
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA with a deadline on the whole phase, however slowly its lines arrive."""
        try:
            await asyncio.wait_for(super().smtp_DATA(arg), self.limits.data_timeout)
        except TimeoutError:
            log.warning("%s: DATA from %s took over %.0f s; closed", self.name,
                        self.peer_address, self.limits.data_timeout)
            self.close_connection()


class GatedController(Controller):
    """aiosmtpd's controller making *server_class* servers that share one gate."""

    def __init__(self, handler: Any, limits: ListenerLimits,
                 server_class: type[BoundedSMTP] = BoundedSMTP, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.gate = ConnectionGate(limits)
        self.server_class = server_class

    def factory(self) -> SMTP:
        return self.server_class(self.handler, self.gate, self.limits, **self.SMTP_kwargs)


class Stoppable(Protocol):
    def stop(self) -> None: ...


def serve_until_signalled(listener: Stoppable) -> None:
    """Block until SIGINT or SIGTERM, then stop *listener* (a listener command's main loop)."""
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    stopping.wait()
    listener.stop()
