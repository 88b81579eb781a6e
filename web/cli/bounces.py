"""``postroom bounces``: the inbound SMTP listener for the return path (``MAIL_RETURN_PATH``).

It accepts mail only for the return-path address and its VERP forms
(``bounces+<token>@…``), refusing every other recipient with 550 5.1.1, and hands each
message to the bounce desk (:mod:`tasks.bounces`): a DSN or a complaint marks its recipient
``bounced`` and suppresses the address; mail that matches nothing is kept a week and counted
(``postroom:bounces:unmatched-count``). Every report is answered 250: a bounce is never
bounced back.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis import Redis

from tasks.bounces import BounceDesk
from tasks.engine.verp import is_return_path_address
from tasks.stores import key

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 10 * 1024 * 1024
UNMATCHED_COUNT = key("bounces", "unmatched-count")


class BounceHandler:
    """aiosmtpd handler: the return path's mail to the bounce desk."""

    def __init__(self, desk: BounceDesk, return_path: str) -> None:
        self.desk = desk
        self.return_path = return_path

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not is_return_path_address(address, self.return_path):
            return "550 5.1.1 only bounces for this service's return path are accepted here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        matched = self.desk.take(raw, list(envelope.rcpt_tos))
        if not matched:
            self.desk.redis.incr(UNMATCHED_COUNT)
        log.info("bounce listener: a report matched %d recipient(s)", len(matched))
        return "250 2.0.0 report taken"


class BounceListener:
    """The listener on *host*:*port*, serving from a thread (:meth:`start`, :meth:`stop`)."""

    def __init__(self, desk: BounceDesk, return_path: str, *, host: str, port: int) -> None:
        self.controller = Controller(BounceHandler(desk, return_path), hostname=host,
                                     port=port, data_size_limit=MAX_REPORT_BYTES)

    def start(self) -> BounceListener:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


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
        listener = BounceListener(desk, return_path, host=host, port=port).start()
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
