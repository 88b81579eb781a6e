"""Real parts for outage tests: a Redis server a test may stop and start again,
and a relay that never opens a session (counting each connection it is offered)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from web.testing import EmbeddedRedis, free_port


def stoppable_redis(workdir: Path) -> EmbeddedRedis:
    """A redis-server of a test's own (never the session's), with AOF on, so data
    written before ``stop()`` is there again after ``start()`` on the same port."""
    return EmbeddedRedis(workdir, appendonly=True).start()


class DeadRelay:
    """A TCP listener standing for a relay that cannot open a session.

    *greeting* is what it says before hanging up: ``None`` for nothing at all (a
    relay that accepts and drops the connection), or a line such as
    ``"421 4.3.2 Service not available"``. :attr:`accepts` counts connections.
    """

    def __init__(self, greeting: str | None = None) -> None:
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a relay may follow
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepts = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="dead-relay", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.accepts += 1
            with conn:
                if self.greeting is not None:
                    try:
                        conn.sendall(self.greeting.encode() + b"\r\n")
                        conn.recv(1024)  # smtplib says QUIT or just closes
                    except OSError:
                        pass

    @property
    def accepted(self) -> int:
        with self._lock:
            return self.accepts

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    return free_port()
