"""``postroom dev`` echoes each child's lines with the child's name in front, however the
child's writes fall into reads: lines split across writes, a character split across
writes, a last line with no newline, thousands of lines at once. A real pipe."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from cli.supervisor import READ_SIZE, ChildOutput, _echo_lines


def echoed(tmp_path: Path, pieces: list[bytes]) -> list[str]:
    """What the supervisor writes for a child that writes *pieces*, one write each."""
    read_end, write_end = os.pipe()
    output = ChildOutput()
    output.hold(tmp_path / "children.log")
    reader = threading.Thread(target=_echo_lines,
                              args=("worker", os.fdopen(read_end, "rb"), output))
    reader.start()
    for piece in pieces:
        os.write(write_end, piece)
        time.sleep(0.01)  # each write is its own read
    os.close(write_end)
    reader.join(10)
    assert not reader.is_alive()
    output.release()
    return (tmp_path / "children.log").read_text(encoding="utf-8").splitlines()


def test_lines_split_across_writes_come_out_whole(tmp_path: Path) -> None:
    snowman = "☃".encode()
    pieces = [b"first li", b"ne\nsecond line\r\nthird ", snowman[:1], snowman[1:],
              b" line\n\nlast, no newline"]
    assert echoed(tmp_path, pieces) == [
        "worker | first line", "worker | second line", "worker | third ☃ line",
        "worker | ", "worker | last, no newline"]


def test_many_lines_at_once_are_each_echoed_in_order(tmp_path: Path) -> None:
    lines = [f"message {n}: sent to example.com, smtp 250".encode() for n in range(5000)]
    blob = b"\n".join(lines) + b"\n"
    assert len(blob) > 2 * READ_SIZE  # more than one read's worth
    out = echoed(tmp_path, [blob[: len(blob) // 3], blob[len(blob) // 3:]])
    assert out == [f"worker | {line.decode()}" for line in lines]
