"""The app served over real HTTP for the client's tests, with a front that can fail.

:class:`Front` is WSGI middleware in front of the app: it records each request (method,
path, headers, the client's port) and, while ``failures`` holds entries, answers the
matching requests itself: ``"refuse"`` answers 503 without passing the request on,
``"lose"`` passes it to the app and then replaces the app's answer with a 502 (the answer
lost on the way back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    client_port: int


@dataclass
class Front:
    app: WSGIApp
    seen: list[Seen] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, how)
    retry_after: str | None = "0"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        with self.lock:
            self.seen.append(Seen(method, path, headers, int(environ["REMOTE_PORT"])))
            how = next((h for m, p, h in self.failures if (m, p) == (method, path)), None)
            if how is not None:
                self.failures.remove((method, path, how))
        if how is None:
            return self.app(environ, start_response)
        if how == "lose":
            body = b"".join(self.app(environ, lambda *args, **kwargs: None))
            assert body  # the app did answer; the caller never sees it
        status = "503 Service Unavailable" if how == "refuse" else "502 Bad Gateway"
        extra = [("Retry-After", self.retry_after)] if self.retry_after is not None else []
        start_response(status, [("Content-Type", "text/plain"), *extra])
        return [b"try again"]

    def requests_to(self, method: str, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if (s.method, s.path) == (method, path)]


@contextmanager
def serving(app: WSGIApp) -> Iterator[str]:
    """*app* on a free port in a thread (werkzeug's threaded server); yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="client-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
