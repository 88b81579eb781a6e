"""``postroom bounces``: the inbound SMTP listener for the return path (``MAIL_RETURN_PATH``).

It accepts mail only for the return-path address and its VERP forms
(``bounces+<token>@…``), refusing every other recipient with 550 5.1.1, and hands each
message to the bounce desk (:mod:`tasks.bounces.service`): a DSN or a complaint marks its recipient
``bounced`` and suppresses the address; mail that matches nothing is kept a week and counted
(``postroom:bounces:unmatched-count``). Every report is answered 250: a bounce is never
bounced back (mail the email package cannot read included), except 451 when the report
cannot be recorded now (Redis unreachable, or too many reports already waiting).

Over this unauthenticated door only a signed VERP token in the RCPT address changes
anyone's mail (:meth:`tasks.bounces.service.BounceDesk.take`). What a client can hold is bounded
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
from concurrent.futures import ThreadPoolExecutor

import click
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis import Redis
from redis.exceptions import RedisError

from cli.smtp_listener import (
    BoundedSMTP,
    GatedController,
    ListenerLimits,
    serve_until_signalled,
)
from tasks.bounces.reports import MalformedReport
from tasks.bounces.service import BounceDesk
from tasks.delivery.engine.verp import is_return_path_address
from tasks.shared.keys import key

__all__ = ["BounceHandler", "BounceListener", "BounceSMTP", "ListenerLimits", "bounces"]

log = logging.getLogger(__name__)

UNMATCHED_COUNT = key("bounces", "unmatched-count")


class BounceSMTP(BoundedSMTP):
    """aiosmtpd's server with the listener's bounds on connections and on DATA."""

    name = "bounce listener"


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


class BounceListener:
    """The listener on *host*:*port*, serving from a thread (:meth:`start`, :meth:`stop`)."""

    def __init__(self, desk: BounceDesk, return_path: str, *, host: str, port: int,
                 limits: ListenerLimits | None = None) -> None:
        limits = limits or ListenerLimits()
        self.handler = BounceHandler(desk, return_path, limits)
        self.controller = GatedController(self.handler, limits, BounceSMTP, hostname=host,
                                          port=port)

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
    serve_until_signalled(listener)
