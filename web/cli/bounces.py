"""``postroom bounces``: the inbound SMTP listener for the return path (``MAIL_RETURN_PATH``).

It accepts mail only for the return-path address and its VERP forms
(``bounces+<token>@…``), refusing every other recipient with 550 5.1.1, and hands each
message to the bounce desk (:mod:`tasks.bounces`): a DSN or a complaint marks its recipient
``bounced`` and suppresses the address; mail that matches nothing is kept a week and counted
(``postroom:bounces:unmatched-count``). Every report is answered 250: a bounce is never
bounced back (mail the email package cannot read included), except 451 when the report
cannot be recorded now (Redis unreachable, or too many reports already waiting).

Over this unauthenticated door only a signed VERP token in the RCPT address changes
anyone's mail (:meth:`tasks.bounces.BounceDesk.take`). What a client can hold is bounded
(:class:`ListenerLimits`): connections per client address and in all, a message's size
(``BOUNCE_MAX_BYTES``, advertised with the SIZE extension; 552 past it), the whole DATA
phase (``BOUNCE_DATA_TIMEOUT``; aiosmtpd's own ``timeout`` is an idle timer it resets on
each command, never during DATA) and the idle time between commands. Reports are parsed and
applied on a small thread pool with a bounded queue, never on the event loop, so a large
report does not hold up another client's banner.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import click
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis import Redis
from redis.exceptions import RedisError

from tasks.bounces import BounceDesk
from tasks.engine.reports import MalformedReport
from tasks.engine.verp import is_return_path_address
from tasks.stores import key

log = logging.getLogger(__name__)

UNMATCHED_COUNT = key("bounces", "unmatched-count")
# Commands per session (aiosmtpd's command_call_limit; 421 and closed past one): a client
# cannot hold a slot for ever with NOOPs, each of which resets the idle timer.
COMMANDS_PER_SESSION = {"NOOP": 20, "HELO": 5, "EHLO": 5, "VRFY": 5, "EXPN": 5, "HELP": 5,
                        "*": 1000}


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What the listener lets clients hold (the ``BOUNCE_*`` settings)."""

    max_bytes: int = 1024 * 1024
    max_connections: int = 100
    max_connections_per_client: int = 10
    data_timeout: float = 60.0
    idle_timeout: float = 60.0
    workers: int = 2
    queue: int = 32  # reports waiting for or in a worker; past it, 451

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ListenerLimits:
        defaults = cls()
        return cls(**{f.name: config.get(f"BOUNCE_{f.name.upper()}", getattr(defaults, f.name))
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


class BounceSMTP(SMTP):
    """aiosmtpd's server with the listener's bounds on connections and on DATA."""

    def __init__(self, handler: BounceHandler, gate: ConnectionGate, limits: ListenerLimits,
                 **kwargs: Any) -> None:
        super().__init__(handler, data_size_limit=limits.max_bytes,
                         timeout=limits.idle_timeout,
                         command_call_limit=dict(COMMANDS_PER_SESSION), **kwargs)
        self.gate = gate
        self.limits = limits
        self.client: str | None = None  # the address counted against the gate

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
            log.warning("bounce listener: refused a connection from %s (too many)",
                        self.session.peer if self.session else "unknown")
            await self.push("421 4.7.0 too many connections; try again later")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

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
            log.warning("bounce listener: DATA from %s took over %.0f s; closed",
                        self.session.peer if self.session else "unknown",
                        self.limits.data_timeout)
            if self.transport is not None:
                self.transport.close()


class BounceHandler:
    """aiosmtpd handler: the return path's mail to the bounce desk, off the event loop."""

    def __init__(self, desk: BounceDesk, return_path: str,
                 limits: ListenerLimits | None = None) -> None:
        self.desk = desk
        self.return_path = return_path
        self.limits = limits or ListenerLimits()
        self.executor = ThreadPoolExecutor(max_workers=self.limits.workers,
                                           thread_name_prefix="bounce-report")
        self.waiting = 0  # reports in or waiting for the executor (event loop only)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not is_return_path_address(address, self.return_path):
            return "550 5.1.1 only bounces for this service's return path are accepted here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        if self.waiting >= self.limits.queue:
            log.warning("bounce listener: %d reports waiting; asked the sender to retry",
                        self.waiting)
            return "451 4.3.2 too many reports waiting; try again later"
        self.waiting += 1
        try:
            matched = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.take, raw, list(envelope.rcpt_tos))
        except RedisError as err:
            log.warning("bounce listener: cannot record a report now: %s", err)
            return "451 4.3.0 the report cannot be recorded now; try again later"
        finally:
            self.waiting -= 1
        log.info("bounce listener: a report matched %d recipient(s)", matched)
        return "250 2.0.0 report taken"

    def take(self, raw: bytes, rcpt_tos: list[str]) -> int:
        """On a worker thread: apply the report; how many recipients it matched."""
        try:
            matched = len(self.desk.take(raw, rcpt_tos))
        except MalformedReport as err:
            log.info("bounce listener: %s; kept a summary", err)
            matched = 0
        if not matched:
            self.desk.redis.incr(UNMATCHED_COUNT)
        return matched

    async def handle_exception(self, error: Exception) -> str:
        """What aiosmtpd answers when a command fails: never a 500 with the error's text."""
        log.error("bounce listener: a command failed: %s", type(error).__name__)
        return "451 4.3.0 local error; try again later"

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class BounceController(Controller):
    """aiosmtpd's controller making :class:`BounceSMTP` servers that share one gate."""

    def __init__(self, handler: BounceHandler, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.gate = ConnectionGate(limits)

    def factory(self) -> SMTP:
        return BounceSMTP(self.handler, self.gate, self.limits, **self.SMTP_kwargs)


class BounceListener:
    """The listener on *host*:*port*, serving from a thread (:meth:`start`, :meth:`stop`)."""

    def __init__(self, desk: BounceDesk, return_path: str, *, host: str, port: int,
                 limits: ListenerLimits | None = None) -> None:
        limits = limits or ListenerLimits()
        self.handler = BounceHandler(desk, return_path, limits)
        self.controller = BounceController(self.handler, limits, hostname=host, port=port)

    def start(self) -> BounceListener:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=2525, show_default=True,
              help="SMTP port for bounces and complaints.")
def bounces(host: str, port: int) -> None:
    """Receive bounces and complaints sent to MAIL_RETURN_PATH (and its VERP forms)."""
    from web import create_app
    from web.config import ConfigError

    try:
        app = create_app()
    except ConfigError as err:
        raise click.ClickException(f"configuration error: {err}") from None
    return_path = app.config.get("MAIL_RETURN_PATH")
    if not return_path:
        raise click.ClickException("MAIL_RETURN_PATH is not set: there is no return path "
                                   "to receive bounces for")
    redis: Redis = app.extensions["redis"]
    desk = BounceDesk(redis, return_path=return_path, secret_key=app.config["SECRET_KEY"])
    try:
        listener = BounceListener(desk, return_path, host=host, port=port,
                                  limits=ListenerLimits.from_config(app.config)).start()
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port}: {err}") from None
    click.echo(f"postroom bounces: taking mail for {return_path} on smtp://{host}:{port}")
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    stopping.wait()
    listener.stop()
