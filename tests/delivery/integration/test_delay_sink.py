"""The benchmark's delay sink: it speaks SMTP, answers pipelined commands together and
records every message it accepts (what the whole-stack benchmark reads back)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from bench.delay_sink import Accepted, AcceptedLog, headers_of
from bench.servers import delay_sink


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[int, AcceptedLog]]:
    log_path = tmp_path / "accepted.tsv"
    with delay_sink(0.01, log_path) as port:
        yield port, AcceptedLog(log_path)


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """The next *count* reply lines."""
    data = b""
    while data.count(b"\r\n") < count:
        chunk = sock.recv(4096)
        assert chunk, "the sink closed the connection"
        data += chunk
    return data.split(b"\r\n")[:count]


def wait_for(log: AcceptedLog, count: int) -> list[Accepted]:
    seen: list[Accepted] = []
    for _ in range(200):
        seen += log.new()
        if len(seen) >= count:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"only {len(seen)} of {count} messages recorded")


def test_smtplib_sends_and_the_sink_records_each_message(
        sink: tuple[int, AcceptedLog]) -> None:
    port, log = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("pipelining")
        assert client.has_extn("8bitmime")
        assert client.has_extn("size")
        for i in range(3):
            message = EmailMessage()
            message["From"] = "sender@example.com"
            message["To"] = f"r{i}@example.com"
            message["Subject"] = f"Grüße {i}"
            message["Message-ID"] = f"<m{i}@example.com>"
            message.set_content("Hello\n.leading dot\n")
            refused = client.send_message(message, to_addrs=[f"r{i}@example.com",
                                                             f"cc{i}@example.com"])
            assert refused == {}
    accepted = wait_for(log, 3)
    assert [a.recipients for a in accepted] == [(f"r{i}@example.com", f"cc{i}@example.com")
                                                for i in range(3)]
    assert [a.message_id for a in accepted] == [f"<m{i}@example.com>" for i in range(3)]
    assert [a.subject for a in accepted] == [f"Grüße {i}" for i in range(3)]
    assert len({a.session for a in accepted}) == 1


def test_pipelined_commands_are_answered_in_one_write(sink: tuple[int, AcceptedLog]) -> None:
    port, log = sink
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert read_replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO client.example.com\r\n")
        ehlo = b""
        while not ehlo.endswith(b"\r\n") or b"250 " not in ehlo:
            ehlo += sock.recv(4096)
        assert b"PIPELINING" in ehlo
        sock.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                     b"RCPT TO:<c@example.com>\r\nDATA\r\n")
        first_read = sock.recv(4096)  # the four replies leave the sink in one write
        assert [line[:3] for line in first_read.split(b"\r\n") if line] == [
            b"250", b"250", b"250", b"354"]
        sock.sendall(b"Message-ID: <p@example.com>\r\nSubject: piped\r\n\r\nbody\r\n.\r\n"
                     b"QUIT\r\n")
        assert [line[:3] for line in read_replies(sock, 2)] == [b"250", b"221"]
    [accepted] = wait_for(log, 1)
    assert accepted.recipients == ("b@example.com", "c@example.com")
    assert accepted.open_sessions == 1
    assert (accepted.message_id, accepted.subject) == ("<p@example.com>", "piped")
    assert accepted.size == len(b"Message-ID: <p@example.com>\r\nSubject: piped\r\n\r\nbody\r\n")


def test_headers_are_unfolded_and_decoded() -> None:
    content = (b"Subject: =?utf-8?q?caf=C3=A9?=\r\n and more\r\nMessage-Id:\r\n <x@y>\r\n"
               b"\r\nSubject: not a header\r\n")
    assert headers_of(content) == ("<x@y>", "café and more")
