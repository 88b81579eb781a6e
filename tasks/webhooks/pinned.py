"""One HTTP call to an address that was checked, under one deadline for the whole answer.

- :class:`PinnedAdapter` is a requests transport adapter that connects to the address
  the URL check accepted instead of resolving the host name again (a name that answers
  a public address when checked and 127.0.0.1 when called cannot reach 127.0.0.1). The
  host name still goes out as the ``Host`` header and, for https, as the TLS server name
  (SNI), and the certificate is verified for the host name (urllib3's ``server_hostname``
  and ``assert_hostname`` pool settings).
- :class:`Deadline` bounds connect, TLS handshake, sending and every read together:
  socket timeouts bound each read only, so a receiver trickling a byte every few
  seconds would hold the call for ever. When the time is up it shuts the connection's
  socket down, which ends whatever read or write is blocked on it.
"""

from __future__ import annotations

import socket
import threading
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current: ContextVar[Deadline | None] = ContextVar("postroom_call_deadline", default=None)


class Deadline:
    """``with Deadline(10):`` every connection opened inside is shut down after 10 s."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._guarded: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: Token[Deadline | None] | None = None

    def left(self) -> float:
        """Seconds until the deadline (never below a millisecond, for socket timeouts)."""
        return max(0.001, self.ends_at - time.monotonic())

    def guard(self, sock: socket.socket) -> None:
        """Shut *sock* down at the deadline. A duplicate of its descriptor is kept (the
        TLS layer takes the original over) and closed when the block ends, so the
        descriptor shut down is always this connection's."""
        guarded = sock.dup()
        with self._lock:
            if not self.expired:
                self._guarded.append(guarded)
                return
        _shut(guarded)
        guarded.close()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            guarded = list(self._guarded)
        for sock in guarded:
            _shut(sock)

    def __enter__(self) -> Deadline:
        self._token = _current.set(self)
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._timer.cancel()
        if self._token is not None:
            _current.reset(self._token)
        with self._lock:
            if time.monotonic() >= self.ends_at:
                self.expired = True
            guarded, self._guarded = self._guarded, []
        for sock in guarded:
            sock.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer or by the call itself


def _guarded(sock: socket.socket) -> socket.socket:
    deadline = _current.get()
    if deadline is not None:
        deadline.guard(sock)
    return sock


class PinnedHTTPConnection(HTTPConnection):
    """A connection whose socket the call's :class:`Deadline` guards from the moment
    it connects (``_new_conn``, urllib3's hook for making the socket, in 1.x and 2.x)."""

    def _new_conn(self) -> socket.socket:
        return _guarded(super()._new_conn())


class PinnedHTTPSConnection(HTTPSConnection):
    """The same for https."""

    def _new_conn(self) -> socket.socket:
        return _guarded(super()._new_conn())  # before the TLS handshake: it is bounded too


class PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class PinnedAdapter(HTTPAdapter):
    """Sends every request to *address* (an IP), whatever the URL's host resolves to."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": PinnedHTTPConnectionPool,
                                                   "https": PinnedHTTPSConnectionPool}

    def build_connection_pool_key_attributes(
            self, request: PreparedRequest, verify: bool | str,
            cert: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        name = host_params["host"]
        host_params["host"] = self.address
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = name  # SNI
            pool_kwargs["assert_hostname"] = name  # the certificate must be the name's
        return host_params, pool_kwargs

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        request.headers["Host"] = urlsplit(request.url or "").netloc
        return super().send(request, *args, **kwargs)
