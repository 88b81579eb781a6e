"""What the shared limits cost per message: one Lua round trip each, against a PING.

Run: ``.venv/bin/python -m bench.throttle_overhead`` (starts its own redis-server on
a free port; never touches a Redis already running). Prints microseconds per call
and the ratio to a bare ``PING`` on the same connection, measured in this run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from bench.servers import redis_server
from tasks.delivery.throttle import SendRate, SessionSlots

ROUNDS = 5_000


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
    with redis_server() as url:
        client = redis.Redis.from_url(url)
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


if __name__ == "__main__":
    main()
