"""An SMTP sink whose every reply comes late: a relay across a network, on loopback.

Run: ``.venv/bin/python -m bench.delay_sink --latency 0.02 --log accepted.tsv``
(``--port 0``, the default, takes a free port; the server prints
``delay-sink listening on 127.0.0.1:<port>`` once it accepts connections).

It advertises PIPELINING, 8BITMIME and SIZE, accepts every sender, recipient
and message, and holds back every reply — the greeting included — by
``--latency`` seconds. Whatever arrives in one read is answered together after
one wait: ``MAIL FROM``, ``RCPT TO`` and ``DATA`` pipelined in one packet cost
one round trip, as they would across a network. A message's content is answered
with one delayed ``250`` after its end-of-data line. One event loop serves every
session, so hundreds of sessions cost little; run it in its own process so it
never shares a GIL with what it measures.

Each accepted message becomes one line of ``--log`` (tab-separated), written
when its ``250`` is sent: the time on ``CLOCK_MONOTONIC`` (``time.monotonic()``,
the same clock in every process on a Linux machine), how long after its due
time the reply went out (the sink's own lag, which should stay near zero), how
many sessions were connected then, the session number, the recipients
(comma-separated), the content's size in bytes, the ``Message-ID`` and the
``Subject``. The file is flushed every 50 ms and on SIGTERM.
:class:`AcceptedLog` reads it back.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from email.header import decode_header, make_header
from pathlib import Path
from typing import IO

END_OF_DATA = b"\r\n.\r\n"
MAX_SIZE = 50 * 1024 * 1024
FLUSH_EVERY = 0.05


@dataclass(frozen=True)
class Accepted:
    """One message the sink accepted: when its ``250`` went out, and for whom."""

    at: float
    session: int
    recipients: tuple[str, ...]
    size: int
    message_id: str
    subject: str
    late: float = 0.0  # how long after its due time the 250 went out (the sink's own lag)
    open_sessions: int = 0  # sessions connected when the 250 went out

    @classmethod
    def from_line(cls, line: str) -> Accepted:
        at, late, open_sessions, session, recipients, size, message_id, subject = (
            line.rstrip("\n").split("\t"))
        return cls(float(at), int(session), tuple(recipients.split(",")), int(size),
                   message_id, subject, float(late), int(open_sessions))

    def line(self) -> str:
        fields = (f"{self.at:.6f}", f"{self.late:.6f}", str(self.open_sessions),
                  str(self.session), ",".join(self.recipients), str(self.size),
                  self.message_id, self.subject)
        return "\t".join(" ".join(f.split()) for f in fields) + "\n"


def headers_of(content: bytes) -> tuple[str, str]:
    """The ``Message-ID`` and (decoded) ``Subject`` of a message's content."""
    head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    found = {"message-id": "", "subject": ""}
    name = ""
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            if name in found:
                found[name] += line
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in found:
            found[name] = value.strip()
    message_id, subject = found["message-id"].strip(), found["subject"].strip()
    if "=?" in subject:
        try:
            subject = str(make_header(decode_header(subject)))
        except (ValueError, LookupError):
            pass
    return message_id, subject


# when it is due, the bytes, the envelopes and contents it accepts, whether to close after it
Reply = tuple[float, bytes, list[tuple[str, ...]], list[bytes], bool]


class Sink:
    """What every session shares: the latency, the session counter and the log."""

    def __init__(self, latency: float, log: IO[str]) -> None:
        self.latency = latency
        self.log = log
        self.sessions = 0  # every session so far: each one's number
        self.open_sessions = 0

    def record(self, message: Accepted) -> None:
        self.log.write(message.line())


class DelayedSession(asyncio.Protocol):
    """One SMTP session; every read's replies go out together, ``latency`` later."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.number = 0
        self.buffer = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.recipients: list[str] = []
        self.pending: deque[Reply] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sink.sessions += 1
        self.sink.open_sessions += 1
        self.number = self.sink.sessions
        self.answer([b"220 delay-sink ESMTP"], [], [], close=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.open_sessions -= 1
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        replies: list[bytes] = []
        envelopes: list[tuple[str, ...]] = []
        contents: list[bytes] = []
        close = False
        while not close:
            if self.in_data:
                content = self._take_content()
                if content is None:
                    break
                envelopes.append(tuple(self.recipients))
                contents.append(content)
                self.recipients = []
                replies.append(b"250 2.0.0 Ok: queued")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end]).decode("utf-8", "replace")
            del self.buffer[:end + 2]
            reply, close = self.command(line)
            replies.append(reply)
        if replies:
            self.answer(replies, envelopes, contents, close)

    def _take_content(self) -> bytes | None:
        if self.buffer.startswith(b".\r\n"):  # an empty message
            del self.buffer[:3]
            self.in_data = False
            return b""
        end = self.buffer.find(END_OF_DATA, self.scan_from)
        if end < 0:
            self.scan_from = max(0, len(self.buffer) - len(END_OF_DATA))
            return None
        content = bytes(self.buffer[:end + 2])
        del self.buffer[:end + len(END_OF_DATA)]
        self.in_data = False
        self.scan_from = 0
        return content

    def command(self, line: str) -> tuple[bytes, bool]:
        """The reply to one command line, and whether to close after it."""
        verb = line[:4].upper()
        if verb == "EHLO":
            return (b"250-delay-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                    b"250 SIZE %d" % MAX_SIZE), False
        if verb == "HELO":
            return b"250 delay-sink", False
        if verb == "MAIL":
            self.recipients = []
            return b"250 2.1.0 Ok", False
        if verb == "RCPT":
            address = line.partition(":")[2].strip()
            self.recipients.append(address.split(">", 1)[0].lstrip("<").strip())
            return b"250 2.1.5 Ok", False
        if verb == "DATA":
            if not self.recipients:
                return b"503 5.5.1 Error: need RCPT command", False
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>", False
        if verb == "RSET":
            self.recipients = []
            return b"250 2.0.0 Ok", False
        if verb == "NOOP":
            return b"250 2.0.0 Ok", False
        if verb == "VRFY":
            return b"252 2.0.0 Cannot VRFY", False
        if verb == "QUIT":
            self.closing = True
            return b"221 2.0.0 Bye", True
        return b"502 5.5.2 Error: command not recognized", False

    def answer(self, replies: list[bytes], envelopes: list[tuple[str, ...]],
               contents: list[bytes], close: bool) -> None:
        """Send *replies* (and log the messages they accept) one latency from now."""
        payload = b"".join(reply + b"\r\n" for reply in replies)
        due = self.loop.time() + self.sink.latency
        self.pending.append((due, payload, envelopes, contents, close))
        if self.timer is None:
            if self.sink.latency <= 0:
                self._flush_due()
            else:
                self.timer = self.loop.call_at(due, self._flush_due)

    def _flush_due(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now:
            due, payload, envelopes, contents, close = self.pending.popleft()
            if self.transport is None:
                self.pending.clear()
                return
            self.transport.write(payload)
            at = time.monotonic()
            for recipients, content in zip(envelopes, contents, strict=True):
                message_id, subject = headers_of(content)
                self.sink.record(Accepted(at, self.number, recipients, len(content),
                                          message_id, subject, max(0.0, at - due),
                                          self.sink.open_sessions))
            if close:
                self.transport.close()
                self.pending.clear()
                return
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush_due)


async def serve(host: str, port: int, latency: float, log_path: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with log_path.open("a", encoding="utf-8", buffering=1 << 16) as log:
        sink = Sink(latency, log)
        server = await loop.create_server(lambda: DelayedSession(sink), host, port,
                                          backlog=1024, reuse_address=True)
        bound = server.sockets[0].getsockname()[1]
        print(f"delay-sink listening on {host}:{bound} (every reply {latency * 1000:g} ms late)",
              flush=True)

        async def flush_log() -> None:
            while True:
                await asyncio.sleep(FLUSH_EVERY)
                log.flush()

        flusher = asyncio.create_task(flush_log())
        try:
            await stop.wait()
        finally:
            flusher.cancel()
            server.close()
            log.flush()


class AcceptedLog:
    """Reads the sink's log as it grows: :meth:`new` returns the lines added since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""

    def new(self) -> list[Accepted]:
        try:
            with self.path.open("r", encoding="utf-8") as handle:
                handle.seek(self.offset)
                text = handle.read()
                self.offset = handle.tell()
        except FileNotFoundError:
            return []
        text = self.partial + text
        lines = text.split("\n")
        self.partial = lines.pop()
        return [Accepted.from_line(line) for line in lines if line]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delay_sink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds (default 0.02)")
    parser.add_argument("--log", type=Path, required=True, help="one line per accepted message")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.latency, args.log))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
