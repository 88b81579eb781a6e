"""A real HTTP receiver for webhook tests: records every request, answers as told."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
    """``answers`` are used in turn (then ``default``); each is a status code."""

    def __init__(self, port: int = 0) -> None:
        self.calls: list[Call] = []
        self.answers: list[int] = []
        self.default = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.calls.append(Call(self.path, dict(self.headers.items()), body))
                    status = receiver.answers.pop(0) if receiver.answers else receiver.default
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", f"{receiver.url}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            calls = list(self.calls)
        return [call.event for call in calls
                if event_type is None or call.event["type"] == event_type]


@contextmanager
def receiving(port: int = 0) -> Iterator[Receiver]:
    """A receiver on *port* (any free one by default), until the block ends."""
    receiver = Receiver(port)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)
