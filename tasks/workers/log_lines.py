"""A worker's log lines go out in writes of many lines, not one write per line.

A bulk worker logs a line per recipient (``DELIVERY_LOG_LEVEL=INFO``), and
Python's ``StreamHandler`` writes and flushes each record at once: one ``write``
to the pipe or terminal per line, and in a thread pool one more hand-over of
the GIL per message. Here a worker's stream handlers on stderr or stdout keep
the lines of INFO and below for at most :data:`HOLD_SECONDS` and then write
them together. A WARNING or worse is written at once, with the lines held
before it, so a failure is never late and the order stays as logged. What is
held is written when the process exits, and before it holds more than
:data:`HOLD_BYTES`. A worker killed with SIGKILL loses at most the last
:data:`HOLD_SECONDS` of its INFO lines; the ledger, not the log, is the record
of what was sent.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any, TextIO

from celery.signals import after_setup_logger

HOLD_SECONDS = 0.1  # the longest an INFO line waits for the lines after it
HOLD_BYTES = 64 * 1024  # written at once beyond this much text


class HeldLines:
    """A text stream that holds what is written until :meth:`write_out` (a thread of its
    own calls it :data:`HOLD_SECONDS` after the first line held), or until a WARNING or
    worse has been written (:meth:`flush` after :class:`UrgentLines` marked it)."""

    def __init__(self, stream: TextIO, hold: float = HOLD_SECONDS) -> None:
        self.stream = stream
        self.hold = hold
        self._held: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._writer: threading.Thread | None = None
        self._urgent = threading.local()  # set per thread by UrgentLines, read by flush

    def write(self, text: str) -> int:
        with self._lock:
            self._held.append(text)
            self._size += len(text)
            full = self._size >= HOLD_BYTES
            if not full and not self._due.is_set():
                self._start_writer()
                self._due.set()
        if full:
            self.write_out()
        return len(text)

    def flush(self) -> None:
        """After each record: only a WARNING or worse is written at once."""
        if getattr(self._urgent, "now", False):
            self.write_out()

    def mark(self, urgent: bool) -> None:
        self._urgent.now = urgent

    def write_out(self) -> None:
        """Write everything held, in one write, and flush the stream."""
        with self._lock:
            text, self._held, self._size = "".join(self._held), [], 0
            self._due.clear()
            if text:
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except (OSError, ValueError):  # the reader went away, or the stream closed
                    pass

    def _start_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_when_due, daemon=True,
                                            name="postroom-log-lines")
            self._writer.start()

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.hold)
            self.write_out()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, name...
        return getattr(self.stream, name)


class UrgentLines(logging.Filter):
    """Tells the handler's :class:`HeldLines` whether the record about to be written is a
    WARNING or worse (it keeps every record)."""

    def __init__(self, held: HeldLines) -> None:
        super().__init__()
        self.held = held

    def filter(self, record: logging.LogRecord) -> bool:
        self.held.mark(record.levelno >= logging.WARNING)
        return True


def hold_lines(logger: logging.Logger, hold: float | None = None) -> list[HeldLines]:
    """Give *logger*'s stream handlers (not its file handlers) held lines, for *hold*
    seconds (:data:`HOLD_SECONDS`); once each."""
    held: list[HeldLines] = []
    for handler in logger.handlers:
        if type(handler) is not logging.StreamHandler or isinstance(handler.stream, HeldLines):
            continue
        lines = HeldLines(handler.stream, HOLD_SECONDS if hold is None else hold)
        handler.setStream(lines)
        handler.addFilter(UrgentLines(lines))
        atexit.register(lines.write_out)
        held.append(lines)
    return held


def _held(logger: logging.Logger, **_: Any) -> None:
    hold_lines(logger)


def register() -> None:
    """Hold the lines of a Celery worker or beat in this process once Celery has set up
    the root logger (every Postroom logger and Celery's task lines go there)."""
    after_setup_logger.connect(_held, weak=False, dispatch_uid="postroom-held-lines")
