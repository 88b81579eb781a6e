"""A real HTTP(S) receiver for webhook tests: records every request, answers as told,
at once or one byte at a time (``trickle``), over TLS when given a certificate."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TRICKLE_FOR = 60.0  # a trickling answer stops after this long in any case


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def signed_with(self, secret: str) -> bool:
        """Whether Postroom-Signature verifies, as a receiver would check it."""
        fields = dict(part.split("=", 1) for part in
                      self.headers["Postroom-Signature"].split(","))
        expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + self.body,
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["v1"])


class Receiver:
    """``answers`` are used in turn (then ``default``); each is a status code. With
    ``trickle`` set, the answer goes out one byte every ``trickle`` seconds."""

    def __init__(self, port: int = 0, tls: tuple[Path, Path] | None = None) -> None:
        self.calls: list[Call] = []
        self.answers: list[int] = []
        self.default = 200
        self.trickle: float | None = None
        self.trickling = 0  # answers being trickled right now
        self.trickled = 0  # bytes trickled in all
        self.server_names: list[str | None] = []  # the TLS server name (SNI) of each handshake
        self.closing = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.calls.append(Call(self.path, dict(self.headers.items()), body))
                    status = receiver.answers.pop(0) if receiver.answers else receiver.default
                if receiver.trickle is not None:
                    receiver.trickle_answer(self, status)
                    return
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", f"{receiver.url}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = self._record_server_name
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"

    def _record_server_name(self, sock: Any, name: str | None, context: Any) -> None:
        with self.lock:
            self.server_names.append(name)

    def trickle_answer(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        """Write the answer a byte at a time until it is out, the caller hangs up, or the
        receiver closes."""
        answer = f"HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n".encode()
        assert self.trickle is not None
        with self.lock:
            self.trickling += 1
        stop_at = time.monotonic() + TRICKLE_FOR
        try:
            for byte in answer:
                if self.closing.wait(self.trickle) or time.monotonic() > stop_at:
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                with self.lock:
                    self.trickled += 1
        except OSError:
            return  # the caller hung up
        finally:
            with self.lock:
                self.trickling -= 1
            handler.close_connection = True

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            calls = list(self.calls)
        return [call.event for call in calls
                if event_type is None or call.event["type"] == event_type]


@contextmanager
def receiving(port: int = 0, tls: tuple[Path, Path] | None = None) -> Iterator[Receiver]:
    """A receiver on *port* (any free one by default), until the block ends."""
    receiver = Receiver(port, tls)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closing.set()
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)
