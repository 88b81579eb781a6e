"""A worker's INFO lines are held briefly and written many at a time; a WARNING or worse
goes out at once with what was held before it; nothing held is lost at exit."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.workers.log_lines import HeldLines, hold_lines

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    fcntl.fcntl(read, fcntl.F_SETFL, fcntl.fcntl(read, fcntl.F_GETFL) | os.O_NONBLOCK)
    yield read, write
    os.close(read)


def _logger(write: int, hold: float) -> tuple[logging.Logger, list[HeldLines]]:
    logger = logging.getLogger(f"postroom.test.held.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(os.fdopen(write, "w", buffering=1))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, hold_lines(logger, hold)


def _reads(fd: int) -> list[bytes]:
    """Each read that finds something, until the pipe is empty."""
    found: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return found
        if not chunk:
            return found
        found.append(chunk)


def test_info_lines_are_held_then_written_in_one_write(pipe: tuple[int, int]) -> None:
    read, write = pipe
    logger, [held] = _logger(write, hold=60.0)
    for n in range(200):
        logger.info("sent %d", n)
    assert _reads(read) == []  # a StreamHandler alone would have written 200 lines by now
    held.write_out()
    [chunk] = _reads(read)
    assert chunk.decode().splitlines() == [f"INFO sent {n}" for n in range(200)]


def test_a_warning_goes_out_at_once_after_the_lines_held_before_it(
        pipe: tuple[int, int]) -> None:
    read, write = pipe
    logger, _ = _logger(write, hold=60.0)
    logger.info("first")
    logger.info("second")
    logger.warning("relay refused")
    assert b"".join(_reads(read)).decode().splitlines() == [
        "INFO first", "INFO second", "WARNING relay refused"]
    logger.info("after")
    assert _reads(read) == []  # INFO is held again


def test_held_lines_are_written_after_the_hold_without_more_logging(
        pipe: tuple[int, int]) -> None:
    read, write = pipe
    logger, _ = _logger(write, hold=0.05)
    logger.info("alone")
    deadline = time.monotonic() + 10
    seen = b""
    while b"alone" not in seen:
        assert time.monotonic() < deadline, "the held line was never written"
        seen += b"".join(_reads(read))
        time.sleep(0.02)
    assert seen.decode().splitlines() == ["INFO alone"]
    logger.info("later")  # the writer thread holds the next lines too
    deadline = time.monotonic() + 10
    while b"later" not in seen:
        assert time.monotonic() < deadline, "a line held after the first write was lost"
        seen += b"".join(_reads(read))
        time.sleep(0.02)


def test_a_celery_worker_process_holds_its_lines_and_writes_them_at_exit(
        redis_url: str) -> None:
    """Celery's own logging setup in a process with Postroom's Celery app: the root
    handler on stderr holds lines (an hour here), and the process's exit writes them."""
    script = textwrap.dedent(f"""
        import logging
        import tasks.workers.log_lines as log_lines
        from tests.conftest import app_config
        from web import create_app
        log_lines.HOLD_SECONDS = 3600.0
        app = create_app(app_config({redis_url!r}, 1))
        app.extensions["celery"].log.setup_logging_subsystem(loglevel="INFO", colorize=False)
        print(" ".join(type(h.stream).__name__ for h in logging.getLogger().handlers),
              flush=True)
        for n in range(50):
            logging.getLogger("tasks.delivery.observers").info("outcome %d", n)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["HeldLines"]
    logged = [line.rsplit(" ", 1)[-1] for line in done.stderr.splitlines()
              if " outcome " in line]
    assert logged == [str(n) for n in range(50)]
